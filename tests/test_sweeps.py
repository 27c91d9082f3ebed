import json
import math
import subprocess
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import ROOT, run_python, run_train
from hydra import compose, initialize_config_dir

from vaelab.compare import local_runs

TINY = [
    "data=sprites",
    "data.size=120",
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "debug=limit",
    "trainer.max_epochs=1",
    "logger=csv",
]


def run(tmp_path: Path, *args: str, module: str | None = None) -> subprocess.CompletedProcess:
    """train.py (or `python -m module`) in a subprocess, outputs under tmp_path."""
    if module:
        return run_python("-m", module, *args, cwd=tmp_path)
    return run_train(tmp_path, *args, cwd=tmp_path)


def job_metrics(sweep: Path) -> dict[str, dict]:
    return {
        job.name: json.loads((job / "metrics.json").read_text())
        for job in sweep.iterdir()
        if job.is_dir()
    }


def table_rows(stdout: str) -> list[list[str]]:
    """The body rows of a rich table, one list of cells per row."""
    return [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in stdout.splitlines()
        if line.startswith("│")
    ]


@pytest.mark.slow
def test_multirun_with_a_failing_job_then_compare(tmp_path):
    # fractions that sum to 1 are a user error: exactly one job of the 2 x 2 grid fails
    sweep = tmp_path / "sweep"
    result = run(
        tmp_path,
        "-m",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        "data.val_fraction=0.2,0.5",
        "data.test_fraction=0.2,0.5",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = job_metrics(sweep)
    assert sorted(saved) == ["0", "1", "2", "3"]
    assert [saved[job]["status"] for job in "0123"] == ["ok", "ok", "ok", "failed"]
    assert "sum < 1" in saved["3"]["error"]
    assert all(math.isfinite(saved[job]["val/elbo"]) for job in "012")

    compare = run(tmp_path, str(sweep), "--metrics", "val/elbo", module="vaelab.compare")
    assert compare.returncode == 0, compare.stderr[-3000:]
    rows = table_rows(compare.stdout)
    assert [row[:3] for row in rows] == [
        ["sweep/0", "0.2", "0.2"],
        ["sweep/1", "0.2", "0.5"],
        ["sweep/2", "0.5", "0.2"],
        ["sweep/3", "0.5", "0.5"],
    ]
    assert [row[3] for row in rows[:3]] == [f"{saved[job]['val/elbo']:.2f}" for job in "012"]
    assert rows[3][3:5] == ["", "failed"] and "sum < 1" in rows[3][5]


@pytest.mark.slow
def test_optuna_preset_goes_on_after_a_failed_trial(tmp_path):
    # with seed=0 TPE's random start draws latent_dim 3, then 0 (a user error)
    sweep, storage = tmp_path / "sweep", f"sqlite:///{tmp_path / 'optuna.db'}"
    result = run(
        tmp_path,
        "hparams_search=optuna",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.storage={storage}",
        "model.optimizer.lr=0.001",
        "model.latent_dim=choice(0,3)",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {run.params["model.latent_dim"]: run for run in local_runs([sweep])}
    assert sorted(runs) == ["0", "3"]
    assert runs["0"].status == "failed" and "latent_dim" in runs["0"].error
    assert runs["3"].status == "ok"
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_params"] == {"model.latent_dim": 3}
    assert best["best_value"] == pytest.approx(runs["3"].metrics["val/elbo"])  # maximised
    study = optuna.load_study(study_name="vaelab", storage=storage)
    states = sorted(trial.state.name for trial in study.trials)
    assert states == ["COMPLETE", "FAIL"] and study.direction.name == "MAXIMIZE"


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel(tmp_path):
    sweep = tmp_path / "sweep"
    result = run(
        tmp_path,
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        "model.kl_weight=1,4",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    runs = local_runs([sweep])
    assert [(run.params["model.kl_weight"], run.status) for run in runs] == [
        ("1", "ok"),
        ("4", "ok"),
    ]
    assert all(math.isfinite(run.metrics["test/elbo"]) for run in runs)


@pytest.mark.slow
def test_slurm_launcher_composes(tmp_path):
    result = run(
        tmp_path,
        "--cfg",
        "hydra",
        "--package",
        "hydra.launcher",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.timeout_min=90",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    launcher = yaml.safe_load(result.stdout)  # the hydra.launcher node
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["partition"], launcher["timeout_min"]) == ("gpu", 90)
    assert launcher["gpus_per_node"] == "${trainer.devices}"


def test_presets_resolve_against_the_run_config():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        slurm = compose(
            "train",
            ["hydra/launcher=slurm", "trainer.devices=4", "trainer.num_nodes=2"],
            return_hydra_config=True,
        ).hydra.launcher
        optuna_cfg = compose("train", ["hparams_search=optuna", "seed=7"], return_hydra_config=True)
    assert (slurm.gpus_per_node, slurm.tasks_per_node, slurm.nodes) == (4, 4, 2)
    sweeper = optuna_cfg.hydra.sweeper
    assert sweeper.direction == "maximize" and optuna_cfg.optimized_metric == "val/elbo"
    assert sweeper.sampler.seed == 7 and sweeper.sampler._target_.endswith("TPESampler")
    assert sweeper.params["model.latent_dim"] == "choice(2, 4, 8, 16, 32)"
