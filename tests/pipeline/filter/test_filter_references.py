"""Reference sets (concept prompts, evaluation images): nearest reference, inclusive threshold, input files."""

import numpy as np
import pytest
from PIL import Image

from pipeline.filter.references import (
    ConceptConfig,
    DecontaminateConfig,
    References,
    eval_image_files,
    eval_npy,
    nearest_reference,
    read_prompts,
)
from schemas import reasons


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_nearest_reference_in_blocks_equals_one_product() -> None:
    rng = np.random.default_rng(0)
    image, refs = _unit(rng, 50, 8), _unit(rng, 7, 8)
    best, sims = nearest_reference(image, refs, block=6)
    full = image @ refs.T
    np.testing.assert_array_equal(best, full.argmax(1))
    np.testing.assert_allclose(sims, full.max(1), rtol=1e-6)
    best, sims = nearest_reference(image, np.zeros((0, 8), np.float32))
    assert (sims == -np.inf).all()  # no references: nothing is ever close


def test_hits_name_the_nearest_reference_at_or_above_the_threshold() -> None:
    refs = References(
        reasons.UNWANTED_CONCEPT, ("a gun", "a logo"), np.array([[0.6, 0.8], [0.0, 1.0]], np.float32), 0.6
    )
    image = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
    hits = refs.hits(image)
    assert hits[0] == "a gun (cos 0.6000)"  # exactly at the threshold: rejected
    assert hits[1] == "a logo (cos 1.0000)"  # closer to the logo than to the gun (0.8)
    assert hits[2] is None
    with pytest.raises(ValueError, match="2 names"):
        References(reasons.EVAL_SIMILAR, ("a", "b"), np.zeros((3, 2), np.float32), 0.9)
    with pytest.raises(ValueError, match="unknown reason"):
        References("no_such_reason", (), np.zeros((0, 2), np.float32), 0.9)


def test_read_prompts_skips_comments_and_blank_lines(tmp_path) -> None:
    path = tmp_path / "concepts.txt"
    path.write_text("# unwanted\na photo of a gun\n\n  a screenshot of text  \n  # indented comment\n")
    assert read_prompts(path) == ("a photo of a gun", "a screenshot of text")
    path.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="no concept prompts"):
        read_prompts(path)


def test_eval_inputs(tmp_path) -> None:
    np.save(tmp_path / "eval.npy", np.array([[3.0, 4.0], [0.0, 2.0]], np.float32))
    names, vectors = eval_npy(tmp_path / "eval.npy")
    assert names == ("eval.npy[0]", "eval.npy[1]")
    np.testing.assert_allclose(vectors, [[0.6, 0.8], [0.0, 1.0]])  # normalised on load
    np.save(tmp_path / "bad.npy", np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="expected an"):
        eval_npy(tmp_path / "bad.npy")

    folder = tmp_path / "eval"
    (folder / "cats").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "cats" / "b.png")
    Image.new("RGB", (8, 8)).save(folder / "a.jpg")
    (folder / "labels.parquet").write_bytes(b"not an image")
    names, paths = eval_image_files(folder)
    assert names == ("a.jpg", "cats/b.png") and paths == [folder / "a.jpg", folder / "cats" / "b.png"]
    with pytest.raises(ValueError, match="no .jpg"):
        eval_image_files(tmp_path / "cats-empty")


def test_configs_refuse_what_is_not_a_cosine() -> None:
    with pytest.raises(ValueError):
        ConceptConfig(threshold=1.5)
    with pytest.raises(ValueError):
        ConceptConfig(prompts=("ok", "  "))
    with pytest.raises(ValueError):
        DecontaminateConfig(threshold=-2)
