"""`wit search` end to end on a small embedded dataset: key, text and image queries, output forms, refusals."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clipmodel.embed import embeddings as emb
from clipmodel.embed.config import EncodeConfig
from clipmodel.embed.encode import encode_dataset
from clipmodel.embed.search import encode_texts
from clipmodel.factory import create_model
from clipmodel.inference import load_model
from pipeline.shard_reader import read_dataset
from wit import cli


@pytest.fixture(scope="module")
def embedded(shapes_dataset: Path, tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(weights of a random tiny CLIP, the embeddings folder it made of `shapes_dataset`)."""
    root = tmp_path_factory.mktemp("search")
    loaded = load_model(tiny_weights, arch="tiny", device="cpu")
    encode_dataset(str(shapes_dataset), loaded, root / "emb", EncodeConfig(batch_size=128, workers=0))
    return tiny_weights, root / "emb"


def _search(capsys, dataset: Path, embeddings: Path, *args: str) -> tuple[int, str, str]:
    code = cli.main(["search", str(dataset), "--embeddings", str(embeddings), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_key_search_finds_the_sample_itself_first(capsys, shapes_dataset: Path, embedded) -> None:
    _, embeddings = embedded
    code, out, err = _search(capsys, shapes_dataset, embeddings, "--key", "shape00007", "--json", "--rebuild")
    assert code == 0 and "building a flat index over 384 image embeddings" in err and "built in" in err
    got = json.loads(out)
    assert got["query"] == {"key": "shape00007"} and got["index"] == {"kind": "flat", "over": "image", "rows": 384}
    results = got["results"]
    assert len(results) == 10 and [r["rank"] for r in results] == list(range(1, 11))
    assert results[0]["key"] == "shape00007" and results[0]["score"] == pytest.approx(1.0, abs=2e-3)
    assert results[0]["url"] == "http://shapes.test/7.jpg" and results[0]["caption"]
    assert all(a["score"] >= b["score"] for a, b in zip(results, results[1:], strict=False))

    code, out, err = _search(capsys, shapes_dataset, embeddings, "--key", "shape00007", "-k", "3")  # a table
    assert code == 0 and err == ""  # the saved index is reused
    lines = out.splitlines()
    assert lines[0].split() == ["rank", "score", "key", "caption", "url"] and len(lines) == 4
    assert lines[1].split()[:3] == ["1", f"{results[0]['score']:.4f}", "shape00007"]
    assert lines[1].endswith("http://shapes.test/7.jpg")


def test_text_query_ranks_as_brute_force(capsys, shapes_dataset: Path, embedded) -> None:
    weights, embeddings = embedded
    # The query text after the options, as people type it.
    args = ("--model", str(weights), "--arch", "tiny", "--device", "cpu", "-k", "5", "--json", "a red circle")
    code, out, _ = _search(capsys, shapes_dataset, embeddings, *args)
    assert code == 0
    results = json.loads(out)["results"]
    everything = emb.load_embeddings(embeddings)
    query = encode_texts(load_model(weights, arch="tiny", device="cpu"), ["a red circle"])[0]
    _assert_top(results, dict(zip(everything.keys, everything.image @ query, strict=True)))

    code, out, _ = _search(capsys, shapes_dataset, embeddings, "--text-index", *args)  # captions, not images
    got = json.loads(out)
    assert got["index"]["over"] == "text"
    _assert_top(got["results"], dict(zip(everything.keys, everything.text @ query, strict=True)))


def _assert_top(results: list[dict], truth: dict[str, float]) -> None:
    """`results` are a true top-k by `truth` (key -> cosine): a random model's images are near one another, so
    near-ties may come in either order and the check is on scores, not on the order of keys."""
    best = sorted(truth.values(), reverse=True)[: len(results)]
    np.testing.assert_allclose([truth[r["key"]] for r in results], best, atol=1e-5)
    np.testing.assert_allclose([r["score"] for r in results], [truth[r["key"]] for r in results], atol=1e-5)
    assert len({r["key"] for r in results}) == len(results)


def test_image_query_and_ivfpq_index(capsys, shapes_dataset: Path, embedded, tmp_path: Path) -> None:
    weights, embeddings = embedded
    sample = next(s for s in read_dataset(shapes_dataset) if s.key == "shape00042")
    (tmp_path / "q.jpg").write_bytes(sample.image)
    args = ("--model", str(weights), "--arch", "tiny", "--device", "cpu", "--image", str(tmp_path / "q.jpg"))
    code, out, _ = _search(capsys, shapes_dataset, embeddings, *args, "--json", "-k", "3")
    assert code == 0
    top = json.loads(out)["results"][0]
    assert top["key"] == "shape00042" and top["score"] == pytest.approx(1.0, abs=2e-3)

    # A random model's 384 images are too alike for PQ codes to rank (test_search measures recall on real clusters);
    # with -k 40 every row is a candidate, which checks the exact re-scoring through the command.
    ivf = ("--key", "shape00042", "--index", "ivfpq", "--json", "-k", "40")
    code, out, err = _search(capsys, shapes_dataset, embeddings, *ivf)
    got = json.loads(out)
    assert code == 0 and "building an IVF-PQ index over 384" in err and got["index"]["kind"] == "ivfpq"
    assert got["results"][0]["key"] == "shape00042" and got["results"][0]["score"] == pytest.approx(1.0, abs=2e-3)


def test_refusals(capsys, shapes_dataset: Path, embedded, make_shapes_dataset, tmp_path: Path) -> None:
    weights, embeddings = embedded
    model = ("--model", str(weights), "--arch", "tiny", "--device", "cpu")
    code, _, err = _search(capsys, shapes_dataset, embeddings)
    assert code == 2 and "exactly one query" in err
    code, _, err = _search(capsys, shapes_dataset, embeddings, "a red circle", "--key", "shape00001")
    assert code == 2 and "exactly one query" in err
    code, _, err = _search(capsys, shapes_dataset, embeddings, "a red circle")
    assert code == 2 and "--model CKPT is required" in err
    code, _, err = _search(capsys, shapes_dataset, embeddings, "--key", "nope")
    assert code == 2 and "no sample with key 'nope'" in err
    code, _, err = _search(capsys, shapes_dataset, embeddings, *model, "--image", str(tmp_path / "missing.jpg"))
    assert code == 2 and "not found" in err
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    code, _, err = _search(capsys, shapes_dataset, embeddings, *model, "--image", str(tmp_path / "bad.jpg"))
    assert code == 2 and "not an image" in err

    torch.save(create_model("tiny").state_dict(), tmp_path / "other.pt")  # another model: another space
    code, _, err = _search(capsys, shapes_dataset, embeddings, "--model", str(tmp_path / "other.pt"), "--arch",
                           "tiny", "--device", "cpu", "a red circle")  # fmt: skip
    assert code == 2 and "made by another model" in err and err.count("\n") == 1

    other = make_shapes_dataset(tmp_path / "other", samples=8, per_shard=8)
    code, _, err = _search(capsys, other, embeddings, "--key", "shape00001")
    assert code == 2 and "was not encoded from" in err
    code, _, err = _search(capsys, tmp_path / "missing", embeddings, "--key", "shape00001")
    assert code == 2 and "not found" in err
    with pytest.raises(SystemExit):  # unknown flags are still refused
        cli.main(["search", str(shapes_dataset), "--embeddings", str(embeddings), "--key", "x", "--bogus"])
