"""Training checkpoints: atomic writes, plain-data round trip with RNG states, refusal of pickled objects, pruning."""

import random
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from clipmodel.train import checkpointing as ckpt


def _state(step: int = 3) -> dict:
    return {
        "format": ckpt.FORMAT,
        "step": step,
        "model": OrderedDict(w=torch.arange(6.0).view(2, 3)),
        "rng": [ckpt.rng_state()],
        "config": {"model": "tiny", "data": [{"path": "/d", "weight": None}], "templates": ["a photo of a {}."]},
        "loader": [{"epoch": 1, "positions": [4, 8]}],
    }


def test_round_trip_keeps_tensors_and_primitives(tmp_path: Path) -> None:
    state = _state()
    path = ckpt.save_atomic(state, ckpt.checkpoint_path(tmp_path, 3))
    assert path == tmp_path / "checkpoints" / "step-00000003.pt"
    back = ckpt.load_checkpoint(path)
    assert back["step"] == 3 and back["config"] == state["config"] and back["loader"] == state["loader"]
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_rng_states_restore_every_generator(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ckpt.save_atomic({"format": ckpt.FORMAT, "rng": ckpt.rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(2), np.random.randn())  # randn: numpy's cached gauss
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_state(ckpt.load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2), np.random.randn())
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
    assert got[3] == expected[3]


class Payload:
    """Any class: a pickle naming it could name anything, so loading must refuse it."""

    def __init__(self) -> None:
        self.x = 1


def test_a_checkpoint_holding_a_custom_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "step": 1, "extra": Payload()}, path)  # written behind our writer's back
    with pytest.raises(ValueError, match="refused.*Payload"):
        ckpt.load_checkpoint(path)


def test_writer_refuses_what_could_not_be_loaded_back(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"\['extra'\].*Payload"):
        ckpt.save_atomic({"format": ckpt.FORMAT, "extra": Payload()}, tmp_path / "c.pt")
    with pytest.raises(TypeError, match="TorchVersion"):
        ckpt.save_atomic({"format": ckpt.FORMAT, "torch": torch.__version__}, tmp_path / "c.pt")  # a str subclass
    assert not list(tmp_path.iterdir())


def test_other_files_are_not_training_checkpoints(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(1)}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="not a wit training checkpoint"):
        ckpt.load_checkpoint(tmp_path / "weights.pt")
    (tmp_path / "torn.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="unreadable"):
        ckpt.load_checkpoint(tmp_path / "torn.pt")


def test_latest_ignores_temp_files_and_prune_keeps_the_newest(tmp_path: Path) -> None:
    for step in (2, 4, 6, 8):
        ckpt.save_atomic(_state(step), ckpt.checkpoint_path(tmp_path, step))
    stale = tmp_path / "checkpoints" / ".step-00000010.pt.tmp-999999"  # a writer killed mid-write
    stale.write_bytes(b"half")
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.checkpoint_path(tmp_path, 8)
    gone = ckpt.prune(tmp_path, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [6, 8]
    assert stale in gone and not stale.exists()


def test_no_run_means_no_checkpoint(tmp_path: Path) -> None:
    assert ckpt.latest_checkpoint(tmp_path / "nowhere") is None


def test_manifest_digest_is_the_file_sha256(tmp_path: Path) -> None:
    import hashlib

    (tmp_path / "manifest.json").write_text('{"a": 1}\n')
    assert ckpt.file_sha256(str(tmp_path / "manifest.json")) == hashlib.sha256(b'{"a": 1}\n').hexdigest()
    assert ckpt.file_sha256(str(tmp_path / "missing.json")) is None
