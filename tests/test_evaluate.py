import importlib.util
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import (
    ROOT,
    TINY_SPRITES,
    half_of_smallest_normal,
    make_cfg,
    run_python,
    write_tiny_mnist,
)
from hydra import compose, initialize_config_dir
from lightning.pytorch.loggers import CSVLogger
from linear_gaussian import exact_elbo, exact_log_likelihood, linear_gaussian_vae, sample_data
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from vaelab.errors import ConfigError
from vaelab.evaluate import evaluate, evaluate_after_test, load_model, main, run_config
from vaelab.likelihoods import Gaussian
from vaelab.pca import PCA
from vaelab.train import build, train

SPEC = importlib.util.spec_from_file_location("evaluate_script", ROOT / "evaluate.py")
SCRIPT = importlib.util.module_from_spec(SPEC)  # the top-level evaluate.py
SPEC.loader.exec_module(SCRIPT)


def eval_cfg(output_dir: Path, overrides: list[str]):
    """The config evaluate.py composes for this command line."""
    args = SCRIPT.hydra_overrides([f"paths.output_dir={output_dir}", *overrides])
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("evaluate", overrides=args)


def test_evaluate_matches_the_closed_form_of_a_linear_gaussian_model():
    model = linear_gaussian_vae()
    x = sample_data(model, 300)
    loader = DataLoader(TensorDataset(x, torch.zeros(300)), batch_size=64)
    results = evaluate(model, loader, num_importance_samples=1000, chunk_size=128, seed=1)
    exact = exact_elbo(model, x)
    assert results["nll"] == pytest.approx(-float(exact_log_likelihood(model, x).mean()), abs=0.01)
    assert results["elbo"] == pytest.approx(float(exact["elbo"].mean()), abs=0.05)
    assert results["kl"] == pytest.approx(float(exact["kl"].mean()), rel=1e-9)
    assert results["elbo"] < -results["nll"]
    assert results["nll_bits_per_dim"] == pytest.approx(results["nll"] / (4 * math.log(2)))
    assert results["bits_per_dim"] == pytest.approx(-results["elbo"] / (4 * math.log(2)))
    assert results["kl_dim_00"] + results["kl_dim_01"] == pytest.approx(results["kl"])
    assert results["active_units"] == 2 and results["num_examples"] == 300
    assert results["num_importance_samples"] == 1000
    again = evaluate(model, loader, num_importance_samples=1000, chunk_size=7, seed=1)
    assert again["nll"] == pytest.approx(results["nll"], abs=1e-9)  # chunk size: no effect


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> Path:
    """The last checkpoint of a tiny sprites run (its folder holds config.yaml)."""
    run = tmp_path_factory.mktemp("run")
    train(make_cfg(run, [*TINY_SPRITES, "debug=limit", "model.latent_dim=3"]))
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory) -> tuple[Path, Path]:
    """The last checkpoint of a tiny MNIST run, and the folder its data moved to after training."""
    tmp = tmp_path_factory.mktemp("mnist")
    write_tiny_mnist(tmp / "data")
    mnist = ["data=mnist", f"data.root={tmp / 'data'}", "data.download=false", "data.val_size=10"]
    settings = [*mnist, "data.batch_size=8", "debug=limit", "model.latent_dim=3"]
    train(make_cfg(tmp / "run", settings))
    (tmp / "data").rename(tmp / "moved")
    return tmp / "run" / "checkpoints" / "last.ckpt", tmp / "moved"


@pytest.mark.parametrize("flush", [True, False])
def test_evaluate_py_sets_the_flush_as_configured(flush, trained_checkpoint, tmp_path):
    torch.set_flush_denormal(not flush)  # (conftest puts torch's default back after the test)
    options = ["eval.num_importance_samples=2", "eval.plausibility_samples=0"]
    main(
        eval_cfg(tmp_path, [f"ckpt_path={trained_checkpoint}", *options, f"flush_denormal={flush}"])
    )
    smallest = torch.finfo(torch.float32).tiny
    assert half_of_smallest_normal() == (0.0 if flush else smallest / 2)


def test_evaluate_py_rebuilds_the_run_and_writes_metrics(trained_checkpoint, tmp_path, capsys):
    ckpt = trained_checkpoint
    out = tmp_path / "eval"
    cfg = eval_cfg(
        out, [f"ckpt_path={ckpt}", "eval.num_importance_samples=20", "eval.chunk_size=7"]
    )
    results = main(cfg)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["ckpt_path"] == str(ckpt) and saved["split"] == "test"
    assert saved["nll"] == pytest.approx(results["nll"])
    assert saved["num_examples"] == 6  # 5% of 120 sprites
    assert -saved["nll"] >= saved["elbo"] - 1.0  # L_20 beats the ELBO up to noise
    assert saved["elbo"] == pytest.approx(saved["reconstruction"] - saved["kl"])
    assert sum(saved[f"kl_dim_{d:02d}"] for d in range(3)) == pytest.approx(saved["kl"])
    assert 0 <= saved["active_units"] <= 3
    printed = capsys.readouterr().out
    assert "nll_bits_per_dim" in printed and "active_units" in printed
    # the same weights the run saved, in a model built from the run's config.yaml
    _, model = load_model(cfg)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    torch.testing.assert_close(
        model.state_dict()["decoder.net.0.weight"], state["decoder.net.0.weight"]
    )


def test_run_config_takes_key_overrides_and_refuses_group_overrides(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    run = make_cfg(tmp_path, ["model.latent_dim=7"])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(run, resolve=True))
    overrides = [f"ckpt_path={ckpt}", "data.eval_batch_size=3", "eval.chunk_size=5"]
    merged = run_config(eval_cfg(tmp_path / "eval", overrides), ckpt)
    assert merged.data.eval_batch_size == 3 and merged.model.latent_dim == 7
    assert build(merged)[1].latent_dim == 7
    with pytest.raises(ConfigError, match="override single keys"):
        run_config(eval_cfg(tmp_path / "eval", [f"ckpt_path={ckpt}", "model=conv_vae"]), ckpt)


def test_checkpoint_without_run_folder_takes_the_named_groups(tmp_path):
    ckpt = tmp_path / "bare.ckpt"
    groups = [f"ckpt_path={ckpt}", "model=mlp_vae", "data=mnist"]
    merged = run_config(eval_cfg(tmp_path, [*groups, "data.root=/x", "model.latent_dim=4"]), ckpt)
    assert merged.data.root == "/x" and merged.model.latent_dim == 4
    with pytest.raises(ConfigError, match="data.nonexistent: no such key in the data and model"):
        run_config(eval_cfg(tmp_path, [*groups, "data.nonexistent=1"]), ckpt)
    with pytest.raises(ConfigError, match="name the checkpoint's groups, model=... data=..."):
        run_config(eval_cfg(tmp_path, [f"ckpt_path={ckpt}", "data=mnist"]), ckpt)


def test_plain_data_override_finds_the_moved_data(mnist_run, tmp_path, capsys):
    ckpt, moved = mnist_run
    overrides = [f"ckpt_path={ckpt}", "eval.num_importance_samples=5"]
    with pytest.raises(SystemExit):  # the run's config.yaml names the folder the data left
        main(eval_cfg(tmp_path / "before", overrides))
    assert capsys.readouterr().err.startswith("error: MNIST not found under")
    results = main(eval_cfg(tmp_path / "after", [*overrides, f"data.root={moved}"]))
    assert results["num_examples"] == 20  # the tiny MNIST test set
    assert json.loads((tmp_path / "after" / "metrics.json").read_text())["nll"] == results["nll"]


@pytest.mark.parametrize(
    "overrides, message",
    [(["ckpt_path=nope.ckpt"], "checkpoint nope.ckpt not found"), ([], "give the checkpoint")],
)
def test_missing_checkpoint_is_one_line(tmp_path, capsys, overrides, message):
    with pytest.raises(SystemExit) as exit_info:
        main(eval_cfg(tmp_path, overrides))
    assert exit_info.value.code == 1
    printed = capsys.readouterr().err
    assert printed.startswith(f"error: {message}") and printed.count("\n") == 1


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.latent_dim=5", "saved by a different model"),  # typed as YAML: an int
        ("model.encoder.hidden_dims=[32]", "saved by a different model"),  # and a list
        ("data.nonexistent=1", "data.nonexistent: no such key in "),
        ("model.optimizer.lrr=1", "model.optimizer.lrr: no such key in "),
    ],
)
def test_bad_run_overrides_are_one_line(mnist_run, tmp_path, capsys, override, message):
    ckpt, moved = mnist_run
    with pytest.raises(SystemExit) as exit_info:
        main(eval_cfg(tmp_path, [f"ckpt_path={ckpt}", f"data.root={moved}", override]))
    assert exit_info.value.code == 1
    printed = capsys.readouterr().err
    assert printed.startswith("error: ") and message in printed and printed.count("\n") == 1


def test_images_of_a_checkpoint_without_training(mnist_run, tmp_path):
    ckpt, moved = mnist_run
    out = tmp_path / "eval"
    images = ["eval.images=true", "eval.num_importance_samples=0", "eval.plausibility_samples=0"]
    assert main(eval_cfg(out, [f"ckpt_path={ckpt}", f"data.root={moved}", *images])) == {}
    grids = {  # columns and rows of 28x28 images, each padded by 2 pixels
        "samples": (8, 8),  # 64 prior samples
        "reconstructions": (8, 5),  # the 20 test images and theirs
        "interpolations": (10, 8),  # 8 pairs of the first 16 in 10 steps
        "traversals": (10, 3),  # one row per latent dimension
    }
    for name, (columns, rows) in grids.items():
        with Image.open(out / "images" / f"test_{name}.png") as picture:
            assert picture.size == (2 + columns * 30, 2 + rows * 30), name
    assert not (out / "metrics.json").exists()


def test_hook_after_testing_logs_test_metrics(tmp_path):
    cfg = make_cfg(tmp_path, [*TINY_SPRITES, "model.latent_dim=2"])
    datamodule, model = build(cfg)
    logger = CSVLogger(tmp_path, name="csv", version="")
    trainer = L.Trainer(accelerator="cpu", logger=logger, enable_progress_bar=False)
    eval_settings = OmegaConf.create(
        {"num_importance_samples": 5, "chunk_size": 2, "seed": 0, "split": "test"}
    )
    metrics = evaluate_after_test(trainer, model, datamodule, eval_settings)
    assert {"test/nll", "test/active_units", "test/kl_dim_01"} <= set(metrics)
    logged = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "test/nll" in logged and "test/nll_bits_per_dim" in logged


def test_deterministic_model_gets_reconstruction_and_active_units_only():
    x = sample_data(linear_gaussian_vae(), 10).float()
    pca = PCA(Gaussian(0.25), (1, 2, 2), latent_dim=2)
    pca.fit_images(x)
    results = evaluate(pca, DataLoader(TensorDataset(x, torch.zeros(10)), batch_size=4), 5, 2)
    with torch.no_grad():
        reconstruction = pca.elbo(x)["reconstruction"].mean()
    assert results["reconstruction"] == pytest.approx(float(reconstruction), rel=1e-6)
    assert "nll" not in results and results["kl"] == 0
    assert results["elbo"] == results["reconstruction"]
    assert results["active_units"] == 2  # whitened codes: variance 1 over the data


@pytest.mark.slow
def test_evaluate_py_command_line(mnist_run, tmp_path):
    ckpt, moved = mnist_run
    result = run_python(
        ROOT / "evaluate.py",
        f"ckpt_path={ckpt}",
        f"data.root={moved}",
        "eval.num_importance_samples=10",
        "data.eval_batch_size=4",
        f"paths.log_dir={tmp_path / 'logs'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics_file,) = (tmp_path / "logs" / "evaluate").glob("*/*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert math.isfinite(metrics["nll"]) and metrics["num_importance_samples"] == 10
    assert "nll" in result.stdout and "KL per latent dimension" in result.stdout
