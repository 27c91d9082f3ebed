"""Bad input ends with one clear line and leaves nothing behind; faults lose nothing."""

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import make_cfg, mnist_overrides, run_train
from omegaconf import OmegaConf

from vaelab.callbacks.faults import NonFiniteLossError
from vaelab.checkpoints import CheckpointError, check_checkpoint, resolve_checkpoint
from vaelab.errors import ConfigError
from vaelab.preflight import check_devices, check_output_dir
from vaelab.train import build, finish_wandb, run, train
from vaelab.vae import VAE

TINY = ["data.size=120", "data.batch_size=8", "data.eval_batch_size=8", "debug=limit"]


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory) -> Path:
    """last.ckpt of a tiny mlp_vae run with latent_dim=3."""
    folder = tmp_path_factory.mktemp("saved")
    train(make_cfg(folder, [*TINY, "model.latent_dim=3", "trainer.max_epochs=1"]))
    return folder / "checkpoints" / "last.ckpt"


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model=nope"], "Could not find 'model/nope'"),
        (["model.nope=1"], "Could not override 'model.nope'"),
        (["model.latent_dim=0"], "model.latent_dim must be a positive integer, got 0"),
        (["model.kl_weight=-1"], "model.kl_weight must be >= 0, got -1"),
        (["data=mnist", "data.download=false"], "MNIST not found under"),
        (
            ["trainer.devices=4096", "trainer.accelerator=cpu"],
            "trainer.devices=4096 but this machine has",
        ),
        (["trainer.accelerator=gpu"], "no GPU is visible"),
        (["ckpt_path=/nowhere/last.ckpt"], "checkpoint /nowhere/last.ckpt not found"),
        (["hydra.callbacks.check_output_dir.min_free_mb=1e15"], "MiB free on the disk of"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, overrides, message):
    if "gpu" in overrides[0] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    log_dir = tmp_path / "outputs"
    result = run_train(log_dir, *overrides)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not log_dir.exists() or not any(log_dir.iterdir())


@pytest.mark.slow
def test_unwritable_output_folder_fails_before_hydra_writes(tmp_path):
    result = run_train(Path("/dev/null/outputs"))
    assert result.returncode == 1
    assert "cannot write run outputs under /dev/null/outputs" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_corrupt_and_mismatched_checkpoints_are_refused(tmp_path, saved_checkpoint):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(saved_checkpoint.read_bytes()[:5000])
    result = run_train(tmp_path / "a", *TINY, f"ckpt_path={corrupt}")
    assert result.returncode == 1 and "cannot read checkpoint" in result.stderr
    result = run_train(tmp_path / "b", *TINY, "model.latent_dim=4", f"ckpt_path={saved_checkpoint}")
    assert result.returncode == 1
    assert "was saved by a different model" in result.stderr and "config.yaml" in result.stderr
    assert not any((tmp_path / "a").glob("*/*")) and not any((tmp_path / "b").glob("*/*"))
    assert saved_checkpoint.stat().st_size > 5000  # the good checkpoint is untouched


def test_checkpoint_checks(tmp_path, saved_checkpoint):
    _, model = build(make_cfg(tmp_path, [*TINY, "model.latent_dim=3"]))
    check_checkpoint(str(saved_checkpoint), model)
    _, other = build(make_cfg(tmp_path, [*TINY, "model.latent_dim=5"]))
    with pytest.raises(CheckpointError, match="different model"):
        check_checkpoint(str(saved_checkpoint), other)
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="cannot read"):
        check_checkpoint(str(tmp_path / "empty.ckpt"), model)


def test_resolve_checkpoint_forms(tmp_path):
    old, new = tmp_path / "r1" / "checkpoints", tmp_path / "r2" / "checkpoints"
    for folder in (old, new):
        folder.mkdir(parents=True)
        (folder / "last.ckpt").write_bytes(b"x")
    os.utime(old / "last.ckpt", (1, 1))
    assert resolve_checkpoint(None, str(tmp_path)) is None
    assert resolve_checkpoint("last", str(tmp_path)) == str(new / "last.ckpt")
    assert resolve_checkpoint(str(tmp_path / "r1"), str(tmp_path)) == str(old / "last.ckpt")
    assert resolve_checkpoint(str(old / "last.ckpt"), str(tmp_path)) == str(old / "last.ckpt")
    with pytest.raises(CheckpointError, match="no run under"):
        resolve_checkpoint("last", str(tmp_path / "empty"))


def test_preflight_checks(tmp_path):
    check_output_dir(tmp_path / "new" / "run", min_free_mb=1)
    assert not (tmp_path / "new").exists()  # the check writes nothing
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot write"):
        check_output_dir(tmp_path / "file" / "run", min_free_mb=1)
    with pytest.raises(ConfigError, match="MiB free"):
        check_output_dir(tmp_path, min_free_mb=1e15)
    check_devices(OmegaConf.create({"accelerator": "cpu", "devices": 1}))
    with pytest.raises(ConfigError, match="positive integer or -1, got 0"):
        check_devices(OmegaConf.create({"accelerator": "cpu", "devices": 0}))
    with pytest.raises(ConfigError, match="CPU cores"):
        check_devices(OmegaConf.create({"accelerator": "cpu", "devices": 10_000}))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch, capsys
):
    original = VAE.training_step

    def poisoned(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * math.nan if self.global_step >= 7 else loss

    monkeypatch.setattr(VAE, "training_step", poisoned)
    cfg = make_cfg(tmp_path, TINY)
    with pytest.raises(NonFiniteLossError, match="at step 7;") as error:
        train(cfg)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert str(last) in str(error.value)
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 5  # saved after the first epoch, never overwritten
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    with pytest.raises(SystemExit) as exit_info:
        run(make_cfg(tmp_path / "again", TINY))
    assert exit_info.value.code == 1
    assert "NaN or infinite at step 7" in capsys.readouterr().err


def test_wandb_api_key_is_never_written(tmp_path, monkeypatch):
    secret = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    train(make_cfg(tmp_path, [*TINY, "trainer.max_epochs=1", "logger=wandb"]))
    finish_wandb()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


KILL = [
    "model=conv_vae",
    "data.size=800",
    "data.batch_size=16",
    "data.eval_batch_size=80",
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
    "seed=3",
    "logger=csv",
    "trainer.log_every_n_steps=1",
    "+logger.csv.flush_logs_every_n_steps=1",
    "callbacks.latent_images.every_n_epochs=100",
]
STEPS_PER_EPOCH = 720 // 16


def run_folder(log_dir: Path) -> Path:
    (metrics,) = log_dir.glob("*/*/metrics.json")
    return metrics.parent


def logged_steps(log_dir: Path) -> int:
    """How many training steps the run's CSV log shows so far."""
    files = list(log_dir.glob("*/*/csv/metrics.csv"))
    return max(len(files[0].read_text().splitlines()) - 1, 0) if files else 0


def kill_mid_epoch(
    log_dir: Path, signum: int, overrides: list[str] = KILL, steps_per_epoch: int = STEPS_PER_EPOCH
) -> tuple[Path, str]:
    """Start a run, signal it a few steps into its second epoch; its last.ckpt and stderr."""
    process = run_train(log_dir, *overrides, wait=False)
    deadline = time.time() + 240
    while logged_steps(log_dir) < steps_per_epoch + 5:
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.02)
    process.send_signal(signum)
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()  # a hung DDP rank 0; rank 1 then fails on the closed connection
        raise
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    (last,) = log_dir.glob("*/*/checkpoints/last.ckpt")
    assert f"resume with ckpt_path={last}" in stderr
    step = torch.load(last, weights_only=True)["global_step"]
    assert steps_per_epoch < step < 2 * steps_per_epoch, f"not mid-epoch: step {step}"
    return last, stderr


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_after_the_step(tmp_path):
    last, stderr = kill_mid_epoch(tmp_path, signal.SIGINT)
    assert "Ctrl-C: saving a checkpoint" in stderr or last.stat().st_size > 0


@pytest.mark.slow
def test_kill_mid_epoch_and_resume_gives_the_same_run(tmp_path):
    """A deterministic CPU run stopped mid-epoch by SIGTERM and resumed ends as if never stopped
    (with data workers: test_resume_from_the_end_of_an_epoch_gives_the_same_run)."""
    killed, _ = kill_mid_epoch(tmp_path / "killed", signal.SIGTERM)
    resumed = run_train(tmp_path / "resumed", *KILL, f"ckpt_path={killed.parent.parent}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = run_train(tmp_path / "whole", *KILL)
    assert whole.returncode == 0, whole.stderr[-3000:]
    resumed_metrics = json.loads((run_folder(tmp_path / "resumed") / "metrics.json").read_text())
    whole_metrics = json.loads((run_folder(tmp_path / "whole") / "metrics.json").read_text())
    assert resumed_metrics["global_step"] == whole_metrics["global_step"] == 2 * STEPS_PER_EPOCH
    for key in ("val/elbo", "val/kl", "test/elbo", "test/reconstruction"):
        assert resumed_metrics[key] == pytest.approx(whole_metrics[key], rel=1e-6), key


# the default mlp_vae (a fresh eps per example and step) on 2 CPU processes, 22 steps an epoch
DDP_KILL = [
    "data.size=200",
    "data.batch_size=4",
    "data.eval_batch_size=20",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.strategy=ddp",
    "trainer.deterministic=true",
    "seed=3",
    "logger=csv",
    "trainer.log_every_n_steps=1",
    "+logger.csv.flush_logs_every_n_steps=1",
    "~callbacks.latent_images",
]


@pytest.mark.slow
def test_ddp_kill_mid_epoch_and_resume_gives_the_same_run(tmp_path):
    """Every rank gets its own generators back: the same weights and metrics, bit for bit."""
    killed, _ = kill_mid_epoch(tmp_path / "killed", signal.SIGTERM, DDP_KILL, 180 // (2 * 4))
    resumed = run_train(tmp_path / "resumed", *DDP_KILL, f"ckpt_path={killed.parent.parent}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = run_train(tmp_path / "whole", *DDP_KILL)
    assert whole.returncode == 0, whole.stderr[-3000:]
    runs = [run_folder(tmp_path / name) for name in ("resumed", "whole")]
    resumed_weights, whole_weights = (
        torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for run in runs
    )
    assert resumed_weights.keys() == whole_weights.keys()
    for name, tensor in whole_weights.items():
        assert torch.equal(resumed_weights[name], tensor), name
    resumed_metrics, whole_metrics = (
        json.loads((run / "metrics.json").read_text()) for run in runs
    )
    del resumed_metrics["best_checkpoint"], whole_metrics["best_checkpoint"]
    assert resumed_metrics == whole_metrics


@pytest.mark.parametrize("model, workers", [("mlp_vae", 0), ("vq_vae", 0), ("mlp_vae", 2)])
def test_resume_from_the_end_of_an_epoch_gives_the_same_run(model, workers, tmp_path):
    """2 epochs, then 1 more from the last.ckpt validation wrote, equals 3 epochs in one go.

    The resumed run makes its first data iterator before its generators are restored: the
    iterator must not draw from the global stream (it did, so the runs parted at the first step).
    Worker processes fetch ahead as that iterator is made, before Lightning sets the sampler's
    epoch: the sampler must start at the resumed epoch (it drew epoch 0's order).
    """
    overrides = [*TINY, f"model={model}", "trainer.deterministic=true", "~callbacks.latent_images"]
    overrides.append(f"data.num_workers={workers}")
    train(make_cfg(tmp_path / "first", overrides))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    train(make_cfg(tmp_path / "resumed", [*overrides, "trainer.max_epochs=3", f"ckpt_path={last}"]))
    train(make_cfg(tmp_path / "whole", [*overrides, "trainer.max_epochs=3"]))
    resumed, whole = (
        torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)
        for run in ("resumed", "whole")
    )
    assert resumed["global_step"] == whole["global_step"] == 15
    for name, tensor in whole["state_dict"].items():  # weights, and VQ's codebook buffers
        assert torch.equal(resumed["state_dict"][name], tensor), name


def test_last_checkpoint_is_the_last_state_when_validation_does_not_improve(tmp_path):
    """Lightning 2.6's save_last=True rewrote last.ckpt only on a new best. Choosing the best by
    the lowest ELBO makes the first epoch the best, so later epochs improve nothing."""
    cfg = make_cfg(
        tmp_path,
        [*TINY, "trainer.max_epochs=3", "callbacks.model_checkpoint.mode=min"],
    )
    train(cfg)
    folder = tmp_path / "checkpoints"
    (best,) = folder.glob("epoch*.ckpt")
    assert torch.load(best, weights_only=True)["epoch"] == 0
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 3 * 5)  # debug=limit: 5 batches an epoch


def test_a_run_that_ends_between_checkpoints_saves_its_last_step(tmp_path, tiny_mnist):
    """last.ckpt comes every 2 epochs (10 steps of the 40 images); a run stopped at step 13
    (trainer.max_steps here, trainer.max_time in the presets) still leaves step 13 in it."""
    root, _ = tiny_mnist
    overrides = [
        *mnist_overrides(root, val_size=0),
        "data.batch_size=8",
        "trainer.max_epochs=100",
        "trainer.check_val_every_n_epoch=2",
        "trainer.max_steps=13",
        "test=false",
    ]
    metrics = train(make_cfg(tmp_path, overrides))
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == metrics["global_step"] == 13
