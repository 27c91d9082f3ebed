"""flush_denormal: subnormal floats (below 1.2e-38 in float32) read and written as zero on a CPU."""

import json
import os

import pytest
import torch
from helpers import TINY_SPRITES, half_of_smallest_normal, make_cfg, run_train

from vaelab.train import train

SMALLEST_NORMAL = torch.finfo(torch.float32).tiny
PROBE = '''
import json, torch
from lightning.pytorch import Callback

class Probe(Callback):
    """Writes how many halves of the smallest normal float survive, over 2**20 elements: an
    op large enough that torch splits it over all its threads."""

    def __init__(self, path):
        self.path = path

    def on_train_start(self, trainer, module):
        halves = torch.full((1 << 20,), torch.finfo(torch.float32).tiny) * 0.5
        with open(self.path, "w") as file:
            json.dump({"threads": torch.get_num_threads(), "kept": int((halves != 0).sum())}, file)
'''


@pytest.mark.parametrize("flush", [True, False])
def test_train_sets_the_flush_as_configured(flush, tmp_path):
    torch.set_flush_denormal(not flush)  # (conftest puts torch's default back after the test)
    train(make_cfg(tmp_path, ["debug=fdr", *TINY_SPRITES, f"flush_denormal={flush}"]))
    assert half_of_smallest_normal() == (0.0 if flush else SMALLEST_NORMAL / 2)


def test_every_thread_of_train_py_flushes(tmp_path, monkeypatch):
    """train.py sets the flush before torch starts its worker threads, which copy it: none of
    the 2**20 halves, which every thread computes a share of, survives (it fails if anything
    in the start-up, e.g. rendering the sprites, ran a parallel op first)."""
    (tmp_path / "vaelab_thread_probe.py").write_text(PROBE)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    path = tmp_path / "probe.json"
    result = run_train(
        tmp_path / "logs",
        "debug=fdr",
        *TINY_SPRITES,
        "logger=csv",
        "+callbacks.probe._target_=vaelab_thread_probe.Probe",
        f"+callbacks.probe.path={path}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(path.read_text()) == {"threads": 2, "kept": 0}
