"""`wit encode` + `wit filter` judged against the synthetic web's ground truth, with a small CLIP trained on clean
synthetic shapes: the CLIP-score filter drops the captions that describe another picture, and SemDeDup groups strong
crops that the perceptual hash (with its aspect and colour vetoes) does not.

The dataset is assembled from the web's own files and truth rather than crawled: every good and mismatched caption on
an image served without a fault, plus planted crops of some pictures with another correct caption. All numbers are
printed (`pytest -s`); the floors asserted sit below what was measured (see each assertion). The model is trained
once for the module (~30 s of CPU, the expensive part); both filters run on one encode.
"""

import hashlib
import io
import json
import random
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from beam_jobs import filter as filter_job
from clipmodel.embed import embeddings as emb
from clipmodel.embed.config import EncodeConfig
from clipmodel.embed.encode import encode_dataset
from clipmodel.inference import load_model
from clipmodel.train.trainer import train
from pipeline.curate.image_dedup import dedup_images_pure
from pipeline.fetch.image import image_signals
from pipeline.filter.clip_score import clip_scores
from pipeline.filter.semdedup import SemDedupConfig, semdedup
from pipeline.shard_reader import load_manifest, read_dataset, verify_dataset
from pipeline.shards import DatasetWriter
from schemas import fields, reasons
from synthweb import load_truth
from synthweb.captions import CaptionWriter
from synthweb.draw import encode

# ~70 s on two idle cores, training most of it; the timeout leaves room for a machine shared with other jobs.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), pytest.mark.usefixtures("one_thread")]

# Between MICRO (too small to learn colour and shape) and `tiny` (2 s a step here): 120 steps of 64 take ~30 s of CPU.
SMALL_CONFIG = {
    "embed_dim": 64,
    "activation": "gelu",
    "vision": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}
STORED = ("jpg", "png", "webp")  # what our shards hold; the web's few GIFs are left out
COPIES = 16  # planted strong crops


def _train(make_shapes_dataset, tmp: Path) -> Path:
    (tmp / "small.json").write_text(json.dumps(SMALL_CONFIG))
    data = make_shapes_dataset(tmp / "shapes", samples=1024, per_shard=256, side=48)
    given = {"model": str(tmp / "small.json"), "data": [str(data)], "steps": 120, "batch_size": 64, "warmup": 10}
    given |= {"lr": 2e-3, "log_every": 40, "save_every": 1000, "workers": 1}
    start = time.perf_counter()
    summary = train(given, tmp / "run")
    print(f"\ntrained {summary.step} steps in {time.perf_counter() - start:.0f}s: loss {summary.first_loss:.2f} -> "
          f"{summary.last_loss:.2f}")  # fmt: skip
    return tmp / "run"


def strong_crop(img: Image.Image, rng: random.Random) -> Image.Image:
    """Keep a window of 75-90% of each side at a random place: the aspect ratio changes by up to a fifth (often past
    the aspect veto), the object stays (mostly), and the pHash moves 12-38 bits (measured), past k = 4."""
    w, h = img.size
    cw, ch = round(w * rng.uniform(0.75, 0.9)), round(h * rng.uniform(0.75, 0.9))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((x, y, x + cw, y + ch))


def _picture_groups(rows: list[dict]) -> dict[str, str]:
    """Truth row id -> one id per picture: exact and near duplicates joined (an original can be in both)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for r in rows:
        for g in (r["dup_group"], r["near_dup_group"]):
            if g:
                parent[find(g)] = find(r["id"])
    return {r["id"]: find(r["id"]) for r in rows}


def assemble(web: Path, out: Path) -> dict[str, dict]:
    """A dataset of the web's good and mismatched captions and COPIES planted crops; {key: truth} of every sample,
    truth being {"kind": good | mismatch, "picture": id shared by copies of one picture, "copy_of": key or None}."""
    every = load_truth(web)
    picture = _picture_groups([r for r in every if r["kind"] == "image"])
    rows = [r for r in every if r["kind"] == "image" and r["fault"] == "none" and r["format"] in STORED]
    rows = [r for r in rows if r["caption_kind"] in ("good", "mismatch")]
    rng = random.Random(0)
    captions = CaptionWriter(random.Random(1))
    truth: dict[str, dict] = {}
    alone = [i for i, r in enumerate(rows) if r["caption_kind"] == "good" and picture[r["id"]] == r["id"]]
    planted = set(rng.sample(alone, COPIES))
    with DatasetWriter(out, samples_per_shard=64) as writer:
        for i, r in enumerate(rows):
            file = web / "hosts" / str(r["host"]) / r["path"].lstrip("/")
            data = file.read_bytes()
            key = f"web{i:04d}"
            row = {fields.KEY: key, fields.URL: f"http://web.test{r['path']}", fields.CAPTION: r["caption"],
                   fields.IMAGE_FORMAT: r["format"], fields.WIDTH: r["width"], fields.HEIGHT: r["height"]}  # fmt: skip
            writer.add(row, data)
            truth[key] = {"kind": r["caption_kind"], "picture": picture[r["id"]], "copy_of": None, "label": r["label"],
                          "looks": tuple(r[a] for a in ("label", "texture", "background", "size"))}  # fmt: skip
            if i in planted:
                img = strong_crop(Image.open(file).convert("RGB"), rng)
                caption = captions.english(r["colour"], r["shape"], r["texture"], r["background"], r["size"])
                copy = {**row, fields.KEY: f"crop{i:04d}", fields.URL: f"http://copies.test/{i}.jpg",
                        fields.CAPTION: caption, fields.IMAGE_FORMAT: "jpg", fields.WIDTH: img.width,
                        fields.HEIGHT: img.height}  # fmt: skip
                writer.add(copy, encode(img, "jpg", 85))
                truth[copy[fields.KEY]] = truth[key] | {"kind": "good", "copy_of": key}
    return truth


@pytest.fixture(scope="module")
def quality(make_shapes_dataset, web_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The trained model, the assembled dataset with its truth, and its embeddings (`wit encode`'s function)."""
    tmp = tmp_path_factory.mktemp("quality")
    run = _train(make_shapes_dataset, tmp)
    truth = assemble(web_dir, tmp / "dataset")
    start = time.perf_counter()
    summary = encode_dataset(str(tmp / "dataset"), load_model(run, device="cpu"), tmp / "emb",
                             EncodeConfig(batch_size=64, workers=0))  # fmt: skip
    print(f"encoded {summary.samples} samples in {time.perf_counter() - start:.1f}s "
          f"({Counter(t['kind'] for t in truth.values())})")  # fmt: skip
    assert summary.samples == len(truth)
    return {"tmp": tmp, "run": run, "dataset": tmp / "dataset", "emb": tmp / "emb", "truth": truth}


def _filter(quality: dict, name: str, *flags: str) -> tuple[set[str], dict[str, dict]]:
    """`wit filter` with `flags`: (kept keys, {rejected key: rejection row}), after checking every sample is one."""
    out = quality["tmp"] / name
    start = time.perf_counter()
    filter_job.run([str(quality["dataset"]), "--embeddings", str(quality["emb"]), "--out", str(out), *flags])
    print(f"wit filter {' '.join(flags)}: {time.perf_counter() - start:.1f}s")
    assert verify_dataset(out) == []
    kept = {s.key for s in read_dataset(out)}
    files = [str(out / f.path) for f in load_manifest(out).rejected]
    rejected = {r[fields.KEY]: r for r in pq.read_table(files).to_pylist()} if files else {}
    assert len(kept) + len(rejected) == len(quality["truth"]) and not kept & rejected.keys()
    return kept, rejected


def test_clip_score_filter_drops_the_mismatched_captions(quality: dict) -> None:
    truth = quality["truth"]
    _, rejected = _filter(quality, "scored", "--min-clip-score", "0.45")
    assert {r[fields.REASON] for r in rejected.values()} <= {reasons.LOW_CLIP_SCORE}
    bad = {k for k, t in truth.items() if t["kind"] == "mismatch"}
    hits = len(bad & rejected.keys())
    precision, recall = hits / max(1, len(rejected)), hits / len(bad)
    print(f"CLIP score >= 0.45: rejected {len(rejected)} of {len(truth)}, {hits} of the {len(bad)} mismatched "
          f"captions: precision {precision:.3f} recall {recall:.3f}")  # fmt: skip
    assert len(bad) >= 10
    # Measured 1.0 and 0.92: a caption naming the picture's colour but another shape is what a model this small
    # (it learns colour first) lets through.
    assert precision >= 0.8 and recall >= 0.75


def _merges(survivor: dict[str, str], truth: dict[str, dict]) -> tuple[int, int, int]:
    """(samples merged into another, of them the same picture, of them the same class)."""
    merged = [(k, s) for k, s in survivor.items() if k != s]
    same = sum(truth[k]["picture"] == truth[s]["picture"] for k, s in merged)
    return len(merged), same, sum(truth[k]["label"] == truth[s]["label"] for k, s in merged)


def test_semdedup_groups_the_crops_the_perceptual_hash_missed(quality: dict) -> None:
    truth = quality["truth"]
    copies = {k: t["copy_of"] for k, t in truth.items() if t["copy_of"]}
    # The build's image dedup on the same images: phash, colour signature and aspect as the fetch stage has them.
    rows = []
    for sample in read_dataset(quality["dataset"]):
        img = Image.open(io.BytesIO(sample.image)).convert("RGB")
        ph, colour = image_signals(img)
        rows.append({fields.KEY: sample.key, fields.SHA256: hashlib.sha256(sample.image).hexdigest(),
                     fields.PHASH: ph, fields.COLOUR_SIG: colour, fields.ORIGINAL_WIDTH: img.width,
                     fields.ORIGINAL_HEIGHT: img.height})  # fmt: skip
    # Each sample's group survivor (its own key when alone), exact and near duplicates alike.
    phash = {k: k for k in truth} | {member: group for group, member in dedup_images_pure(rows).groups}
    phash_found = sum(phash[c] == phash[o] for c, o in copies.items())

    _, rejected = _filter(quality, "deduped", "--semdedup-eps", "0.02")
    assert {r[fields.REASON] for r in rejected.values()} <= {reasons.SEMANTIC_DUPLICATE}
    sem = {k: k for k in truth} | {k: r[fields.DETAIL] for k, r in rejected.items()}
    sem_found = sum(sem[c] == sem[o] for c, o in copies.items())
    for name, survivor, found in (("pHash", phash, phash_found), ("SemDeDup", sem, sem_found)):
        merged, same, same_class = _merges(survivor, truth)
        print(
            f"{name}: {found}/{len(copies)} planted crops with their original; {merged} samples merged, {same} "
            f"into the same picture (precision {same / max(1, merged):.3f}), {same_class} into the same class"
        )
    # The trade-off eps sets, by the in-process semdedup() on the same embeddings (what the job computes per cluster).
    loaded = emb.load_embeddings(quality["emb"])
    scores = clip_scores(loaded.image, loaded.text)
    for eps in (0.002, 0.005, 0.01, 0.02, 0.05):
        result = semdedup(loaded.image, loaded.keys, SemDedupConfig(eps=eps), scores)
        survivor = {k: loaded.keys[s] for k, s in zip(loaded.keys, result.survivor.tolist(), strict=True)}
        merged, same, same_class = _merges(survivor, truth)
        found = sum(survivor[c] == survivor[o] for c, o in copies.items())
        print(f"  eps {eps}: crops {found}/{len(copies)}, merged {merged}, same picture {same}, class {same_class}")
    # Measured: pHash 0/16; SemDeDup 13/16, but it also merges other pictures (same-picture precision 0.18, same
    # class 0.33): a model trained a minute on shapes embeds colour far better than shape, so pictures of one colour
    # sit within eps of each other. The floors hold that finding, not a quality target.
    assert phash_found <= 0.1 * len(copies)
    assert sem_found >= 0.6 * len(copies)
    merged, same, _ = _merges(sem, truth)
    assert same / merged >= 0.1
