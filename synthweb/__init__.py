"""A synthetic web on loopback for tests, benchmarks and the demo: generated from a seed, served with its faults."""

import importlib
from typing import TYPE_CHECKING, Any

# Each name is imported from its module on first use (PEP 562): `wit --help` reads WebConfig from synthweb.spec, and
# importing the package must not bring the generator, and Pillow with it, along.
_HOMES = {
    "FAULTS": "synthweb.faults",
    "ServedWeb": "synthweb.serve",
    "WebConfig": "synthweb.spec",
    "WebSummary": "synthweb.generate",
    "generate_web": "synthweb.generate",
    "load_eval": "synthweb.truth",
    "load_truth": "synthweb.truth",
    "serve_web": "synthweb.serve",
    "vocabulary": "synthweb.spec",
}

if TYPE_CHECKING:
    from synthweb.faults import FAULTS
    from synthweb.generate import WebSummary, generate_web
    from synthweb.serve import ServedWeb, serve_web
    from synthweb.spec import WebConfig, vocabulary
    from synthweb.truth import load_eval, load_truth

__all__ = [
    "FAULTS",
    "ServedWeb",
    "WebConfig",
    "WebSummary",
    "generate_web",
    "load_eval",
    "load_truth",
    "serve_web",
    "vocabulary",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # found directly from now on
    return value
