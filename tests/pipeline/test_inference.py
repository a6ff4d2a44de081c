"""The scoring stage: prepared inputs; RunInference scores equal direct model calls; bad samples become rejections."""

from itertools import islice
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from clipmodel import transform
from clipmodel.inference import load_model
from clipmodel.tokenizer import tokenize
from pipeline.inference import ScoreSamples, prepare
from pipeline.rejection import Rejected
from pipeline.shard_reader import read_dataset
from schemas import fields, reasons


@pytest.fixture
def weights(tiny_weights: Path) -> Path:
    return tiny_weights


def test_prepare(shapes_dataset: Path) -> None:
    sample = next(read_dataset(shapes_dataset))
    got = prepare(sample.row, sample.image, 64, 77)
    assert got.row is sample.row and got.image is sample.image
    assert got.pixels.shape == (3, 64, 64) and got.pixels.dtype == np.uint8
    np.testing.assert_array_equal(got.pixels, transform.load(sample.image, 64))
    np.testing.assert_array_equal(got.tokens, tokenize([sample.caption])[0].numpy())
    with pytest.raises(Rejected) as e:
        prepare(sample.row, b"\xff\xd8 truncated jpeg", 64, 77)
    assert e.value.reason == reasons.DECODE_ERROR and e.value.detail
    with pytest.raises(Rejected) as e:
        prepare({**sample.row, fields.CAPTION: "  "}, sample.image, 64, 77)
    assert e.value.reason == reasons.EMPTY_CAPTION


def _close_to(expected: dict[str, tuple[float, int]]):
    def check(actual: list[tuple[str, float, int]]) -> None:
        assert sorted(k for k, _, _ in actual) == sorted(expected)
        for key, score, size in actual:
            assert score == pytest.approx(expected[key][0], abs=1e-4) and size == expected[key][1], key

    return check


def _unit_norms(actual: list[tuple[str, float, float, int]]) -> None:
    assert len(actual) == 20
    for _, image_norm, text_norm, dim in actual:
        assert abs(image_norm - 1) < 1e-5 and abs(text_norm - 1) < 1e-5 and dim == 128


def test_score_samples_equal_direct_model_calls(shapes_dataset: Path, weights: Path) -> None:
    samples = list(islice(read_dataset(shapes_dataset), 20))
    loaded = load_model(weights, arch="tiny", device="cpu")
    images = transform.normalize(np.stack([transform.load(s.image, loaded.resolution) for s in samples]))
    with torch.no_grad():
        image = F.normalize(loaded.model.encode_image(images), dim=-1)  # (20, E)
        text = F.normalize(loaded.model.encode_text(tokenize([s.caption for s in samples])), dim=-1)  # (20, E)
    cosines = (image * text).sum(-1).tolist()
    ordered = sorted(cosines)
    threshold = (ordered[9] + ordered[10]) / 2  # half the samples under it, none within rounding of it
    expected = {s.key: (c, len(s.image)) for s, c in zip(samples, cosines, strict=True) if c >= threshold}
    low = sorted(
        (s.key, reasons.SCORE, reasons.LOW_CLIP_SCORE) for s, c in zip(samples, cosines, strict=True) if c < threshold
    )
    broken = {**samples[0].row, fields.KEY: "broken"}
    silent = {**samples[1].row, fields.KEY: "silent", fields.CAPTION: None}
    elements = [(s.row, s.image) for s in samples] + [(broken, b"not an image"), (silent, samples[1].image)]

    with TestPipeline(runner="FnApiRunner") as p:
        out = (
            p
            | beam.Create(elements)
            | ScoreSamples(
                str(weights), arch="tiny", batch_size=8, device="cpu", with_embeddings=True, min_score=threshold
            )
        )
        scores = out["scored"] | "Scores" >> beam.Map(lambda s: (s[0][fields.KEY], s[0][fields.CLIP_SCORE], len(s[1])))
        assert_that(scores, _close_to(expected), label="scores")
        rejected = out["rejected"] | "Why" >> beam.Map(lambda r: (r[fields.KEY], r[fields.STAGE], r[fields.REASON]))
        bad = [("broken", reasons.IMAGE, reasons.DECODE_ERROR), ("silent", reasons.TEXT, reasons.EMPTY_CAPTION)]
        assert_that(rejected, equal_to(bad + low), label="rejected")
        norms = out["embeddings"] | "Norms" >> beam.Map(
            lambda e: (e[0], float(np.linalg.norm(e[1])), float(np.linalg.norm(e[2])), e[1].shape[0])
        )
        assert_that(norms, _unit_norms, label="embeddings")  # every sample the model saw, kept or not
    assert len(expected) == 10 and len(low) == 10


def test_score_samples_fails_early_on_a_bad_model(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no model"):
        ScoreSamples(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="batch_size"):
        ScoreSamples(str(tmp_path / "missing.pt"), batch_size=0)
