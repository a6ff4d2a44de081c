"""Fixtures shared by every test package: a small synthetic web (seed 0) on disk, and that web served on loopback."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.synthweb import ServedWeb, WebConfig, generate_web, serve_web

# The one web the shared fixtures build: 3 hosts, 12 pages, ~130 image URLs, every fault, 144 eval images (~3 s).
TEST_WEB = WebConfig(seed=0, pages=12, hosts=3)


@pytest.fixture(scope="session")
def web_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated synthetic web (TEST_WEB). Treat it as read-only: other tests share it."""
    path = tmp_path_factory.mktemp("synthweb") / "web"
    generate_web(path, TEST_WEB)
    return path


@pytest.fixture(scope="session")
def served_web(web_dir: Path) -> Iterator[ServedWeb]:
    """`web_dir` served on free loopback ports for the whole session. Its 429-once URLs keep per-server state:
    call `served_web.reset()` before a test that depends on being the first to ask."""
    with serve_web(web_dir) as served:
        yield served


@pytest.fixture(scope="session")
def laion_sample() -> Path:
    """1,000 real LAION-400M (URL, TEXT) rows from the project's shared data (beside the checkout, as CI lays it;
    WIT_SHARED_DATA overrides). Real captions for realistic language mix, boilerplate and lengths."""
    root = Path(os.environ.get("WIT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    path = root / "laion_sample_1000.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: lay the project's shared/ beside the checkout or set WIT_SHARED_DATA"
        )
    return path
