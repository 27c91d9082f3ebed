"""A job that SLURM requeues resumes by itself, in its first run folder and W&B run."""

import json
import os
import shutil

import pytest
import torch
from helpers import run_train

TINY = [
    "data=sprites",
    "data.size=120",
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "debug=limit",
    "logger=wandb",
    "trainer.accelerator=cpu",
]
# what sbatch sets for a one-task job (Lightning's SLURMEnvironment detects SLURM from these)
SLURM = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "train",
    "SLURM_NTASKS": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "localhost",
}


@pytest.mark.slow
def test_requeued_job_resumes_in_its_run_folder_and_wandb_run(tmp_path, monkeypatch):
    for name, value in SLURM.items():
        monkeypatch.setenv(name, value)
    first = run_train(tmp_path, *TINY, "trainer.max_epochs=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = [p.parent for p in tmp_path.glob("*/*/metrics.json")]
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 5
    # pre-emption: Lightning's SLURM plugin saves hpc_ckpt_N.ckpt in the run folder on SIGUSR1
    # and requeues the job (its handler is Lightning's own; here the file is put there by hand)
    shutil.copy(run / "checkpoints" / "last.ckpt", run / "hpc_ckpt_1.ckpt")

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    second = run_train(tmp_path, *TINY, "trainer.max_epochs=2", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert [p.parent for p in tmp_path.glob("*/*/metrics.json")] == [run]  # the same folder
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 10  # one more epoch of 5 steps after the first
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 10 and last["epoch"] == 1
    wandb_runs = {p.name.rsplit("-", 1)[-1] for p in (run / "wandb").glob("offline-run-*")}
    assert len(wandb_runs) == 1  # both starts logged to one W&B run id
    record = json.loads((tmp_path / "slurm" / "4242.json").read_text())
    assert record["run_folder"] == str(run) and record["wandb_id"] in wandb_runs


@pytest.mark.slow
def test_a_new_slurm_job_starts_its_own_run(tmp_path, monkeypatch):
    for name, value in SLURM.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    for job in ("1", "2"):
        monkeypatch.setenv("SLURM_JOB_ID", job)
        result = run_train(tmp_path, *TINY, "trainer.max_epochs=1", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(tmp_path.glob("*/*/metrics.json"))) == 2
    assert sorted(os.listdir(tmp_path / "slurm")) == ["1.json", "2.json"]
