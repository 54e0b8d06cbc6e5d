"""pipelines/devices.py: one rule for device and dtype choice (CUDA > MPS > CPU; fp16 on a GPU, fp32 on the CPU)."""

import pytest
import torch

from pipelines.devices import available_devices, dtype_name, parse_dtype, pick_device


@pytest.fixture
def machine(monkeypatch):
    """``machine(cuda=..., mps=..., cuda_count=...)`` pretends this machine has those accelerators."""

    def pretend(cuda=False, mps=False, cuda_count=1):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_count if cuda else 0)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return pretend


@pytest.mark.parametrize(
    "cuda, mps, expected",
    [(False, False, ["cpu"]), (True, False, ["cuda", "cpu"]), (False, True, ["mps", "cpu"]),
     (True, True, ["cuda", "mps", "cpu"])],
)  # fmt: skip
def test_available_devices_best_first(machine, cuda, mps, expected):
    machine(cuda=cuda, mps=mps)
    assert available_devices() == expected


@pytest.mark.parametrize(
    "cuda, mps, device, dtype",
    [(False, False, "cpu", torch.float32), (True, False, "cuda", torch.float16), (False, True, "mps", torch.float16),
     (True, True, "cuda", torch.float16)],
)  # fmt: skip
def test_auto_choice_is_the_best_device_in_its_default_dtype(machine, cuda, mps, device, dtype):
    machine(cuda=cuda, mps=mps)
    assert pick_device() == (torch.device(device), dtype)


def test_overrides(machine):
    machine(cuda=True, mps=False, cuda_count=2)
    assert pick_device("cpu") == (torch.device("cpu"), torch.float32)
    assert pick_device("cpu", "bf16") == (torch.device("cpu"), torch.bfloat16)
    assert pick_device("cuda:1", "fp32") == (torch.device("cuda:1"), torch.float32)
    assert pick_device(None, "float16") == (torch.device("cuda"), torch.float16)


def test_unavailable_device_names_the_available_ones(machine):
    machine(cuda=False, mps=False)
    with pytest.raises(ValueError, match=r"device 'cuda' is not available on this machine; choose one of cpu\."):
        pick_device("cuda")
    machine(cuda=False, mps=True)
    with pytest.raises(ValueError, match="choose one of mps, cpu"):
        pick_device("cuda:0")
    machine(cuda=True, mps=False, cuda_count=1)
    with pytest.raises(ValueError, match=r"'cuda:1': this machine has 1 CUDA device"):
        pick_device("cuda:1")
    with pytest.raises(ValueError, match="not available on this machine; choose one of cuda, cpu"):
        pick_device("mps")


@pytest.mark.parametrize("device", ["gpu", "cuda:x", ""])
def test_bad_device_name(machine, device):
    machine(cuda=False, mps=False)
    with pytest.raises(ValueError, match=f"device {device!r} is not a device name; choose one of cpu"):
        pick_device(device)


@pytest.mark.parametrize("dtype", ["fp8", "float64", "half", "FP16"])
def test_bad_dtype(machine, dtype):
    machine(cuda=False, mps=False)
    with pytest.raises(ValueError, match=f"dtype {dtype!r} is not supported; choose one of fp32, fp16, bf16"):
        pick_device("cpu", dtype)


def test_dtype_names_round_trip():
    for name, dtype in (("fp32", torch.float32), ("float16", torch.float16), ("bf16", torch.bfloat16)):
        assert parse_dtype(name) is dtype
    names = [dtype_name(d) for d in (torch.float32, torch.float16, torch.bfloat16)]
    assert names == ["float32", "float16", "bfloat16"]
    assert parse_dtype(dtype_name(torch.bfloat16)) is torch.bfloat16
