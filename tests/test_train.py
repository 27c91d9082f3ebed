import json
import math
import pickle
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_SPRITES, make_cfg, mnist_overrides, run_train, write_tiny_mnist
from PIL import Image
from torchvision import datasets

from vaelab.components import build
from vaelab.errors import ConfigError
from vaelab.loggers import make_loggers, wandb_offline_reason
from vaelab.train import finish_wandb, train
from vaelab.vae import VAE

PICTURES = ("samples", "reconstructions", "interpolations", "traversals")


def tiny_cifar(root: Path, monkeypatch) -> list[str]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list("0123456789")}))
    monkeypatch.setattr(datasets.cifar, "check_integrity", lambda path, md5=None: True)
    return [
        "data=cifar10",
        f"data.root={root}",
        "data.download=false",
        "data.val_size=4",
        "data.batch_size=8",
        "model/likelihood=gaussian",
    ]


def data_overrides(kind: str, tmp_path: Path, monkeypatch) -> list[str]:
    if kind == "sprites64":
        return TINY_SPRITES
    if kind == "mnist28":
        write_tiny_mnist(tmp_path / "mnist")
        return [*mnist_overrides(tmp_path / "mnist"), "data.batch_size=8"]
    return tiny_cifar(tmp_path / "cifar", monkeypatch)


def read_metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


@pytest.mark.parametrize("data", ["sprites64", "mnist28", "cifar32x3"])
@pytest.mark.parametrize(
    "model",
    [
        *("mlp_vae", "conv_vae", "ae", "linear_ae"),
        *("iaf_vae", "vamp_vae", "mog_vae", "hvae2", "vq_vae", "vq_mlp_vae"),
    ],
)
def test_every_model_on_every_data_shape(model, data, tmp_path, monkeypatch):
    cfg = make_cfg(
        tmp_path, [f"model={model}", "debug=fdr", *data_overrides(data, tmp_path, monkeypatch)]
    )
    metrics = train(cfg)
    assert not list(tmp_path.rglob("*.ckpt"))  # fast_dev_run writes no checkpoint
    for stage in ("val", "test"):
        assert math.isfinite(metrics[f"{stage}/elbo"])
        assert metrics[f"{stage}/elbo"] == pytest.approx(
            metrics[f"{stage}/reconstruction"] - metrics[f"{stage}/kl"], rel=1e-4, abs=1e-3
        )
    if model in ("ae", "linear_ae"):
        assert metrics["test/kl"] == 0
    else:
        assert metrics["test/kl"] > 0
    channels, side = {"sprites64": (1, 64), "mnist28": (1, 28), "cifar32x3": (3, 32)}[data]
    dims = channels * side * side
    assert metrics["test/bits_per_dim"] == pytest.approx(
        -metrics["test/elbo"] / (dims * math.log(2)), rel=1e-4
    )
    with Image.open(tmp_path / "images" / "samples.png") as samples:
        assert samples.size == (2 + 8 * (side + 2), 2 + 8 * (side + 2))  # 64 samples, 8 a row


def test_short_run_writes_the_run_folder_and_resumes(tmp_path):
    cfg = make_cfg(tmp_path, [*TINY_SPRITES, "debug=limit", "model.latent_dim=3"])
    metrics = train(cfg)
    saved = read_metrics(tmp_path)
    assert saved["global_step"] == 10 == metrics["global_step"]
    assert saved["test/elbo"] == pytest.approx(metrics["test/elbo"])
    assert {"val/elbo", "val/kl", "val/reconstruction", "val/bits_per_dim", "test/elbo"} <= set(
        saved
    )
    assert (tmp_path / "config.yaml").read_text().count("latent_dim: 3") == 1
    checkpoints = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and len(checkpoints) == 2
    assert Path(saved["best_checkpoint"]).name in checkpoints
    for name in PICTURES:
        for prefix in ("", "test_"):
            assert (tmp_path / "images" / f"{prefix}{name}.png").stat().st_size > 100
    with Image.open(tmp_path / "images" / "traversals.png") as traversals:
        assert traversals.size == (2 + 10 * 66, 2 + 3 * 66)  # one row per latent dimension
    # the checkpoint loads with weights_only=True and holds what resuming needs
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert (
        last["global_step"] == 10
        and last["optimizer_states"]
        and last["hyper_parameters"]["latent_dim"] == 3
    )
    resumed_dir = tmp_path / "resumed"
    resumed = make_cfg(
        resumed_dir,
        [
            *TINY_SPRITES,
            "debug=limit",
            "model.latent_dim=3",
            "trainer.max_epochs=3",
            f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}",
        ],
    )
    assert train(resumed)["global_step"] == 15  # 2 epochs done, one more of 5 batches


def test_wandb_offline_run_writes_its_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg(tmp_path, [*TINY_SPRITES, "debug=limit", "trainer.max_epochs=1", "logger=wandb"])
    train(cfg)
    finish_wandb()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logged = {
        p.name.split("_")[0] for p in (runs[0] / "files" / "media" / "images" / "images").iterdir()
    }
    assert set(PICTURES) <= logged
    # offline, W&B keeps config and history in its binary log (what `wandb sync` uploads); its
    # writer process may still be flushing when finish() returns on a loaded machine
    keys = (b"test/elbo", b"val/kl", b"train/loss", b"latent_dim", b"SpritesDataModule")
    log = next(runs[0].glob("run-*.wandb"))
    for _ in range(60):
        if all(key in log.read_bytes() for key in keys):
            break
        time.sleep(0.5)
    record = log.read_bytes()
    for key in keys:
        assert key in record


def test_wandb_goes_offline_by_itself_without_a_key(tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert "no W&B API key" in wandb_offline_reason()
    cfg = make_cfg(tmp_path, ["logger=wandb"])
    (logger,) = make_loggers(cfg.logger)
    assert logger._offline and logger._log_model is False


def test_bernoulli_on_grey_levels_is_refused(tmp_path, monkeypatch):
    overrides = tiny_cifar(tmp_path / "cifar", monkeypatch)[:-1]  # keep the Bernoulli default
    with pytest.raises(ConfigError, match="binary"):
        train(make_cfg(tmp_path, [*overrides, "debug=fdr"]))


def run_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_train(tmp_path, *overrides, cwd=tmp_path)


@pytest.mark.slow
def test_cli_run_makes_one_run_folder(tmp_path):
    result = run_cli(tmp_path, *TINY_SPRITES, "debug=limit", "trainer.max_epochs=1", "logger=csv")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = [p.parent for p in tmp_path.glob("*/*/metrics.json")]
    assert (run / ".hydra" / "config.yaml").is_file() and (
        run / "checkpoints" / "last.ckpt"
    ).is_file()
    assert (run / "csv" / "metrics.csv").is_file()
    assert "data" in result.stdout and "model" in result.stdout  # the config tree


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, message",
    [
        ("model=nope", "Could not find 'model/nope'"),
        ("model.latent_dim=0", "model.latent_dim must be a positive integer"),
        ("data=mnist", "MNIST not found"),
    ],
)
def test_cli_user_errors_are_one_line(tmp_path, override, message):
    result = run_cli(
        tmp_path, override, "data.download=false" if override == "data=mnist" else "seed=0"
    )
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    # the config is checked before it is printed: the error is not buried under it
    assert "latent_dim" not in result.stdout and "run folder" not in result.stdout


@pytest.mark.slow
def test_cli_output_is_the_summary_the_progress_bar_and_no_unactionable_lines(tmp_path):
    result = run_cli(tmp_path, *TINY_SPRITES, "debug=limit", "trainer.max_epochs=1", "logger=wandb")
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    for unactionable in ("litlogger", "LeafSpec", "anonymous", "already configured"):
        assert unactionable not in output
    (run,) = [p.parent for p in tmp_path.glob("*/*/metrics.json")]
    lines = result.stdout.splitlines()
    first_screen = "\n".join(lines[:40])
    assert f"run folder  {run}" in first_screen
    assert "latent_dim=10" in first_screen and "SpritesDataModule" in first_screen
    assert "steps_per_call=1  flush_denormal=True" in first_screen
    assert "Epoch 0/0" in first_screen  # the progress bar


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_makes_one_run_folder(tmp_path):
    result = run_cli(
        tmp_path,
        *TINY_SPRITES,
        "debug=limit",
        "trainer.max_epochs=1",
        "logger=csv",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [p.parent for p in tmp_path.glob("*/*/metrics.json")]
    assert len(runs) == 1 and len(list(tmp_path.glob("*/*"))) == 1
    metrics = read_metrics(runs[0])
    assert metrics["global_step"] == 5 and math.isfinite(metrics["test/elbo"])
    # val and test pictures, once: 4 grids and the scatter each (no manifold at latent_dim 10)
    assert len(list((runs[0] / "images").glob("*.png"))) == 10
    assert (runs[0] / "checkpoints" / "last.ckpt").is_file()


def test_scheduler_from_the_command_line(tmp_path):
    scheduler = (
        "{_target_: torch.optim.lr_scheduler.StepLR, _partial_: true, step_size: 1, gamma: 0.5}"
    )
    cfg = make_cfg(
        tmp_path,
        [*TINY_SPRITES, "debug=limit", f"model.scheduler={scheduler}", "model.optimizer.lr=0.001"],
    )
    train(cfg)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    (state,) = last["lr_schedulers"]
    # last.ckpt holds the state after both epochs (written with the best, which epoch 2 is at
    # this rate; Lightning 2.6 writes last.ckpt only with a new best): the rate was halved twice
    assert last["epoch"] == 1
    assert state["_last_lr"] == [pytest.approx(0.00025)] and state["step_size"] == 1


@pytest.mark.slow
def test_compiled_nets_match_plain_ones_and_keep_checkpoint_names():
    from vaelab.likelihoods import Bernoulli
    from vaelab.nets.mlp import MLPDecoder, MLPEncoder
    from vaelab.vae import VAE

    def make(compile: bool) -> VAE:
        torch.manual_seed(0)
        return VAE(MLPEncoder, MLPDecoder, Bernoulli(), (1, 28, 28), latent_dim=4, compile=compile)

    plain, compiled = make(False), make(True)
    assert list(plain.state_dict()) == list(compiled.state_dict())
    x = torch.rand(6, 1, 28, 28)
    torch.testing.assert_close(compiled.reconstruct(x), plain.reconstruct(x), rtol=1e-5, atol=1e-6)


def test_bf16_mixed_precision_trains(tmp_path):
    metrics = train(
        make_cfg(tmp_path, [*TINY_SPRITES, "debug=fdr", "trainer.precision=bf16-mixed"])
    )
    assert math.isfinite(metrics["test/elbo"]) and metrics["test/elbo"] < 0


def test_val_size_zero_trains_on_the_whole_training_set_and_tests_the_last_state(
    tmp_path, tiny_mnist
):
    """The papers' protocol: all 40 training images of the tiny MNIST, no validation."""
    root, arrays = tiny_mnist
    seen = []
    cfg = make_cfg(
        tmp_path,
        [
            "data=mnist",
            f"data.root={root}",
            "data.download=false",
            "data.val_size=0",
            "data.batch_size=8",
            "trainer.max_epochs=2",
            "trainer.check_val_every_n_epoch=2",  # as the presets: the checkpoint still comes
            "eval.plausibility_samples=10",
        ],
    )
    datamodule, _ = build(cfg)
    datamodule.setup()
    assert len(datamodule.datasets["train"]) == len(arrays["train-images-idx3-ubyte"]) == 40
    assert "val" not in datamodule.datasets
    original = VAE.training_step

    def counting(self, batch, batch_idx):
        seen.append(len(batch[0]))
        return original(self, batch, batch_idx)

    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patch.setattr(VAE, "training_step", counting)
        metrics = train(cfg)
    assert not [w for w in caught if "across ranks is zero" in str(w.message)]  # no val batches
    assert sum(seen) == 2 * 40 and metrics["global_step"] == 10
    assert not any(key.startswith("val/") for key in metrics)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 10
    written_by = [state for key, state in last["callbacks"].items() if "'monitor': None" in key]
    assert written_by[0]["best_model_path"].endswith("last.ckpt")  # during training, not after
    assert not list((tmp_path / "checkpoints").glob("epoch*.ckpt"))  # no best without val
    assert math.isfinite(metrics["test/elbo"]) and 0 <= metrics["test/plausible_samples"] <= 1
