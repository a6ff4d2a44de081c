"""The training loader end to end: exactly-once epochs across ranks and workers, order, resume, errors, fsspec."""

import collections
import io
import json
import random
import string
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from clipmodel.data.loader import DataConfig, ShardDataset, make_loader
from clipmodel.data.shardlist import ShardInfo
from clipmodel.data.stages import caption_of, number, shuffle
from clipmodel.data.tarstream import (
    BAD_METADATA,
    CORRUPT_IMAGE,
    CORRUPT_SHARD,
    MISSING_CAPTION,
    MISSING_IMAGE,
    REPEATED,
    SAMPLES,
    UNREADABLE_SHARD,
    UNSAFE_MEMBER,
    Counters,
    RawSample,
)
from pipeline.shards import DatasetWriter
from schemas import fields

R = 32


def jpeg(i: int, size: tuple[int, int] = (40, 32)) -> bytes:
    """A horizontal ramp, different per i, so crops at different places differ."""
    ramp = (np.arange(size[0]) * 5 + i * 37) % 256
    pixels = np.broadcast_to(ramp[None, :, None], (size[1], size[0], 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def stub_tokenize(texts: list[str]) -> torch.Tensor:
    """Token 0 is the number ending the caption, so tests can check captions travel with their images."""
    out = torch.zeros((len(texts), 77), dtype=torch.long)
    for row, text in enumerate(texts):
        out[row, 0] = int(text.rsplit(" ", 1)[1])
    return out


def write_dataset(path: Path, n: int, per_shard: int, prefix: str = "k") -> list[str]:
    """Our layout through the project's writer; keys are prefix + index, captions end with the index."""
    with DatasetWriter(path, samples_per_shard=per_shard) as writer:
        for i in range(n):
            row = {fields.KEY: f"{prefix}{i:04d}", fields.URL: f"http://x.test/{i}.jpg", fields.IMAGE_FORMAT: "jpg"}
            writer.add(row | {fields.CAPTION: f"a photo {i}"}, jpeg(i))
    return [f"{prefix}{i:04d}" for i in range(n)]


def add(tar: tarfile.TarFile, name: str, data: bytes, kind: bytes = tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.type = (len(data), kind) if kind == tarfile.REGTYPE else (0, kind)
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def write_i2d_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                add(tar, f"{key}.{ext}", data)


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> tuple[Path, list[str]]:
    """13 shards of 4: more shards than any slot count tested."""
    path = tmp_path_factory.mktemp("many") / "ds"
    return path, write_dataset(path, 52, 4)


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> tuple[Path, list[str]]:
    """One shard of 23: fewer shards than slots."""
    path = tmp_path_factory.mktemp("one") / "ds"
    return path, write_dataset(path, 23, 100)


def loader(path, **kw):
    settings = dict(batch_size=5, resolution=R, tokenize=stub_tokenize, workers=0, shuffle_buffer=7)
    return make_loader(str(path) if isinstance(path, Path) else path, **(settings | kw))


def batches_keys(ld) -> list[list[str]]:
    out = []
    for b in ld:
        assert b.images.shape == (len(b.keys), 3, R, R) and b.images.dtype == torch.float32
        assert b.tokens.shape == (len(b.keys), 77)
        assert [int(t) for t in b.tokens[:, 0]] == [
            int(k.lstrip(string.ascii_letters)) for k in b.keys
        ]  # caption: image
        out.append(b.keys)
    return out


@pytest.mark.parametrize("ranks,workers", [(1, 1), (1, 2), (2, 2), (3, 2)])
@pytest.mark.parametrize("data", ["many", "one"])
def test_every_sample_exactly_once_per_epoch(ranks, workers, data, request):
    path, keys = request.getfixturevalue(data)
    seen = collections.Counter()
    for rank in range(ranks):
        ld = loader(path, rank=rank, world_size=ranks, workers=workers, equalize=False, drop_last=False)
        seen.update(k for batch in batches_keys(ld) for k in batch)
    assert sorted(seen) == keys and set(seen.values()) == {1}


def test_the_order_is_fixed_by_the_seed_and_changes_with_the_epoch(many):
    path, keys = many

    def order(seed, epoch):
        ld = loader(path, seed=seed, drop_last=False)
        ld.set_epoch(epoch)
        return [k for batch in batches_keys(ld) for k in batch]

    first = order(0, 0)
    assert sorted(first) == keys and first != keys
    assert order(0, 0) == first
    assert order(0, 1) != first and sorted(order(0, 1)) == keys
    assert order(1, 0) != first
    assert [k for b in batches_keys(loader(path, train=False)) for k in b] == keys  # evaluation: file order


def test_equalized_ranks_yield_the_same_number_of_full_batches(many):
    path, keys = many
    counts, seen = [], collections.Counter()
    for rank in range(3):
        ld = loader(path, rank=rank, world_size=3, workers=2, batch_size=3)
        got = batches_keys(ld)
        assert all(len(b) == 3 for b in got)
        counts.append((len(got), len(ld)))
        seen.update(k for b in got for k in b)
    assert len({n for n, _ in counts}) == 1 and all(n == length for n, length in counts)
    assert set(seen.values()) == {1} and len(seen) == 3 * counts[0][0] * 3  # no sample twice, across ranks


def test_equalize_rereads_a_short_worker_instead_of_leaving_its_rank_short(tmp_path):
    good = [(f"g{i:03d}", {"jpg": jpeg(i), "txt": f"ok {i}".encode()}) for i in range(12)]
    bad = [(f"b{i:03d}", {"jpg": b"not a jpeg", "txt": f"bad {i}".encode()}) for i in range(6)]
    write_i2d_shard(tmp_path / "00000.tar", good)
    write_i2d_shard(tmp_path / "00001.tar", bad + good[:6])
    (tmp_path / "sizes.json").write_text(json.dumps({"00000.tar": 12, "00001.tar": 12}))
    repeated, corrupt = 0, 0
    for rank in range(2):
        ld = make_loader(str(tmp_path), batch_size=4, resolution=R, tokenize=stub_tokenize, workers=0, rank=rank,
                         world_size=2, shuffle_buffer=0)  # fmt: skip
        assert len(ld) == 3 and len(list(ld)) == 3  # the rank with the bad shard is not left short
        repeated, corrupt = repeated + ld.counters()[REPEATED], corrupt + ld.counters()[CORRUPT_IMAGE]
    assert (repeated, corrupt) == (12, 12)  # the second pass over the 12-sample shard supplied the 6 missing


def test_resampled_draws_with_replacement_by_dataset_weight(tmp_path):
    write_dataset(tmp_path / "a", 20, 5, prefix="a")
    write_dataset(tmp_path / "b", 20, 5, prefix="b")
    ld = make_loader([str(tmp_path / "a"), str(tmp_path / "b")], batch_size=10, resolution=8, tokenize=stub_tokenize,
                     workers=0, resampled=True, weights=(3, 1), shuffle_buffer=0, seed=3)  # fmt: skip
    keys = []
    for b in ld:
        keys += b.keys
        if len(keys) >= 2000:
            break
    share_a = sum(k.startswith("a") for k in keys) / len(keys)
    assert abs(share_a - 0.75) < 0.05
    assert max(collections.Counter(keys).values()) > 1  # with replacement
    with pytest.raises(TypeError, match="endless"):
        len(ld)


def test_bad_data_is_skipped_and_counted_never_raised(tmp_path):
    ok = [(f"ok{i}", {"jpg": jpeg(i), "txt": f"fine {i}".encode()}) for i in range(3)]
    write_i2d_shard(tmp_path / "00000.tar", [
        ok[0],
        ("corrupt", {"jpg": jpeg(1)[:40], "txt": b"cut 9"}),
        ("nocap", {"jpg": jpeg(2), "json": b"{}"}),
        ("noimg", {"txt": b"lonely 9"}),
        ("badjson", {"jpg": jpeg(3), "json": b"{not json"}),
        ok[1],
    ])  # fmt: skip
    with tarfile.open(tmp_path / "00001.tar", "w") as tar:
        add(tar, "evil.jpg", b"", tarfile.SYMTYPE)
        add(tar, "../escape.txt", b"x 9")
        for ext, data in ok[2][1].items():
            add(tar, f"{ok[2][0]}.{ext}", data)
    write_i2d_shard(tmp_path / "cut.tar", [(f"t{i}", {"jpg": jpeg(i), "txt": f"t {i}".encode()}) for i in range(3)])
    with tarfile.open(tmp_path / "cut.tar") as tar:
        cut = tar.getmember("t1.jpg").offset_data + 10  # inside t1's image: t1 has no whole member
    (tmp_path / "00002.tar").write_bytes((tmp_path / "cut.tar").read_bytes()[:cut])
    (tmp_path / "cut.tar").unlink()
    ld = loader(tmp_path, drop_last=False, workers=2)
    got = sorted(k for b in batches_keys(ld) for k in b)
    assert got == ["ok0", "ok1", "ok2", "t0"]
    counts = ld.counters()
    assert counts[CORRUPT_IMAGE] == 1 and counts[MISSING_CAPTION] == 1 and counts[MISSING_IMAGE] == 1
    assert counts[BAD_METADATA] == 1 and counts[UNSAFE_MEMBER] == 2 and counts[CORRUPT_SHARD] == 1
    assert counts[SAMPLES] == len(got)


def test_a_missing_shard_is_counted_and_the_rest_is_read(many, tmp_path):
    path, keys = many
    ds = ShardDataset(DataConfig((str(path),), batch_size=50, resolution=R, workers=0, train=False, drop_last=False),
                      tokenize=stub_tokenize)  # fmt: skip
    ds.shards.insert(1, ShardInfo(str(tmp_path / "gone.tar")))
    assert sorted(k for b in ds for k in b.keys) == keys
    assert ds.shared.counters(0)[UNREADABLE_SHARD] == 1


def test_an_img2dataset_folder_reads_like_ours(tmp_path):
    write_i2d_shard(tmp_path / "00000.tar", [(f"{i:09d}", {"jpg": jpeg(i), "txt": f"p {i}".encode(),
                                                           "json": b"{}"}) for i in range(7)])  # fmt: skip
    (tmp_path / "00000_stats.json").write_text(json.dumps({"successes": 7}))
    ld = loader(tmp_path, train=False, batch_size=3)
    assert len(ld) == 3 and [len(b) for b in batches_keys(ld)] == [3, 3, 1]


def test_a_memory_fsspec_url_works(many):
    path, keys = many
    fs = fsspec.filesystem("memory")
    for file in path.rglob("*"):
        if file.is_file():
            fs.pipe(f"/loader-test/{file.relative_to(path).as_posix()}", file.read_bytes())
    got = [k for b in batches_keys(loader("memory://loader-test", train=False)) for k in b]
    assert got == keys


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_with_exactly_the_batches_not_yet_consumed(many, workers):
    path, _ = many

    def make():
        ld = loader(path, workers=workers, batch_size=3, drop_last=False)
        ld.set_epoch(2)
        return ld

    full = [(b.keys, b.images) for b in make()]
    first = make()
    it, consumed = iter(first), []
    for _ in range(7):
        consumed.append(next(it).keys)
    state = json.loads(json.dumps(first.state_dict()))  # it must survive a checkpoint
    resumed = make()
    resumed.load_state_dict(state)
    rest = [(b.keys, b.images) for b in resumed]
    assert consumed + [k for k, _ in rest] == [k for k, _ in full]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(rest, full[7:], strict=True))  # same crops
    assert [b.keys for b in resumed] == [k for k, _ in full]  # a finished pass starts the epoch over


def test_config_round_trips_and_validates(many):
    path, _ = many
    cfg = DataConfig((str(path),), batch_size=8, weights=(1.0,))
    assert DataConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in ({"batch_size": 0}, {"workers": -1}, {"weights": (1.0, 2.0)}, {"datasets": ()}):
        with pytest.raises(ValueError):
            DataConfig(**({"datasets": (str(path),), "batch_size": 8} | bad))
    with pytest.raises(ValueError, match="row count"):
        ShardDataset(cfg, tokenize=stub_tokenize, world_size=2, shards=[ShardInfo("unknown.tar")])


def test_stages_shuffle_number_and_captions():
    items = list(range(50))
    shuffled = list(shuffle(iter(items), 8, random.Random(1)))
    assert sorted(shuffled) == items and shuffled != items
    assert list(shuffle(iter(items), 0, None)) == items
    samples = [RawSample(f"k{i}", {}, i) for i in range(5)]
    full = list(number(iter(samples), 0, random.Random(0)))
    resumed = list(number(iter(samples), 2, random.Random(0)))
    assert [n.position for n in resumed] == [3, 4, 5] and resumed == full[2:]
    counters = Counters()
    assert caption_of({"json": json.dumps({fields.CAPTION: "from json 1"}).encode()}, counters) == "from json 1"
    assert caption_of({"txt": b"  "}, counters) is None and counters[MISSING_CAPTION] == 1


def test_augmentation_draws_leave_plain_crops_alone_and_resume_exactly():
    samples = [RawSample(f"k{i}", {}, i) for i in range(40)]
    plain = list(number(iter(samples), 0, random.Random(0)))
    assert plain == list(number(iter(samples), 0, random.Random(0), variants=1))  # no draw without augmentation
    assert all(n.variant == 0 for n in plain)
    augmented = list(number(iter(samples), 0, random.Random(0), variants=8))
    assert {n.variant for n in augmented} == set(range(8))
    assert list(number(iter(samples), 5, random.Random(0), variants=8)) == augmented[5:]


def _mirrored(images: torch.Tensor) -> list[bool]:
    """Per image of `jpeg`'s left-to-right ramps: whether it now falls from left to right."""
    steps = images[:, 0, :, 1:] - images[:, 0, :, :-1]  # (B, R, R-1)
    return [bool(s.median() < 0) for s in steps]


def test_the_loader_flips_training_images_only(many):
    path, _ = many
    flips = [m for b in loader(path, augment=("flip",), shuffle_buffer=0) for m in _mirrored(b.images)]
    assert 0.25 < sum(flips) / len(flips) < 0.75
    plain = [m for b in loader(path, shuffle_buffer=0) for m in _mirrored(b.images)]
    evaluated = [m for b in loader(path, augment=("flip",), train=False) for m in _mirrored(b.images)]
    assert not any(plain) and not any(evaluated)
    with pytest.raises(ValueError, match="unknown augmentations"):
        DataConfig((str(path),), batch_size=8, augment=("hue",))
