"""The training tar reader: same members as tarfile, pax/GNU names, safety refusals, corruption, split reading."""

import io
import tarfile

import pytest

from clipmodel.data import tarstream
from clipmodel.data.tarstream import (
    CORRUPT_SHARD,
    DUPLICATE_KEY,
    INVALID_KEY,
    UNREADABLE_SHARD,
    UNSAFE_MEMBER,
    Counters,
    iter_headers,
    iter_samples,
    read_shard,
)


def make_tar(members: list[tuple[str, bytes]], fmt: int = tarfile.USTAR_FORMAT, extra=None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return buf.getvalue()


def samples_of(n: int, body: int = 700) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        out += [(f"s{i:03d}.jpg", bytes([i]) * (body + i)), (f"s{i:03d}.txt", f"caption {i}".encode())]
    return out


def read(data: bytes, part: int = 0, parts: int = 1, counters: Counters | None = None):
    counters = counters if counters is not None else Counters()
    return list(iter_samples(io.BytesIO(data), counters, "test.tar", part, parts)), counters


def test_members_and_groups_match_tarfile():
    data = make_tar(samples_of(5))
    got, counters = read(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert [s.key for s in got] == [f"s{i:03d}" for i in range(5)] and [s.index for s in got] == list(range(5))
    assert {f"{s.key}.{ext}": body for s in got for ext, body in s.members.items()} == expected
    assert counters.as_dict() == {}


def test_pax_and_gnu_long_names_are_applied():
    long_ext = "x" * 150
    pax = tarfile.TarInfo("placeholder")
    pax.pax_headers = {"path": "p1.txt"}
    data = make_tar([(f"g1.{long_ext}", b"gnu")], tarfile.GNU_FORMAT)
    assert [(h.name, h.size) for h in _headers(data)] == [(f"g1.{long_ext}", 3)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        pax.size = 4
        tar.addfile(pax, io.BytesIO(b"text"))
    got, _ = read(buf.getvalue())
    assert got[0].key == "p1" and got[0].members == {"txt": b"text"}


def _headers(data: bytes):
    f = io.BytesIO(data)
    out = []
    for h in iter_headers(f):
        out.append(h)
        f.seek(h.size, 1)
    return out


def test_unsafe_members_are_refused_and_counted_once():
    link = tarfile.TarInfo("s000.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    folder = tarfile.TarInfo("dir.d")
    folder.type = tarfile.DIRTYPE
    bad = [("../up.txt", b"x"), ("a/b.txt", b"x"), ("noext", b"x"), ("bad key.txt", b"x")]
    data = make_tar(bad + samples_of(2), extra=[link, folder])
    got, counters = read(data)
    assert [s.key for s in got] == ["s000", "s001"] and got[0].members["jpg"] == bytes([0]) * 700
    assert counters[UNSAFE_MEMBER] == 5 and counters[INVALID_KEY] == 1
    _, other = read(data, part=1, parts=2)  # a reader of another part does not count the shard's problems again
    assert other.as_dict() == {}


def test_oversized_members_are_refused(monkeypatch):
    monkeypatch.setattr(tarstream, "MAX_MEMBER_BYTES", 100)
    got, counters = read(make_tar(samples_of(1)))
    assert [s.members for s in got] == [{"txt": b"caption 0"}] and counters[UNSAFE_MEMBER] == 1


def test_a_key_met_again_later_is_a_counted_duplicate():
    data = make_tar([("a.txt", b"1"), ("b.txt", b"2"), ("a.jpg", b"3"), ("a.json", b"4"), ("c.txt", b"5")])
    got, counters = read(data)
    assert [(s.key, s.index) for s in got] == [("a", 0), ("b", 1), ("c", 2)] and counters[DUPLICATE_KEY] == 1


# Each sample is 2560 bytes: jpg header, 700 bytes padded to 1024, txt header, txt padded to 512.
@pytest.mark.parametrize("cut,keys", [(100, []), (512 + 300, []), (2048, ["s000"]), (5120, ["s000", "s001"])])
def test_a_truncated_shard_keeps_its_whole_members_and_is_counted(cut, keys):
    data = make_tar(samples_of(4))
    whole, _ = read(data)
    got, counters = read(data[:cut])  # 5120: cut at a member boundary, found by the missing end-of-archive blocks
    assert counters[CORRUPT_SHARD] == 1 and [s.key for s in got] == keys
    assert got[-1:] == [] or got[-1].members.items() <= whole[len(got) - 1].members.items()
    assert got[:-1] == whole[: max(len(got) - 1, 0)]


def test_a_bad_header_checksum_is_corruption():
    data = bytearray(make_tar(samples_of(3)))
    data[2 * 2560 + 10] ^= 0xFF  # inside the third sample's first header
    got, counters = read(bytes(data))
    assert counters[CORRUPT_SHARD] == 1 and [s.key for s in got] == ["s000", "s001"]


class CountingFile(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.bytes_read = 0

    def read(self, n=-1):
        out = super().read(n)
        self.bytes_read += len(out)
        return out


def test_parts_share_a_shard_exactly_and_skip_the_others_bytes():
    data = make_tar(samples_of(11, body=5000))
    whole, _ = read(data)
    got, read_bytes = [], []
    for part in range(3):
        f = CountingFile(data)
        got += list(iter_samples(f, Counters(), "t", part, 3))
        read_bytes.append(f.bytes_read)
    assert sorted(got, key=lambda s: s.index) == whole
    assert max(read_bytes) < len(data) / 2  # headers plus a third of the bodies


def test_an_unreadable_shard_is_counted(tmp_path):
    counters = Counters()
    assert list(read_shard(str(tmp_path / "missing.tar"), counters)) == [] and counters[UNREADABLE_SHARD] == 1
    assert list(read_shard("memory://nowhere/missing.tar", counters)) == [] and counters[UNREADABLE_SHARD] == 2


def test_counters_add_up_and_report_nonzero_counts():
    a, b = Counters(), Counters()
    a.add(CORRUPT_SHARD)
    b.add(CORRUPT_SHARD, 2)
    b.add(tarstream.SAMPLES, 5)
    total = Counters.total([a, b])
    assert total.as_dict() == {"samples": 5, CORRUPT_SHARD: 3} and total.errors == 3
