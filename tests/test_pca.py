import math

import pytest
import torch
from helpers import make_cfg
from hydra.utils import instantiate

from vaelab.errors import ConfigError
from vaelab.likelihoods import Bernoulli, Gaussian
from vaelab.nets.linear import LinearDecoder, LinearEncoder
from vaelab.pca import PCA
from vaelab.train import train
from vaelab.vae import VAE

SHAPE = (1, 4, 4)  # D = 16


def low_rank_data(count: int = 500, seed: int = 0) -> torch.Tensor:
    """Images near a 3-dimensional subspace with well separated variances 9, 4, 2.25."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(16, 3, generator=generator)).Q
    codes = torch.randn(count, 3, generator=generator) * torch.tensor([3.0, 2.0, 1.5])
    noise = 0.05 * torch.randn(count, 16, generator=generator)
    return (codes @ basis.T + noise + 0.5).view(count, *SHAPE)


def principal_angle_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos of the principal angles between the column spaces of a and b (D, L)."""
    return torch.linalg.svdvals(torch.linalg.qr(a).Q.T @ torch.linalg.qr(b).Q)


def decoder_columns(model: VAE) -> torch.Tensor:
    return model.decoder.net[0].weight.detach()


def test_pca_is_the_eigendecomposition_of_the_data_covariance():
    x = low_rank_data()
    model = PCA(Gaussian(0.1), SHAPE, latent_dim=3)
    model.fit_images(x)
    flat = x.flatten(1).double()
    centred = flat - flat.mean(0)
    _, singular_values, right = torch.linalg.svd(centred, full_matrices=False)
    variances = singular_values[:3].square() / len(x)
    cosines = principal_angle_cosines(decoder_columns(model).double(), right[:3].T)
    assert cosines.min() > 1 - 1e-6
    # decoder columns are the directions scaled by sqrt(variance); codes are whitened
    torch.testing.assert_close(
        decoder_columns(model).double().norm(dim=0), variances.sqrt(), rtol=1e-4, atol=0
    )
    with torch.no_grad():
        codes = model.encode(x)[0].double()
        reconstruction = model.reconstruct(x).flatten(1).double()
    torch.testing.assert_close(
        codes.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        codes.T @ codes / len(x), torch.eye(3, dtype=torch.float64), atol=1e-4, rtol=0
    )
    # the reconstruction is the orthogonal projection onto the top-3 subspace
    projection = flat.mean(0) + centred @ right[:3].T @ right[:3]
    torch.testing.assert_close(reconstruction, projection, atol=1e-4, rtol=0)


@pytest.fixture
def one_thread():
    """Tiny matrices: a second thread only adds hand-off costs (a lot on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_trained_linear_autoencoder_spans_the_pca_subspace(one_thread):
    x = low_rank_data()
    torch.manual_seed(0)
    autoencoder = VAE(
        LinearEncoder, LinearDecoder, Gaussian(0.1), SHAPE, latent_dim=3, stochastic=False
    )
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=3e-2)
    for _ in range(400):
        loss = -autoencoder.elbo(x)["elbo"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    pca = PCA(Gaussian(0.1), SHAPE, latent_dim=3)
    pca.fit_images(x)
    cosines = principal_angle_cosines(decoder_columns(autoencoder), decoder_columns(pca))
    angles = torch.rad2deg(torch.arccos(cosines.clamp(max=1.0)))
    assert angles.max() < 1.0  # degrees
    with torch.no_grad():
        trained = autoencoder.elbo(x)["reconstruction"].mean()
        closed_form = pca.elbo(x)["reconstruction"].mean()
    assert float(trained) == pytest.approx(float(closed_form), abs=0.05)
    assert float(trained) <= float(closed_form) + 1e-3  # PCA is the optimum


def test_pca_refuses_a_bernoulli_decoder_and_too_many_dimensions():
    with pytest.raises(ConfigError, match="gaussian"):
        PCA(Bernoulli(), SHAPE, latent_dim=3)
    with pytest.raises(ConfigError, match="exceeds"):
        PCA(Gaussian(0.1), SHAPE, latent_dim=17)
    with pytest.raises(ConfigError, match="steps_per_call must be >= 1"):
        PCA(Gaussian(0.1), SHAPE, latent_dim=3, steps_per_call=0)


@pytest.mark.parametrize(
    "batching",
    [
        ["data.batch_size=30"],  # the 30 training images in one batch (none dropped)
        ["data.batch_size=10", "model.steps_per_call=3"],  # the same 30 in one call of 3 x 10
    ],
)
def test_model_pca_fits_through_train_py(tmp_path, tiny_mnist, batching):
    root, _ = tiny_mnist
    overrides = [
        *batching,
        "model=pca",
        "model.latent_dim=5",
        "data=mnist",
        f"data.root={root}",
        "data.download=false",
        "data.val_size=10",
        "data.binarize=none",
        "trainer.max_epochs=2",
    ]
    cfg = make_cfg(tmp_path, overrides)
    metrics = train(cfg)
    assert metrics["global_step"] == 0  # nothing was optimised
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    images = {split: datamodule.datasets[split].images.float() / 255 for split in ("train", "test")}
    expected = PCA(instantiate(cfg.model.likelihood), (1, 28, 28), latent_dim=5)
    expected.fit_images(images["train"])
    saved = PCA(instantiate(cfg.model.likelihood), (1, 28, 28), latent_dim=5)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    saved.load_state_dict(checkpoint["state_dict"])
    assert bool(saved.fitted)
    cosines = principal_angle_cosines(decoder_columns(saved), decoder_columns(expected))
    assert cosines.min() > 1 - 1e-4
    with torch.no_grad():
        test_reconstruction = expected.elbo(images["test"])["reconstruction"].mean()
    assert metrics["test/reconstruction"] == pytest.approx(float(test_reconstruction), rel=1e-4)
    assert metrics["test/kl"] == 0 and math.isfinite(metrics["val/elbo"])
