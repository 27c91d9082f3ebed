"""The disentanglement metrics of a model: the samplers, the codes of rendered factors, the report
in training, evaluation and metrics.json, and the error for data without factors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_SPRITES, make_cfg, mnist_overrides, write_tiny_mnist

from vaelab.components import build
from vaelab.data.dsprites import DSpritesDataModule
from vaelab.data.sprites import FACTOR_SIZES, index_to_classes, render
from vaelab.disentanglement import (
    beta_vae_score,
    dci,
    factor_vae_score,
    fixed_factor_pair_sampler,
    fixed_factor_sampler,
    gaussian_total_correlation,
    mig,
    modularity,
    sap,
)
from vaelab.disentanglement.interventions import sample_factors
from vaelab.disentanglement.report import (
    disentanglement_scores,
    model_disentanglement,
    model_encoder,
)
from vaelab.errors import ConfigError
from vaelab.train import train

SIZES = (3, 5, 4)
NAMES = {
    *("mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness"),
    *("modularity", "factor_vae_score", "beta_vae_score", "gaussian_tc", "mig_chen"),
}
separable = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
# a few dozen points of 40 orientations: sklearn warns that the classes look like a regression
few_points = pytest.mark.filterwarnings("ignore:The number of unique classes:UserWarning")


def as_codes(factors: np.ndarray) -> np.ndarray:
    return factors.astype(np.float64)


def test_samplers_hold_each_points_factor_fixed_and_draw_the_rest():
    rng = np.random.default_rng(0)
    ks = np.array([0, 1, 2, 2, 1])
    codes = fixed_factor_sampler(SIZES, as_codes)(ks, 50, rng)
    assert codes.shape == (5, 50, 3)
    for i, k in enumerate(ks):
        assert len(np.unique(codes[i, :, k])) == 1
        assert all(len(np.unique(codes[i, :, j])) == SIZES[j] for j in range(3) if j != k)
    first, second = fixed_factor_pair_sampler(SIZES, as_codes)(ks, 50, rng)
    for i, k in enumerate(ks):
        assert np.array_equal(first[i, :, k], second[i, :, k])
        assert len(np.unique(first[i, :, k])) > 1  # pairs share a value; batches do not
        assert all(not np.array_equal(first[i, :, j], second[i, :, j]) for j in range(3) if j != k)


@separable
def test_report_is_each_metric_on_one_set_of_draws():
    """The report's values equal the metrics called one by one on the same draws of factors."""

    def code(factors: np.ndarray) -> np.ndarray:  # unit 0 packs factors 0 and 1; unit 2 is noise
        noise = np.random.default_rng(len(factors)).standard_normal(len(factors))
        return np.stack([factors[:, 0] + 3 * factors[:, 1], factors[:, 2], noise], axis=1)

    report = disentanglement_scores(code, SIZES, num_points=300, seed=3)
    rng = np.random.default_rng(3)
    train_f, test_f = sample_factors(SIZES, 300, rng), sample_factors(SIZES, 150, rng)
    train_z, test_z = code(train_f), code(test_f)
    scores = dci(train_z, train_f, test_z, test_f, seed=3)
    votes = {"num_train": 300, "num_eval": 150, "seed": 3}
    expected = {
        "mig": mig(train_z, train_f),
        "sap": sap(train_z, train_f, test_z, test_f),
        "dci_disentanglement": scores.disentanglement,
        "dci_completeness": scores.completeness,
        "dci_informativeness": scores.informativeness_test,
        "modularity": modularity(train_z, train_f),
        "factor_vae_score": factor_vae_score(
            fixed_factor_sampler(SIZES, code), train_z, 3, **votes
        ).eval_accuracy,
        "beta_vae_score": beta_vae_score(fixed_factor_pair_sampler(SIZES, code), 3, **votes),
        "gaussian_tc": gaussian_total_correlation(train_z),
    }
    assert report == pytest.approx(expected)


@separable
def test_report_of_the_factors_themselves_tops_and_of_noise_bottoms():
    top = disentanglement_scores(as_codes, SIZES, num_points=400)
    noise = disentanglement_scores(
        lambda f: np.random.default_rng(len(f)).standard_normal(f.shape), SIZES, num_points=400
    )
    for name in ("mig", "dci_disentanglement", "dci_completeness"):
        assert top[name] > 0.9 and noise[name] < 0.3, name
    assert top["modularity"] > 0.99 > noise["modularity"]  # noise too is fairly modular
    assert top["factor_vae_score"] == top["beta_vae_score"] == 1.0
    assert noise["factor_vae_score"] < 0.6 and noise["beta_vae_score"] < 0.6


def test_model_encoder_codes_the_rendered_images_of_any_classes(tmp_path):
    datamodule, model = build(make_cfg(tmp_path, [*TINY_SPRITES, "model.latent_dim=3"]))
    model.train()
    classes = index_to_classes(torch.tensor([0, 5, 737_279, 400_000, 123_456]))
    codes = model_encoder(model, datamodule)(classes.numpy())
    assert model.training  # left as it was found
    model.eval()
    with torch.no_grad():
        expected = model.code(render(classes).float() / 255).double().numpy()
    np.testing.assert_allclose(codes, expected, rtol=1e-6, atol=1e-7)


def test_dsprites_images_of_are_the_files_rows(tmp_path, monkeypatch):
    count = 48
    monkeypatch.setattr(DSpritesDataModule, "num_items", count)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 2, (count, 64, 64), dtype=np.uint8)
    picked = rng.choice(int(np.prod(FACTOR_SIZES)), count, replace=False)
    classes = np.concatenate(
        [np.zeros((count, 1), np.int64), index_to_classes(torch.from_numpy(picked)).numpy()], axis=1
    )
    path = tmp_path / "dsprites.npz"
    np.savez_compressed(path, imgs=imgs, latents_classes=classes)
    data = DSpritesDataModule(path=str(path), size=40)
    rows = np.array([7, 0, 47, 7])
    images = data.images_of(torch.from_numpy(classes[rows, 1:]))
    assert images.shape == (4, 1, 64, 64)
    assert np.array_equal(images[:, 0].numpy(), imgs[rows] * 255)
    missing = index_to_classes(torch.tensor([int(np.setdiff1d(np.arange(100), picked)[0])]))
    with pytest.raises(Exception, match="download the file again"):
        data.images_of(missing)


def read_metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


@separable
@few_points
def test_training_logs_the_fast_setting_and_tests_the_full_one(tmp_path):
    overrides = [
        *TINY_SPRITES,
        "debug=limit",
        "trainer.max_epochs=1",
        "model.latent_dim=3",
        "eval.plausibility_samples=0",
        "callbacks.disentanglement.num_points=40",
        "eval.disentanglement_points=60",
        "logger=csv",
    ]
    metrics = train(make_cfg(tmp_path, overrides))
    saved = read_metrics(tmp_path)
    for name in NAMES:
        assert f"val/{name}" in saved and f"test/{name}" in saved, name
        assert saved[f"test/{name}"] == pytest.approx(metrics[f"test/{name}"])
    datamodule, model = build(make_cfg(tmp_path, overrides))
    checkpoint = torch.load(saved["best_checkpoint"], weights_only=True)
    model.load_state_dict(checkpoint["state_dict"])
    again = model_disentanglement(model, datamodule, 60, seed=0)
    assert {f"test/{k}": v for k, v in again.items()} == pytest.approx(
        {f"test/{k}": saved[f"test/{k}"] for k in NAMES}
    )
    logged = (tmp_path / "csv").rglob("metrics.csv")
    assert any("test/mig" in path.read_text() for path in logged)


@pytest.mark.parametrize(
    "asked", ["callbacks.disentanglement.num_points=40", "eval.disentanglement_points=40"]
)
def test_data_without_factors_fails_before_training_in_one_line(tmp_path, asked):
    write_tiny_mnist(tmp_path / "mnist")
    overrides = [
        *mnist_overrides(tmp_path / "mnist"),
        "debug=limit",
        asked,
    ]
    with pytest.raises(ConfigError, match="no ground-truth factors.*data=sprites") as error:
        train(make_cfg(tmp_path, overrides))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
