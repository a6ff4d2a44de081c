"""A synthetic web on loopback for tests, benchmarks and the demo: generated from a seed, served with its faults."""

from pipeline.synthweb.faults import FAULTS
from pipeline.synthweb.generate import WebSummary, generate_web
from pipeline.synthweb.serve import ServedWeb, serve_web
from pipeline.synthweb.spec import WebConfig, vocabulary
from pipeline.synthweb.truth import load_eval, load_truth

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
