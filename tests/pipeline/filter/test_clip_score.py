"""CLIP score: cosines of stored embeddings, fixed and quantile thresholds, one comparison rule everywhere."""

import math

import numpy as np
import pytest

from pipeline.filter.clip_score import (
    ClipScoreConfig,
    ScoreThreshold,
    clip_scores,
    passes,
    score_threshold,
    top_fraction_threshold,
)


def test_scores_are_row_wise_cosines() -> None:
    angles = np.array([0.0, 60.0, 90.0, 180.0])
    image = np.tile([1.0, 0.0], (4, 1))
    text = np.stack([np.cos(np.radians(angles)), np.sin(np.radians(angles))], axis=1)
    scores = clip_scores(image.astype(np.float16), text.astype(np.float16))  # as stored: float16 in, float32 out
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, [1.0, 0.5, 0.0, -1.0], atol=1e-3)
    with pytest.raises(ValueError, match="differ in shape"):
        clip_scores(image, text[:3])


def test_top_fraction_threshold_keeps_that_many() -> None:
    scores = np.arange(1, 11, dtype=np.float32) / 10  # 0.1 .. 1.0
    assert top_fraction_threshold(scores, 0.3) == pytest.approx(0.8)  # 0.3 * 10 is 3, not 4, despite rounding
    assert int(passes(scores, top_fraction_threshold(scores, 0.3)).sum()) == 3
    assert top_fraction_threshold(scores, 0.25) == pytest.approx(0.8)  # ceil(2.5) = 3 samples
    assert top_fraction_threshold(scores, 1.0) == pytest.approx(0.1)
    assert top_fraction_threshold(scores, 0.01) == pytest.approx(1.0)  # at least one sample
    tied = np.array([0.5, 0.5, 0.5, 0.1], np.float32)
    assert int(passes(tied, top_fraction_threshold(tied, 0.25)).sum()) == 3  # ties at the cut are all kept
    assert top_fraction_threshold(np.zeros(0, np.float32), 0.3) == math.inf


def test_threshold_by_config_and_validation() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    assert score_threshold(scores, ClipScoreConfig(min_score=0.28)) == 0.28
    assert score_threshold(scores, ClipScoreConfig(top_fraction=0.5)) == pytest.approx(0.3)
    assert score_threshold(scores, ClipScoreConfig()) is None
    assert passes(scores, None).all() and passes(0.0, None) is True
    for bad in (
        {"min_score": 0.3, "top_fraction": 0.3},
        {"min_score": 1.5},
        {"top_fraction": 0.0},
        {"top_fraction": 2},
    ):
        with pytest.raises(ValueError):
            ClipScoreConfig(**bad)


def test_float32_scores_are_judged_alike_as_arrays_and_as_floats() -> None:
    # float32(0.28) is 0.2800000011920929: above 0.28 in float64, equal to it in float32. Every step must agree.
    s = np.float32(0.28)
    assert passes(np.array([s]), 0.28)[0] == passes(float(s), 0.28) == True  # noqa: E712
    below = np.nextafter(np.float32(0.28), np.float32(0))
    assert passes(np.array([below]), 0.28)[0] == passes(float(below), 0.28) == False  # noqa: E712


def test_score_threshold_combiner_sees_every_shard() -> None:
    combine = ScoreThreshold(ClipScoreConfig(top_fraction=0.3))
    parts = [np.array([0.9, 0.1], np.float32), np.array([0.5], np.float32), np.array([0.7, 0.3, 0.2], np.float32)]
    a = combine.add_input(combine.create_accumulator(), parts[0])
    b = combine.add_input(combine.add_input(combine.create_accumulator(), parts[1]), parts[2])
    assert combine.extract_output(combine.merge_accumulators([a, b])) == pytest.approx(0.7)  # 2 of 6 kept
    fixed = ScoreThreshold(ClipScoreConfig(min_score=0.25))
    assert fixed.add_input(fixed.create_accumulator(), parts[0]) == []  # a fixed threshold keeps no scores
    assert fixed.extract_output([]) == 0.25
