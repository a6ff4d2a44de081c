"""Fixtures shared by every test package: a small synthetic web (seed 0) on disk, and that web served on loopback."""

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dask_cluster import DaskCluster
from worker_pool import WorkerPool

from synthweb import ServedWeb, WebConfig, generate_web, serve_web

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
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """A scheduler and two single-thread workers, separate processes on free loopback ports, for the session.
    Pass `--runner=DaskRunner --dask_client_address=` + `dask_cluster.address` to a job."""
    cluster = DaskCluster(workers=2, folder=tmp_path_factory.mktemp("dask"))
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def worker_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerPool]:
    """A Beam SDK worker pool in its own process for the session; a job passes `worker_pool.options` to run its
    work there through the portable runner (the path Flink and Spark take, environment_type=EXTERNAL)."""
    pool = WorkerPool(folder=tmp_path_factory.mktemp("worker_pool"))
    yield pool
    pool.close()


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


def write_shapes_dataset(path: Path, samples: int = 384, per_shard: int = 128, side: int = 72, seed: int = 0) -> Path:
    """A training dataset in our shard layout made directly from the synthetic web's material: pictures of the web's
    train classes (seed `seed`) as JPEG, each with one of its English alt-text captions. No crawl, ~1 s for 384."""
    import random

    from pipeline.shards import DatasetWriter
    from schemas import fields
    from synthweb import vocabulary
    from synthweb.captions import CaptionWriter
    from synthweb.draw import Drawing, encode, render
    from synthweb.spec import BACKGROUNDS, SIZES, TEXTURES, split_label

    rng = random.Random(f"{seed}:shapes-dataset")
    captions = CaptionWriter(rng)
    classes = vocabulary(seed).train
    with DatasetWriter(path, samples_per_shard=per_shard) as writer:
        for i in range(samples):
            colour, shape = split_label(classes[i % len(classes)])
            texture, background, size = rng.choice(TEXTURES), rng.choice(BACKGROUNDS), rng.choice(SIZES)
            d = Drawing(colour, shape, texture, background, size, width=side, height=side, seed=rng.getrandbits(32))
            row = {
                fields.KEY: f"shape{i:05d}",
                fields.URL: f"http://shapes.test/{i}.jpg",
                fields.CAPTION: captions.english(colour, shape, texture, background, size),
                fields.IMAGE_FORMAT: "jpg",
                fields.WIDTH: side,
                fields.HEIGHT: side,
            }
            writer.add(row, encode(render(d), "jpg"))
    return path


@pytest.fixture(scope="session")
def make_shapes_dataset() -> Callable[..., Path]:
    """`write_shapes_dataset` itself, for tests that need another size."""
    return write_shapes_dataset


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`write_shapes_dataset` defaults (384 pairs in 3 shards, 72 px). Read-only: other tests share it."""
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes") / "dataset")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread for the test: with tiny tensors a second thread only adds hand-off, which on a
    busy 2-core machine costs seconds. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `tiny` CLIP with seeded random weights, saved as a bare state dict (the form released weights come in).
    Load it with `clipmodel.inference.load_model(tiny_weights, arch="tiny")`."""
    import torch

    from clipmodel.factory import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.save(create_model("tiny").state_dict(), path)
    return path


# A CLIP small enough that a training step costs milliseconds, for tests of bookkeeping rather than learning.
MICRO_CONFIG = {
    "embed_dim": 32,
    "activation": "gelu",
    "vision": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
    "text": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1},
}


@pytest.fixture(scope="session")
def micro_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MICRO_CONFIG as a JSON model config file (what `--model` accepts besides a name)."""
    import json

    path = tmp_path_factory.mktemp("models") / "micro.json"
    path.write_text(json.dumps(MICRO_CONFIG))
    return path
