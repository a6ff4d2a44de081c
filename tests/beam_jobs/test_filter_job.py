"""`wit filter` as a Beam job: a dataset and hand-made embeddings with planted outcomes -> a verified new dataset
where every input sample is kept or rejected once, for the planted reason; and the wiring with a real (tiny) model."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_jobs import filter as filter_job
from clipmodel.embed import embeddings as emb
from pipeline.filter.clip_score import clip_scores
from pipeline.filter.semdedup import SemDedupConfig, semdedup
from pipeline.shard_reader import load_manifest, read_dataset, verify_dataset
from schemas import fields, reasons

D = 32
SURVIVOR = 22  # of the copies 19..24: the best-scored
COPIES = [19, 20, 21, 23, 24]
EVAL = [30, 31]  # 31 also scores low: decontamination comes first
LOW = list(range(10)) + [31]
MISSING = [40, 41]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _text_at(image: np.ndarray, cosines: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(image.shape)
    perp = _unit(noise - (noise * image).sum(-1, keepdims=True) * image)
    return _unit(cosines[:, None] * image + np.sqrt(1 - cosines[:, None] ** 2) * perp)


def _keys(dataset: Path) -> list[list[str]]:
    manifest = load_manifest(dataset)
    return [
        pq.read_table(dataset / s.parquet.path, columns=[fields.KEY])[fields.KEY].to_pylist() for s in manifest.shards
    ]


def write_embeddings(root: Path, dataset: Path, shards: list[tuple[list[str], np.ndarray, np.ndarray]]) -> None:
    """An embeddings folder as `wit encode` lays it out, from given matrices."""
    for i, (keys, image, text) in enumerate(shards):
        emb.write_shard(root, i, keys, [None] * len(keys), [None] * len(keys), image, text)
    emb.write_info(root, {
        "dataset": str(dataset),
        "dataset_manifest_sha256": hashlib.sha256((dataset / "manifest.json").read_bytes()).hexdigest(),
        "model": "hand-made", "dim": D, "complete": True, "rows": sum(len(s[0]) for s in shards),
        "shards": [{"index": i, "rows": len(s[0])} for i, s in enumerate(shards)],
    })  # fmt: skip


@pytest.fixture(scope="module")
def planted(make_shapes_dataset, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """60 shapes samples in 3 shards and their planted embeddings (see the constants above); an eval .npy."""
    tmp = tmp_path_factory.mktemp("filter")
    dataset = make_shapes_dataset(tmp / "ds", samples=60, per_shard=20)
    rng = np.random.default_rng(0)
    image = _unit(rng.standard_normal((60, D)))
    for i in COPIES:
        image[i] = _unit(image[SURVIVOR] + 0.01 * rng.standard_normal(D))
    scores = 0.5 + np.arange(60) / 1000  # distinct, all above 0.3
    scores[LOW] = 0.1
    scores[SURVIVOR] = 0.9
    text = _text_at(image, scores, rng)
    np.save(tmp / "eval.npy", image[EVAL] + 0.01 * rng.standard_normal((2, D)))
    shards = []
    for keys in _keys(dataset):
        rows = [int(k.removeprefix("shape")) for k in keys if int(k.removeprefix("shape")) not in MISSING]
        shards.append(([f"shape{i:05d}" for i in rows], image[rows], text[rows]))
    ghost = _unit(rng.standard_normal((1, D)))  # an embedding with no sample (score -1): ignored
    keys, image_rows, text_rows = shards[-1]
    shards[-1] = (keys + ["ghost"], np.concatenate([image_rows, ghost]), np.concatenate([text_rows, -ghost]))
    write_embeddings(tmp / "emb", dataset, shards)
    return {"tmp": tmp, "dataset": dataset, "emb": tmp / "emb", "eval": tmp / "eval.npy"}


def _rejected(out: Path) -> dict[str, dict]:
    rows = [r for p in sorted((out / "rejected").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    return {r[fields.KEY]: r for r in rows}


def test_filter_job_accounts_for_every_sample(planted: dict, capsys) -> None:
    out = planted["tmp"] / "out"
    argv = [str(planted["dataset"]), "--embeddings", str(planted["emb"]), "--out", str(out), "--min-clip-score", "0.3",
            "--semdedup-eps", "0.05", "--clusters", "3", "--decontaminate", str(planted["eval"]),
            "--eval-threshold", "0.9", "--samples-per-shard", "16"]  # fmt: skip
    manifest = filter_job.run(argv)
    assert verify_dataset(out) == []
    name = lambda i: f"shape{i:05d}"  # noqa: E731
    assert manifest.counts == {
        reasons.SCORE: {reasons.LOW_CLIP_SCORE: 10, reasons.EVAL_SIMILAR: 2, reasons.SEMANTIC_DUPLICATE: 5,
                        reasons.NO_EMBEDDING: 2},
        reasons.SHARDS: {"kept": 41},
    }  # fmt: skip
    assert [s.name for s in manifest.shards] == ["00000", "00001", "00002"]  # ceil(41 / 16), renumbered
    rejected = _rejected(out)
    kept = {s.key: s.row for s in read_dataset(out)}
    assert len(kept) + len(rejected) == 60 and not kept.keys() & rejected.keys()
    assert {rejected[name(i)][fields.DETAIL] for i in COPIES} == {name(SURVIVOR)}
    assert rejected[name(31)][fields.REASON] == reasons.EVAL_SIMILAR
    assert rejected[name(30)][fields.DETAIL].startswith("eval.npy[0] (cos 0.99")
    score, _, threshold = rejected[name(0)][fields.DETAIL].removeprefix("clip_score ").split()
    assert float(score) == pytest.approx(0.1, abs=2e-3) and threshold == "0.3000"
    assert {rejected[name(i)][fields.REASON] for i in MISSING} == {reasons.NO_EMBEDDING}
    assert rejected[name(0)][fields.URL] == "http://shapes.test/0.jpg"  # rejections carry what an audit needs
    # Kept rows: the score, the cluster, and the group only on the survivor of the copies.
    assert kept[name(SURVIVOR)][fields.SEM_GROUP] == name(SURVIVOR) and kept[name(SURVIVOR)][
        fields.CLIP_SCORE
    ] == pytest.approx(0.9, abs=2e-3)
    assert all(r[fields.SEM_GROUP] is None for k, r in kept.items() if k != name(SURVIVOR))
    assert kept[name(50)][fields.CLIP_SCORE] == pytest.approx(0.55, abs=2e-3)
    # The clusters are those of semdedup() on the same embeddings: the job and the function agree.
    loaded = emb.load_embeddings(planted["emb"])
    ref = semdedup(loaded.image, loaded.keys, SemDedupConfig(clusters=3), clip_scores(loaded.image, loaded.text))
    assert {k: r[fields.SEM_CLUSTER] for k, r in kept.items()} == {
        k: int(ref.cluster[loaded.keys.index(k)]) for k in kept
    }
    config = manifest.config
    assert config["job"] == "filter" and config["semdedup"]["eps"] == 0.05 and config["clip_score"]["min_score"] == 0.3
    assert config["decontaminate"]["path"] == str(planted["eval"]) and config["embeddings_model"] == "hand-made"
    assert "kept 41 of 60 samples in 3 shards" in capsys.readouterr().out
    # The same run again: nothing to do.
    filter_job.run(argv)
    assert "already filtered with this configuration" in capsys.readouterr().out


@pytest.mark.slow
def test_top_fraction_from_a_config_file_is_reproducible(planted: dict, digests) -> None:
    config = planted["tmp"] / "filter.yaml"
    config.write_text("clip_score:\n  top_fraction: 0.3\nrun:\n  samples_per_shard: 8\n")
    outs = [planted["tmp"] / "top-a", planted["tmp"] / "top-b"]
    for out in outs:
        filter_job.run([str(planted["dataset"]), "--embeddings", str(planted["emb"]), "--out", str(out),
                        "--config", str(config)])  # fmt: skip
    manifest = load_manifest(outs[0])
    # The quantile is over every embedding (58 samples and the ghost): ceil(0.3 * 59) = 18 pass, all samples.
    assert manifest.counts[reasons.SCORE] == {reasons.LOW_CLIP_SCORE: 58 - 18, reasons.NO_EMBEDDING: 2}
    assert manifest.rows == 18
    assert digests(outs[0]) == digests(outs[1])  # same inputs, same config: the same bytes


def test_bad_inputs_fail_before_any_pipeline(planted: dict, tmp_path: Path) -> None:
    base = [str(planted["dataset"]), "--embeddings", str(planted["emb"])]
    with pytest.raises(ValueError, match="--out must be a new folder"):
        filter_job.run([*base, "--out", str(planted["dataset"])])
    prompts = tmp_path / "concepts.txt"
    prompts.write_text("a photo of a gun\n")
    with pytest.raises(ValueError, match="--model is required"):
        filter_job.run([*base, "--out", str(tmp_path / "o"), "--concepts", str(prompts)])
    other = tmp_path / "other"
    shutil.copytree(planted["dataset"], other)
    (other / "manifest.json").write_text((other / "manifest.json").read_text().replace('"rows"', '"rows" ', 1))
    with pytest.raises(ValueError, match="another dataset"):
        filter_job.run([str(other), "--embeddings", str(planted["emb"]), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit):  # argparse: the two CLIP-score settings exclude each other
        filter_job.run([*base, "--out", str(tmp_path / "o"), "--min-clip-score", "0.3", "--top-fraction", "0.3"])
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_with_a_tiny_model_concepts_and_eval_images(make_shapes_dataset, tmp_path: Path) -> None:
    """The wiring with a real encoder: every verdict equals what the pure functions say of the same embeddings."""
    import torch

    from clipmodel.embed.config import EncodeConfig
    from clipmodel.embed.encode import encode_dataset
    from clipmodel.embed.encode_refs import encode_image_files, encode_texts
    from clipmodel.factory import create_model
    from clipmodel.inference import load_model
    from pipeline.filter.references import nearest_reference

    dataset = make_shapes_dataset(tmp_path / "ds", samples=24, per_shard=12)
    torch.manual_seed(0)
    torch.save(create_model("tiny").state_dict(), tmp_path / "tiny.pt")
    loaded = load_model(tmp_path / "tiny.pt", arch="tiny", device="cpu")
    encode_dataset(str(dataset), loaded, tmp_path / "emb", EncodeConfig(batch_size=32, workers=0))
    samples = {s.key: s for s in read_dataset(dataset)}
    (tmp_path / "eval").mkdir()
    for key in ("shape00003", "shape00017"):  # evaluation images that leaked into the dataset
        (tmp_path / "eval" / f"{key}.jpg").write_bytes(samples[key].image)
    prompts = ["a photo of a red circle", "a drawing of a blue square"]
    (tmp_path / "concepts.txt").write_text("\n".join(prompts) + "\n")

    got = emb.load_embeddings(tmp_path / "emb")
    scores = clip_scores(got.image, got.text)
    concept_sims = nearest_reference(got.image, encode_texts(loaded, prompts))[1]
    eval_vectors = encode_image_files(loaded, sorted((tmp_path / "eval").glob("*.jpg")))
    eval_sims = nearest_reference(got.image, eval_vectors)[1]
    min_score, concept_threshold = float(np.median(scores)), float(np.quantile(concept_sims, 0.75))
    expected = {}
    for i, key in enumerate(got.keys):  # compared as the job compares: float32 values as Python floats
        if float(eval_sims[i]) >= 0.999:
            expected[key] = reasons.EVAL_SIMILAR
        elif float(concept_sims[i]) >= concept_threshold:
            expected[key] = reasons.UNWANTED_CONCEPT
        elif float(scores[i]) < min_score:
            expected[key] = reasons.LOW_CLIP_SCORE
    assert expected["shape00003"] == expected["shape00017"] == reasons.EVAL_SIMILAR
    assert set(expected.values()) == {reasons.EVAL_SIMILAR, reasons.UNWANTED_CONCEPT, reasons.LOW_CLIP_SCORE}
    assert len(expected) < len(got.keys)  # some are kept: every filter had something to say, and not everything

    out = tmp_path / "out"
    filter_job.run([str(dataset), "--embeddings", str(tmp_path / "emb"), "--out", str(out),
                    "--model", str(tmp_path / "tiny.pt"), "--arch", "tiny", "--device", "cpu",
                    "--decontaminate", str(tmp_path / "eval"), "--eval-threshold", "0.999",
                    "--concepts", str(tmp_path / "concepts.txt"), "--concept-threshold", repr(concept_threshold),
                    "--min-clip-score", repr(min_score)])  # fmt: skip
    assert verify_dataset(out) == []
    rejected = {k: r[fields.REASON] for k, r in _rejected(out).items()}
    assert rejected == expected
    assert load_manifest(out).config["concepts"]["prompts"] == prompts
    kept = {s.key: s.row[fields.CLIP_SCORE] for s in read_dataset(out)}
    assert kept.keys() == set(got.keys) - expected.keys()
    assert all(abs(v - scores[got.keys.index(k)]) < 1e-6 for k, v in kept.items())
    assert json.loads((out / "manifest.json").read_text())["counts"]["shards"]["kept"] == len(kept)


def test_the_filter_on_a_dask_cluster_writes_the_same_bytes(planted: dict, dask_cluster, digests) -> None:
    outs = [planted["tmp"] / "local", planted["tmp"] / "on-dask"]
    argv = [str(planted["dataset"]), "--embeddings", str(planted["emb"]), "--min-clip-score", "0.3",
            "--semdedup-eps", "0.05", "--clusters", "3", "--samples-per-shard", "16"]  # fmt: skip
    filter_job.run([*argv, "--out", str(outs[0])])
    on_dask = ["--runner=DaskRunner", f"--dask_client_address={dask_cluster.address}"]
    filter_job.run([*argv, "--out", str(outs[1]), *on_dask])
    assert verify_dataset(outs[1]) == []
    assert digests(outs[1]) == digests(outs[0])
