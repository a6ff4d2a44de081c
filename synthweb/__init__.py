"""A synthetic web on loopback for tests, benchmarks and the demo: generated from a seed, served with its faults."""

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
