"""`wit build --score-model`: CLIP scoring inside the build, after image dedup. Kept samples carry the score `wit
encode` + cosine gives for the same stored image and caption; those under --min-clip-score are rejections."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from beam_jobs import build
from beam_jobs.build_config import ScoreConfig
from clipmodel import transform
from clipmodel.embed import embeddings as emb
from clipmodel.embed.config import EncodeConfig
from clipmodel.embed.encode import encode_dataset, shard_parts
from clipmodel.inference import load_model
from clipmodel.tokenizer import tokenize
from pipeline.fetch.image import ImageConfig, process_image
from pipeline.filter.clip_score import clip_scores
from pipeline.shard_reader import load_manifest, read_dataset, verify_dataset
from schemas import fields, reasons

pytestmark = pytest.mark.usefixtures("one_thread")


def test_score_config_is_validated() -> None:
    assert ScoreConfig().model is None
    with pytest.raises(ValueError, match="needs a model"):
        ScoreConfig(min_score=0.2)
    with pytest.raises(ValueError, match="between -1 and 1"):
        ScoreConfig(model="m.pt", min_score=2.0)
    with pytest.raises(ValueError, match="batch_size"):
        ScoreConfig(model="m.pt", batch_size=0)


def test_a_bad_score_model_fails_before_any_fetch(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        build.run(["--candidates", str(tmp_path / "c.parquet"), "--out", str(tmp_path / "out"),
                   "--score-model", str(tmp_path / "none.pt")])  # fmt: skip
    assert "--score-model: no model at" in capsys.readouterr().err and not (tmp_path / "out").exists()


def _expected_scores(rows: list[dict], web_dir: Path, weights: Path) -> dict[str, float]:
    """{url: cosine} of each candidate's image as the build stores it (the fetch stage's process_image) and caption."""
    loaded = load_model(weights, arch="tiny", device="cpu")
    stored = [process_image((web_dir / "hosts" / str(r["host"]) / r["path"].lstrip("/")).read_bytes(), ImageConfig())
              for r in rows]  # fmt: skip
    images = transform.normalize(np.stack([transform.load(p.data, loaded.resolution) for p in stored]))
    with torch.no_grad():
        image = F.normalize(loaded.model.encode_image(images), dim=-1)  # (N, E)
        text = F.normalize(loaded.model.encode_text(tokenize([r["caption"] for r in rows])), dim=-1)  # (N, E)
    return {r["url"]: float(s) for r, s in zip(rows, (image * text).sum(-1).tolist(), strict=True)}


@pytest.mark.slow
def test_a_build_scores_its_samples_and_rejects_the_low_ones(served_web, web_dir, tiny_weights, tmp_path) -> None:
    served_web.reset()
    truth = [r for r in served_web.truth() if r["kind"] == "image" and r["fault"] == "none"]
    rows = [r for r in truth if r["caption_kind"] in ("good", "mismatch") and r["format"] != "gif"][:32]
    pq.write_table(pa.table({"url": [r["url"] for r in rows], "caption": [r["caption"] for r in rows]}),
                   tmp_path / "candidates.parquet")  # fmt: skip
    expected = _expected_scores(rows, web_dir, tiny_weights)
    ordered = sorted(expected.values())
    threshold = (ordered[len(ordered) // 3] + ordered[len(ordered) // 3 + 1]) / 2  # a third under it
    assert ordered[len(ordered) // 3 + 1] - ordered[len(ordered) // 3] > 1e-4  # no score within rounding of it

    out = tmp_path / "dataset"
    build.run(["--candidates", str(tmp_path / "candidates.parquet"), "--out", str(out), "--allow-private",
               "--no-balance", "--samples-per-shard", "8", "--threads", "8", "--score-model", str(tiny_weights),
               "--score-arch", "tiny", "--min-clip-score", repr(threshold)])  # fmt: skip

    assert verify_dataset(out) == []
    manifest = load_manifest(out)
    kept = {s.key: s.row for s in read_dataset(out)}
    rejected = pq.read_table([str(out / f.path) for f in manifest.rejected]).to_pylist()
    assert len(kept) + len(rejected) == len(rows) and not kept.keys() & {r[fields.KEY] for r in rejected}
    low = [r for r in rejected if r[fields.REASON] == reasons.LOW_CLIP_SCORE]
    print(f"\n{len(rows)} candidates: {len(kept)} kept, {len(low)} under clip_score {threshold:.4f}, "
          f"{len(rejected) - len(low)} rejected by other stages")  # fmt: skip
    assert low and kept  # the threshold splits what image dedup kept
    assert all(r[fields.STAGE] == reasons.SCORE and expected[r[fields.URL]] < threshold for r in low)
    assert manifest.counts[reasons.SCORE] == {reasons.LOW_CLIP_SCORE: len(low)}
    assert all(expected[row[fields.URL]] >= threshold for row in kept.values())
    assert manifest.config["score"]["min_score"] == threshold and manifest.config["score"]["arch"] == "tiny"
    assert manifest.config["score_model"]["weights_sha256"] == load_model(tiny_weights, arch="tiny").weights_sha256

    # The scores are those of `wit encode`'s path on the stored samples: its batches (decoded, centre-cropped images
    # and tokens) through the model in fp32 agree to 1e-5; its files, float16 embeddings, to their rounding.
    loaded = load_model(tiny_weights, arch="tiny", device="cpu")
    direct = {}
    for i, shard in enumerate(manifest.shards):
        for part in shard_parts(i, str(out / shard.tar.path), loaded.resolution, loaded.context_length, 16):
            with torch.no_grad():
                image = F.normalize(loaded.model.encode_image(part.images), dim=-1)  # (b, E)
                text = F.normalize(loaded.model.encode_text(part.tokens), dim=-1)  # (b, E)
            direct |= dict(zip(part.keys, (image * text).sum(-1).tolist(), strict=True))
    assert direct.keys() == kept.keys()
    assert all(abs(kept[k][fields.CLIP_SCORE] - c) < 1e-5 for k, c in direct.items())
    encode_dataset(str(out), loaded, tmp_path / "emb", EncodeConfig(batch_size=16, workers=0))
    got = emb.load_embeddings(tmp_path / "emb")
    stored = dict(zip(got.keys, clip_scores(got.image, got.text).tolist(), strict=True))
    assert stored.keys() == kept.keys()
    assert all(abs(kept[k][fields.CLIP_SCORE] - c) < 2e-3 for k, c in stored.items())
