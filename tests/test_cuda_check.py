"""Lightning's NVML-based CUDA check is dropped where there is no GPU, and only there."""

import os

import pytest
import torch
from helpers import make_cfg

from vaelab.cuda_check import NVML_CHECK, drop_nvml_check_without_gpu
from vaelab.train import train


def nvml_probes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count torch's attempts to ask NVML for the device count (each loads libnvidia-ml)."""
    calls: list[int] = []

    def probe() -> int:
        calls.append(1)
        return -1  # what torch returns where NVML is not there

    monkeypatch.setattr(torch.cuda, "_raw_device_count_nvml", probe)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return calls


def test_dropped_without_gpu_so_cuda_checks_stop_probing_nvml(monkeypatch):
    calls = nvml_probes(monkeypatch)
    monkeypatch.setattr(torch.cuda, "_cached_device_count", None)
    monkeypatch.setattr(torch.cuda, "_initialized", False)
    monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", lambda: 0)
    monkeypatch.setenv(NVML_CHECK, "1")
    torch.cuda.is_available()
    torch.cuda.is_available()
    assert len(calls) == 2  # with the variable every check probes NVML again (Adam: every step)
    assert drop_nvml_check_without_gpu()
    assert NVML_CHECK not in os.environ
    calls.clear()
    for _ in range(3):
        assert not torch.cuda.is_available()
    assert calls == []
    assert not drop_nvml_check_without_gpu()  # nothing left to drop


def test_kept_where_cuda_has_a_device(monkeypatch):
    monkeypatch.setenv(NVML_CHECK, "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not drop_nvml_check_without_gpu()
    assert os.environ[NVML_CHECK] == "1"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the variable stays where CUDA has a GPU")
def test_train_drops_it_on_a_cpu_machine(tmp_path, monkeypatch):
    monkeypatch.setenv(NVML_CHECK, "1")
    train(make_cfg(tmp_path, ["trainer.max_steps=2", "data.size=64", "test=false"]))
    assert NVML_CHECK not in os.environ
