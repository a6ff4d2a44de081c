"""Safe checkpoint loading: round trips, unwrapping, and refusal of code-carrying pickles and TorchScript."""

import pytest
import torch
from safetensors.torch import save_file

from clipmodel.checkpoint import load_state_dict_file, unwrap_state_dict
from clipmodel.factory import create_model
from clipmodel.model import build_model


class Payload:
    """Pickles into a call that writes a file: what a malicious checkpoint would do on load."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return create_model("tiny-rn").state_dict()


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_loads_strict(tmp_path, state_dict, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(state_dict, str(path))
    else:
        torch.save(state_dict, path)
    loaded = load_state_dict_file(path)
    _assert_same(loaded, state_dict)
    model = build_model(loaded, activation="gelu")
    _assert_same(model.state_dict(), state_dict)


def test_training_wrappers_are_unwrapped(tmp_path, state_dict):
    ddp = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state_dict.items()}, "optimizer": {}}
    torch.save(ddp, tmp_path / "ddp.pt")
    _assert_same(load_state_dict_file(tmp_path / "ddp.pt"), state_dict)
    compiled = {"model": {f"_orig_mod.{k}": v for k, v in state_dict.items()}}
    _assert_same(unwrap_state_dict(compiled), state_dict)


def test_not_a_state_dict(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="not a state dict"):
        load_state_dict_file(tmp_path / "c.pt")
    torch.save([torch.ones(1)], tmp_path / "l.pt")
    with pytest.raises(ValueError, match="not a state dict: a list"):
        load_state_dict_file(tmp_path / "l.pt")
    with pytest.raises(FileNotFoundError):
        load_state_dict_file(tmp_path / "missing.pt")


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, state_dict):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": dict(state_dict), "extra": Payload(marker)}, path)
    with pytest.raises(ValueError, match=r"refused, not a plain state dict \(it references exec"):
        load_state_dict_file(path)
    assert not marker.exists()
    # The control: an unrestricted load of the same file does run the payload, so the refusal above mattered.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    with pytest.raises(ValueError, match="TorchScript archive .* refused"):
        load_state_dict_file(path)
