"""A generated synthetic web on disk: determinism, the truth's promises, the eval set and its held-out classes."""

import hashlib
import io
import json
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from synthweb import FAULTS, WebConfig, generate_web, load_eval, load_truth, vocabulary
from synthweb.captions import mentioned_classes, named_class
from synthweb.spec import IMAGE_FORMATS, PIL_FORMATS, SHIFTS
from synthweb.truth import TRUTH_SCHEMA, pictured_labels

_PIL_TO_EXT = {v: k for k, v in PIL_FORMATS.items()}


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file the generator wrote (served/ is written by the server, not the generator)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != "served"
    }


def _config(web_dir: Path) -> WebConfig:
    return WebConfig(**json.loads((web_dir / "site.json").read_text())["config"])


def _file(web_dir: Path, row: dict) -> Path:
    return web_dir / "hosts" / str(row["host"]) / (row["path"].lstrip("/") or "index.html")


@pytest.fixture(scope="module")
def truth(web_dir):
    return load_truth(web_dir)


@pytest.fixture(scope="module")
def images(truth):
    return [r for r in truth if r["kind"] == "image"]


def test_same_seed_same_bytes_other_seed_other_bytes(web_dir, tmp_path):
    cfg = _config(web_dir)
    summary = generate_web(tmp_path / "again", cfg)
    again = _hashes(tmp_path / "again")
    assert again == _hashes(web_dir)
    assert len(again) > 250 and summary.images > 100
    generate_web(tmp_path / "other", WebConfig(**(cfg.to_dict() | {"seed": cfg.seed + 1})))
    other = _hashes(tmp_path / "other")
    assert other["truth.parquet"] != again["truth.parquet"]
    assert len(set(other.values()) & set(again.values())) < 0.1 * len(again)


def test_generate_replaces_a_web_but_not_other_folders(tmp_path):
    cfg = WebConfig(seed=5, pages=3, hosts=1, images_per_page=1)
    generate_web(tmp_path / "web", cfg)
    (tmp_path / "web" / "stale.txt").write_text("from an earlier run")
    generate_web(tmp_path / "web", cfg)
    assert not (tmp_path / "web" / "stale.txt").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        generate_web(tmp_path / "mine", cfg)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_truth_has_one_row_per_url_and_its_schema(web_dir, truth):
    assert pq.read_schema(web_dir / "truth.parquet").names == TRUTH_SCHEMA.names
    assert len({r["id"] for r in truth}) == len(truth)
    assert len({(r["host"], r["path"]) for r in truth}) == len(truth)
    cfg = _config(web_dir)
    kinds = Counter(r["kind"] for r in truth)
    assert kinds["robots"] == cfg.hosts and kinds["page"] == cfg.pages + 2  # + the private page and the 404
    assert 100 <= kinds["image"] <= 200
    seeds = [r for r in truth if r["seed"]]
    assert sorted(r["host"] for r in seeds) == list(range(cfg.hosts)) and {r["path"] for r in seeds} == {"/"}


def test_every_fault_is_planted_and_referenced_from_a_page(truth):
    by_fault = defaultdict(list)
    for r in truth:
        by_fault[r["fault"]].append(r)
    assert set(by_fault) == set(FAULTS)
    for fault, rows in by_fault.items():
        assert all(r["expected"] == FAULTS[fault][0] for r in rows)
        if fault != "none":
            assert any(r["page"] for r in rows if r["kind"] == "image"), f"{fault} is not on any page"
    page_ids = {r["id"] for r in truth if r["kind"] == "page"}
    assert all(r["page"] in page_ids for r in truth if r["page"])
    targets = [r for r in truth if r["target"]]
    ids = {r["id"] for r in truth}
    assert targets and all(r["target"] in ids for r in targets)


def test_held_out_classes_never_reach_the_web(web_dir, truth):
    held = set(vocabulary(_config(web_dir).seed).held_out)
    classes = json.loads((web_dir / "classes.json").read_text())
    assert set(classes["held_out"]) == held
    for r in truth:
        assert r["label"] not in held and r["caption_label"] not in held, r["id"]
        for text in (r["caption"], r["title"], r["figcaption"]):
            assert not mentioned_classes(text or "") & held, (r["id"], text)


def test_captions_are_what_their_kind_says(images):
    images = [r for r in images if r["page"]]  # redirect targets are not on a page: they have no alt text
    kinds = Counter(r["caption_kind"] for r in images)
    assert set(kinds) == {"good", "non_english", "boilerplate", "empty", "mismatch"}
    assert kinds["good"] > sum(kinds.values()) / 2
    assert {r["lang"] for r in images if r["caption_kind"] == "non_english"} == {"fr", "de", "es"}
    for r in images:
        kind, caption = r["caption_kind"], r["caption"]
        if kind in ("good", "non_english"):
            assert mentioned_classes(caption) == {r["caption_label"]}, caption
            assert r["label"] in (None, r["caption_label"])
        elif kind == "mismatch":
            assert mentioned_classes(caption) == {r["caption_label"]} and r["caption_label"] != r["label"]
        elif kind == "boilerplate":
            assert caption and not mentioned_classes(caption)
        elif kind == "empty":
            assert caption == ""
    assert any(r["has_alt"] is False for r in images) and any(r["figcaption"] for r in images)
    assert any(r["title"] for r in images)


def test_exact_and_near_duplicates(images):
    dups, nears = defaultdict(list), defaultdict(list)
    for r in images:
        if r["dup_group"]:
            dups[r["dup_group"]].append(r)
        if r["near_dup_group"]:
            nears[r["near_dup_group"]].append(r)
    assert dups and nears
    for rows in dups.values():
        assert len(rows) >= 2 and len({r["sha256"] for r in rows}) == 1 and len({r["label"] for r in rows}) == 1
    near_only = [rows for rows in nears.values() if not rows[0]["srcset_group"]]
    assert near_only
    for rows in nears.values():
        assert len(rows) >= 2 and len({r["sha256"] for r in rows}) == len(rows) and len({r["label"] for r in rows}) == 1


def test_srcset_candidates(images):
    groups = defaultdict(list)
    for r in images:
        if r["srcset_group"]:
            groups[r["srcset_group"]].append(r)
    assert groups
    for rows in groups.values():
        assert len(rows) == 3
        best = max(rows, key=lambda r: r["srcset_width"])
        assert [r["srcset_best"] for r in rows].count(True) == 1 and best["srcset_best"]
        assert all(r["width"] == r["srcset_width"] for r in rows)
        assert best["width"] == max(r["width"] for r in rows)


def test_images_on_disk_are_what_the_truth_records(web_dir, images):
    sizes = []
    for r in images:
        if r["fault"] in ("http_404", "always_429", "redirect_301", "redirect_302", "redirect_loop"):
            assert not _file(web_dir, r).exists()
            continue
        data = _file(web_dir, r).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (r["bytes"], r["sha256"])
        if r["expected"] == "ok" or r["fault"] in ("noai", "noai_our_agent", "robots_private", "robots_agent"):
            img = Image.open(io.BytesIO(data))
            img.load()
            assert (_PIL_TO_EXT[img.format], img.size) == (r["format"], (r["width"], r["height"])), r["id"]
            sizes.append(max(img.size))
    assert {r["format"] for r in images if r["expected"] == "ok"} == set(IMAGE_FORMATS)
    assert min(sizes) >= 100 and max(sizes) <= 2000
    assert sum(200 <= s <= 800 for s in sizes) > 0.6 * len(sizes)
    assert 1 <= sum(s >= 1000 for s in sizes) <= 0.1 * len(sizes)


def test_eval_sets_cover_train_and_held_out_classes(web_dir):
    classes = json.loads((web_dir / "classes.json").read_text())
    assert set(classes["train"]) | set(classes["held_out"]) == set(classes["classes"])
    cfg = _config(web_dir)
    for shift in (None, *SHIFTS):
        rows = load_eval(web_dir, shift)
        assert Counter(r["label"] for r in rows) == {c: cfg.eval_per_class for c in classes["classes"]}
        assert all(r["shift"] == shift for r in rows)
        assert {r["split"] for r in rows if r["label"] in classes["held_out"]} == {"held_out"}
        for r in rows[:5]:
            assert Image.open(r["path"]).size == (cfg.eval_size, cfg.eval_size)
    assert {r["background"] for r in load_eval(web_dir, "background")} <= set(classes["shift_backgrounds"])
    assert {r["texture"] for r in load_eval(web_dir, "texture")} <= set(classes["shift_textures"])
    assert {r["style"] for r in load_eval(web_dir, "sketch")} == {"sketch"}
    on_web = {(r["texture"], r["background"]) for r in load_truth(web_dir) if r["texture"]}
    assert not {t for t, _ in on_web} & set(classes["shift_textures"])
    assert not {b for _, b in on_web} & set(classes["shift_backgrounds"])


def test_eval_leaks_are_near_copies_of_train_eval_images(web_dir, images):
    leaks = [r for r in images if r["eval_leak"]]
    assert len(leaks) >= 2
    labels = {Path(r["path"]).relative_to(web_dir).as_posix(): r for r in load_eval(web_dir)}
    for r in leaks:
        source = labels[r["eval_leak"]]
        assert source["split"] == "train" and source["label"] == r["label"]
        assert r["sha256"] != hashlib.sha256((web_dir / r["eval_leak"]).read_bytes()).hexdigest()


def test_pictured_labels_by_path_and_through_redirects(web_dir, truth):
    by_id = {r["id"]: r for r in truth}
    pictures = [r for r in truth if r["kind"] == "image" and r["label"] and not r["target"]][:5]
    redirect = next(r for r in truth if r["target"] and by_id[r["target"]]["label"])
    urls = [f"http://127.0.0.1:1{i}/{r['path'].lstrip('/')}" for i, r in enumerate(pictures)]  # any port
    urls += [f"http://[::1]:9{redirect['path']}", "http://127.0.0.1:1/not/in/the/web.jpg", None]
    expected = [r["label"] for r in pictures] + [by_id[redirect["target"]]["label"], None, None]
    assert pictured_labels(web_dir, urls) == expected


def test_named_class_is_the_one_class_a_caption_names():
    assert named_class("Stock image: an orange triangle isolated on a gradient background") == "orange triangle"
    assert named_class("un cercle rouge") == "red circle"
    assert named_class("a red circle beside a blue square") is None  # several
    assert named_class("Click here to enlarge") is None and named_class(None) is None
