import functools

import pytest
import torch

from vaelab.errors import ConfigError
from vaelab.likelihoods import Bernoulli, Gaussian
from vaelab.nets.conv import ConvDecoder, ConvEncoder
from vaelab.nets.linear import LinearDecoder, LinearEncoder
from vaelab.nets.mlp import MLPDecoder, MLPEncoder
from vaelab.posteriors.gaussian import gaussian_kl, reparameterize
from vaelab.vae import VAE


def make_vae(image_shape=(1, 28, 28), latent_dim=4, nets="mlp", **kwargs) -> VAE:
    encoder, decoder = {
        "mlp": (
            functools.partial(MLPEncoder, hidden_dims=[16]),
            functools.partial(MLPDecoder, hidden_dims=[16]),
        ),
        "conv": (
            functools.partial(ConvEncoder, channels=4, hidden_dim=8),
            functools.partial(ConvDecoder, channels=4, hidden_dim=8),
        ),
        "linear": (LinearEncoder, LinearDecoder),
    }[nets]
    kwargs.setdefault("likelihood", Bernoulli())
    return VAE(encoder, decoder, image_shape=image_shape, latent_dim=latent_dim, **kwargs)


def test_reparameterised_gradient_matches_finite_difference():
    """d/d(mean, log_var) of f(z(mean, log_var, eps)) by autograd and by central differences."""
    torch.manual_seed(0)
    mean = torch.randn(3, dtype=torch.float64, requires_grad=True)
    log_var = torch.randn(3, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(3, dtype=torch.float64)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def objective(m, lv):
        z = reparameterize(m, lv, eps)
        return (weights * torch.sin(z) + z.square()).sum() - gaussian_kl(m, lv).sum()

    objective(mean, log_var).backward()
    step = 1e-6
    for parameter, grad in ((mean, mean.grad), (log_var, log_var.grad)):
        for i in range(3):
            shift = torch.zeros(3, dtype=torch.float64)
            shift[i] = step
            with torch.no_grad():
                if parameter is mean:
                    up, down = objective(mean + shift, log_var), objective(mean - shift, log_var)
                else:
                    up, down = objective(mean, log_var + shift), objective(mean, log_var - shift)
            assert grad[i].item() == pytest.approx(((up - down) / (2 * step)).item(), rel=1e-6)


def test_reparameterised_gradient_is_unbiased():
    """E[d/dmean z^2] = 2 mean and E[d/dlog_var z^2] = var, estimated with many draws."""
    mean = torch.tensor([0.7], requires_grad=True)
    log_var = torch.tensor([-0.5], requires_grad=True)
    eps = torch.randn(200_000, 1, generator=torch.Generator().manual_seed(0))
    reparameterize(mean, log_var, eps).square().mean().backward()
    assert mean.grad.item() == pytest.approx(1.4, abs=0.02)
    assert log_var.grad.item() == pytest.approx(torch.exp(log_var).item(), abs=0.02)


@pytest.mark.parametrize("nets", ["mlp", "conv"])
def test_interface_shapes(nets):
    torch.manual_seed(0)
    model = make_vae(nets=nets, num_samples=3)
    x = torch.bernoulli(torch.full((5, 1, 28, 28), 0.3))
    mean, log_var, _ = model.encode(x)
    assert mean.shape == log_var.shape == (5, 4)
    assert model.decode(torch.randn(2, 5, 4)).shape == (2, 5, 1, 28, 28)
    samples = model.sample(6)
    assert samples.shape == (6, 1, 28, 28) and samples.min() >= 0 and samples.max() <= 1
    assert model.reconstruct(x).shape == x.shape
    terms = model.elbo(x)
    assert set(terms) == {"elbo", "reconstruction", "kl"}
    assert all(value.shape == (5,) for value in terms.values())
    torch.testing.assert_close(terms["elbo"], terms["reconstruction"] - terms["kl"])
    torch.testing.assert_close(terms["kl"], gaussian_kl(mean, log_var).sum(-1))


def test_elbo_is_a_monte_carlo_average_of_reconstructions():
    """With num_samples=S the reconstruction term is the mean of S single-draw estimates."""
    model = make_vae(num_samples=4)
    x = torch.bernoulli(torch.full((2, 1, 28, 28), 0.3))
    torch.manual_seed(1)
    many = model.elbo(x)["reconstruction"]
    torch.manual_seed(1)
    mean, log_var, _ = model.encode(x)
    eps = torch.randn(4, *mean.shape)
    single = model.likelihood.log_prob(x, model.decode(reparameterize(mean, log_var, eps)))
    torch.testing.assert_close(many, single.mean(0))


def test_autoencoder_has_no_kl_and_no_noise():
    model = make_vae(nets="linear", stochastic=False, likelihood=Gaussian(0.5))
    x = torch.rand(3, 1, 28, 28)
    mean, log_var, _ = model.encode(x)
    assert log_var is None and mean.shape == (3, 4)
    first, second = model.elbo(x), model.elbo(x)
    torch.testing.assert_close(first["reconstruction"], second["reconstruction"])
    assert (first["kl"] == 0).all()
    squared_error = (model.reconstruct(x) - x).square().flatten(1).sum(1)
    # Gaussian with c = 0.5: log p = -||x - mu||^2 - D/2 log(pi)
    expected = -squared_error - 784 / 2 * torch.log(torch.tensor(torch.pi))
    torch.testing.assert_close(first["reconstruction"], expected)


def test_kl_warmup_is_linear():
    model = make_vae(kl_weight=4.0, kl_warmup_steps=100)
    steps = {0: 0.0, 25: 1.0, 50: 2.0, 100: 4.0, 1000: 4.0}
    for step, weight in steps.items():
        assert model.kl_weight_at(step) == pytest.approx(weight)
    assert make_vae(kl_weight=2.0).kl_weight_at(0) == 2.0


def test_training_step_loss_weights_kl_by_beta():
    torch.manual_seed(0)
    model = make_vae(kl_weight=3.0)
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
    model.log = model.log_dict = lambda *args, **kwargs: None
    torch.manual_seed(5)
    loss = model.training_step((x, None), 0)
    torch.manual_seed(5)
    terms = model.elbo(x)
    torch.testing.assert_close(loss, -(terms["reconstruction"] - 3.0 * terms["kl"]).mean())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"latent_dim": 0}, "latent_dim"),
        ({"kl_weight": -1.0}, "kl_weight"),
        ({"num_samples": 0}, "num_samples"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_vae(**kwargs)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 64, 64)])
def test_conv_nets_take_every_supported_size(shape):
    model = make_vae(image_shape=shape, nets="conv")
    x = torch.rand(2, *shape)
    assert model.reconstruct(x).shape == x.shape


def test_conv_nets_refuse_other_sizes():
    with pytest.raises(ConfigError, match="multiple of 4"):
        make_vae(image_shape=(1, 30, 30), nets="conv")
