"""DDP through Lightning: 2 CPU processes give the numbers of 1, sweeps of DDP jobs, multi-node."""

import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from helpers import ROOT, make_cfg, run_python
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only

from vaelab.callbacks.faults import RandomState
from vaelab.train import build

# a deterministic model (no noise stream to differ between ranks), one optimizer step
TINY_AE = [
    "model=ae",
    "data=sprites",
    "data.size=200",
    "data.eval_batch_size=10",
    "trainer.max_steps=1",
    "trainer.accelerator=cpu",
    "~callbacks.latent_images",
]
TWO_PROCESSES = ["trainer.devices=2", "trainer.strategy=ddp"]


def train_cli(log_dir: Path, *args: str) -> None:
    """`python train.py *args` (`-m` first for a sweep), outputs under log_dir."""
    result = run_python(
        ROOT / "train.py", *args, f"paths.log_dir={log_dir}", "logger=csv", cwd=log_dir
    )
    assert result.returncode == 0, result.stderr[-3000:]


def weights(run: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 1
    return checkpoint["state_dict"]


@pytest.mark.slow
def test_one_step_on_two_processes_equals_one_process_with_their_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    train_cli(tmp_path, *TINY_AE, "data.batch_size=16", f"hydra.run.dir={one}")
    train_cli(tmp_path, *TINY_AE, *TWO_PROCESSES, "data.batch_size=8", f"hydra.run.dir={two}")
    assert (two / "train_ddp_process_1.log").is_file()  # rank 1 ran

    cfg = make_cfg(tmp_path, [*TINY_AE, "data.batch_size=16"])
    L.seed_everything(cfg.seed)  # as train.py does before building the model
    initial = build(cfg)[1].state_dict()
    one_step, two_steps = weights(one), weights(two)
    assert one_step.keys() == two_steps.keys() == initial.keys()
    # Adam's first step moves every parameter with a gradient by lr * g / (|g| + eps) ~ lr = 1e-3
    moved = max((one_step[k] - initial[k]).abs().max() for k in initial)
    assert moved == pytest.approx(1e-3, rel=1e-3)
    # float rounding of the gradient all-reduce, well below the step; a wrong shard flips the
    # sign of some steps (2e-3). Where |g| is near Adam's eps = 1e-8 the step lr g / (|g| + eps)
    # magnifies the rounding: 1.5e-6 on one of 131,072 weights on 2026-11-30's machine
    for name in initial:
        torch.testing.assert_close(two_steps[name], one_step[name], rtol=0, atol=1e-5)

    one_metrics = json.loads((one / "metrics.json").read_text())
    two_metrics = json.loads((two / "metrics.json").read_text())
    evaluated = [k for k in one_metrics if k.startswith(("val/", "test/", "train/"))]
    # train/*: averaged over the ranks' shards; the regularity check's 4 test/* from every rank
    assert len(evaluated) == 8 + 6 + 4
    for key in evaluated:
        assert two_metrics[key] == pytest.approx(one_metrics[key], rel=1e-6, abs=1e-6)


@pytest.mark.slow
def test_a_sweep_of_ddp_jobs_makes_one_folder_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [*TINY_AE, *TWO_PROCESSES, "data.batch_size=8", "model.latent_dim=2,3"]
    train_cli(tmp_path, "-m", *overrides, f"hydra.sweep.dir={sweep}")
    assert [p.name for p in tmp_path.iterdir()] == ["sweep"]
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    for job, latent_dim in (("0", 2), ("1", 3)):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["status"] == "ok" and metrics["global_step"] == 1
        assert weights(sweep / job)["encoder.head.2.weight"].shape == (latent_dim, 256)
        assert (sweep / job / "train_ddp_process_1.log").is_file()  # rank 1 ran this job


def test_multinode_preset_slurm_launcher_and_trainer_agree(tmp_path, monkeypatch):
    overrides = ["trainer=ddp_multinode", "trainer.devices=4", "trainer.num_nodes=3"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            [*overrides, "hydra/launcher=slurm", f"paths.output_dir={tmp_path}"],
            return_hydra_config=True,
        )
    launcher, trainer_cfg = cfg.hydra.launcher, cfg.trainer
    assert (trainer_cfg.accelerator, trainer_cfg.strategy) == ("gpu", "ddp")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 3)
    # what srun sets for the 6th of the 4 x 3 tasks that allocation starts (node 1, local rank 1)
    slurm = {
        "SLURM_NTASKS": str(launcher.tasks_per_node * launcher.nodes),
        "SLURM_NTASKS_PER_NODE": str(launcher.tasks_per_node),
        "SLURM_NNODES": str(launcher.nodes),
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_JOB_NAME": "train",
        "SLURM_NODELIST": "node[0-2]",
    }
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    # building a Trainer sets the process-wide rank of rank_zero_only: put it back afterwards,
    # or every later test in this process would skip its rank-zero work
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)
    trainer = instantiate(trainer_cfg, accelerator="cpu")  # no GPU on the test machine
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment)
    environment.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)
    assert (trainer.num_devices, trainer.num_nodes) == (4, 3)
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank) == (12, 5, 1)


def test_each_ddp_rank_draws_its_own_noise_stream():
    """Ranks start from one seed (the same model); at train start each gets its own stream."""
    callback = RandomState()

    def draws(rank: int, world_size: int) -> torch.Tensor:
        torch.manual_seed(0)
        trainer = SimpleNamespace(global_rank=rank, world_size=world_size)
        callback.on_train_start(trainer, None)
        return torch.rand(5)

    single = draws(0, 1)
    torch.manual_seed(0)
    assert torch.equal(single, torch.rand(5))  # one process: its stream is left alone
    rank0, rank1 = draws(0, 2), draws(1, 2)
    assert not torch.equal(rank0, rank1)
    assert not torch.equal(rank0, single)
    assert torch.equal(rank1, draws(1, 2))  # and each rank's stream is reproducible


FAMILY = ("iaf_vae", "vamp_vae", "mog_vae", "hvae2", "vq_vae")


@pytest.mark.slow
def test_every_family_member_trains_and_tests_on_two_processes(tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [
        f"model={','.join(FAMILY)}",
        "data=sprites",
        "data.size=200",
        "data.batch_size=8",
        "data.eval_batch_size=10",
        "trainer.max_steps=3",
        "trainer.accelerator=cpu",
        *TWO_PROCESSES,
    ]
    train_cli(tmp_path, "-m", *overrides, f"hydra.sweep.dir={sweep}")
    for job, model in enumerate(FAMILY):
        metrics = json.loads((sweep / str(job) / "metrics.json").read_text())
        assert metrics["status"] == "ok" and metrics["global_step"] == 3, model
        assert metrics["test/elbo"] == pytest.approx(
            metrics["test/reconstruction"] - metrics["test/kl"], rel=1e-5
        )
        assert (sweep / str(job) / "images" / "test_samples.png").is_file()
