"""Retrieval Recall@K: perfect on identical pairs, hand-computed ranks, the duplicate-caption convention, blocks."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipmodel.eval.retrieval import (
    caption_groups,
    label_oracle_report,
    positive_ranks,
    recall_summary,
    retrieval_report,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_identical_pairs_are_perfect() -> None:
    x = F.normalize(torch.randn(50, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    r = retrieval_report(x, x.clone())
    for way in ("image_to_text", "text_to_image"):
        assert r[way] == {"queries": 50, "R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "median_rank": 1.0}


def test_hand_computed_ranks() -> None:
    # Texts are the axes. Image 1 is nearer text 0 than its own text 1; image 2 nearer texts 0 and 1 than text 2.
    text = torch.eye(4)
    image = torch.tensor([[1, 0, 0, 0], [2, 1, 0, 0], [2, 1.5, 1, 0], [0, 0, 0, 1]])
    r = retrieval_report(image.numpy(), text.numpy(), ks=(1, 2, 3))
    # image -> text ranks (1-based) 1, 2, 3, 1.
    assert r["image_to_text"] == {"queries": 4, "R@1": 0.5, "R@2": 0.75, "R@3": 1.0, "median_rank": 1.5}
    # text 1's column: image 2 (1.5 / |(2, 1.5, 1)|) beats image 1 (1 / |(2, 1)|); the other texts find theirs.
    assert r["text_to_image"] == {"queries": 4, "R@1": 0.75, "R@2": 1.0, "R@3": 1.0, "median_rank": 1.0}


def test_duplicate_captions_are_one_text() -> None:
    text = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])  # rows 0 and 1: the same caption, the same vector
    image = torch.tensor([[1.0, 0, 0], [1.0, 0, 0.1], [0, 1.0, 0]])
    grouped = retrieval_report(image, text, captions=["a red circle", "a red circle", "a blue square"], ks=(1,))
    assert grouped["distinct_captions"] == 2
    assert grouped["image_to_text"]["queries"] == 3 and grouped["image_to_text"]["R@1"] == 1.0
    assert grouped["text_to_image"]["queries"] == 2 and grouped["text_to_image"]["R@1"] == 1.0
    # Every row distinct: text 1 cannot beat image 0 to find image 1, and each red image's two captions tie, which
    # counts against it.
    strict = retrieval_report(image, text, captions=None, ks=(1,))
    assert strict["text_to_image"]["R@1"] == pytest.approx(2 / 3)
    assert strict["image_to_text"]["R@1"] == pytest.approx(1 / 3)


def test_all_alike_embeddings_score_zero() -> None:
    x = torch.ones(10, 4)
    r = retrieval_report(x, x, ks=(1, 5))
    assert r["image_to_text"]["R@1"] == 0.0 and r["image_to_text"]["R@5"] == 0.0


def test_blocks_change_nothing() -> None:
    g = torch.Generator().manual_seed(1)
    q, k = F.normalize(torch.randn(37, 8, generator=g), dim=-1), F.normalize(torch.randn(23, 8, generator=g), dim=-1)
    qg, kg = torch.randint(0, 23, (37,), generator=g), torch.arange(23)
    whole = positive_ranks(q, k, qg, kg)
    assert torch.equal(positive_ranks(q, k, qg, kg, max_block=23), whole)  # one query per block
    assert torch.equal(positive_ranks(q, k, qg, kg, max_block=100), whole)  # four per block, a ragged last one


def test_caption_groups_and_summary() -> None:
    assert caption_groups(["a", None, "b", "a", None]).tolist() == [0, 1, 2, 0, 3]
    assert recall_summary(torch.tensor([0, 4, 9, 10]), ks=(1, 5, 10)) == {
        "queries": 4, "R@1": 0.25, "R@5": 0.5, "R@10": 0.75, "median_rank": 7.5,
    }  # fmt: skip


def test_unpaired_input_is_refused() -> None:
    with pytest.raises(ValueError, match="paired"):
        retrieval_report(np.zeros((3, 4)), np.zeros((2, 4)))


def _oracle_embeddings(labels, classes, rng) -> np.ndarray:
    """One-hot of each item's class (zeros for None), plus noise far below 1 that orders ties at random."""
    e = np.zeros((len(labels), len(classes) + 1), np.float32)
    for i, label in enumerate(labels):
        e[i, classes.index(label) if label is not None else len(classes)] = 1.0
    return e + rng.normal(0, 1e-3, e.shape).astype(np.float32)


def test_label_oracle_matches_random_tie_breaking() -> None:
    """The closed form against retrieval_report on embeddings that know only the class, averaged over tie orders."""
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    image = [classes[i % 3] for i in range(30)]
    caption_label = list(image)
    caption_label[1] = "c"  # a caption naming another class than its picture
    caption_label[2] = None  # a caption naming none
    captions = [f"{label} {i % 4}" if label else "nothing" for i, label in enumerate(caption_label)]
    captions[1] = "c 9"
    expected = label_oracle_report(image, caption_label, captions, ks=(1, 5, 12))
    draws = {"image_to_text": [], "text_to_image": []}
    for _ in range(400):
        r = retrieval_report(_oracle_embeddings(image, classes, rng), _oracle_embeddings(caption_label, classes, rng),
                             captions, ks=(1, 5, 12))  # fmt: skip
        for way in draws:
            draws[way].append([r[way][f"R@{k}"] for k in (1, 5, 12)])
    for way, values in draws.items():
        assert expected[way]["queries"] == r[way]["queries"]
        np.testing.assert_allclose(np.mean(values, axis=0), [expected[way][f"R@{k}"] for k in (1, 5, 12)], atol=0.02)


def test_label_oracle_by_hand() -> None:
    # Two red pictures, one captioned "blue": each red picture has 1 red caption in the gallery of 2 distinct
    # captions; the mislabelled one's caption ranks second for sure.
    r = label_oracle_report(["red", "red"], ["red", "blue"], ["red one", "blue one"], ks=(1, 2))
    assert r["image_to_text"] == pytest.approx({"queries": 2, "R@1": 0.5, "R@2": 1.0})
    # Text "red one": its picture is one of the 2 red pictures, R@1 1/2; "blue one" names no picture's class, so
    # all pictures tie and its own is first half the time: R@1 1/2 too.
    assert r["text_to_image"] == pytest.approx({"queries": 2, "R@1": 0.5, "R@2": 1.0})
    three = label_oracle_report(["red", "red", "green"], ["red", "blue", "green"], ["r", "b", "g"], ks=(1,))
    # "b" (blue, no blue picture) -> its picture is 1 of 3 tied pictures; "r" -> 1 of 2 red; "g" -> the only green.
    assert three["text_to_image"]["R@1"] == pytest.approx((1 / 3 + 1 / 2 + 1) / 3)
    with pytest.raises(ValueError, match="labels"):
        label_oracle_report(["red"], [], ["x"])
