"""model=cvae: the bound of log p(x|y) by hand, the shared evaluation given y, the generative
classifier behind its pictures, and a run on MNIST's file format."""

import json
import math

import pytest
import torch
from helpers import make_cfg, mnist_overrides
from PIL import Image
from test_m2 import write_balanced_mnist
from torch.distributions import Bernoulli, Normal
from torch.utils.data import DataLoader, TensorDataset

from vaelab.components import build
from vaelab.errors import ConfigError, user_error
from vaelab.evaluate import evaluate
from vaelab.train import train


def cvae_overrides(tmp_path, *extra: str) -> list[str]:
    write_balanced_mnist(tmp_path / "mnist")
    return [
        *mnist_overrides(tmp_path / "mnist"),
        "data.batch_size=8",
        "data.eval_batch_size=10",
        "model=cvae",
        "model.latent_dim=4",
        "model.encoder.hidden_dims=[16]",
        "model.decoder.hidden_dims=[16]",
        *extra,
    ]


@pytest.fixture
def model(tmp_path):
    torch.manual_seed(0)
    return build(make_cfg(tmp_path, cvae_overrides(tmp_path)))[1].double()


def test_weigh_is_the_bound_of_log_p_x_given_y_by_hand(model):
    x = torch.bernoulli(torch.full((3, 1, 28, 28), 0.3, dtype=torch.float64))
    y = torch.tensor([0, 7, 7])
    observed = model.observed((x, y))
    assert observed.shape == (3, 784 + 10) and model.num_units == model.noise_dim == 4
    eps = torch.randn(5, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        q = model.encode(observed)
        weighed = model.weigh(observed, q, eps)
        kl, kl_per_dim = model.kl_terms(q, weighed)
        onehot = torch.nn.functional.one_hot(y, 10).double()
        mean, log_var = model.encoder(torch.cat([x.flatten(1), onehot], 1)).chunk(2, dim=1)
        posterior = Normal(mean, (0.5 * log_var).exp())
        z = posterior.mean + posterior.stddev * eps
        logits = model.decoder(torch.cat([z, onehot.expand(5, 3, 10)], -1))
    torch.testing.assert_close(weighed["z"], z)
    torch.testing.assert_close(
        weighed["log_likelihood"], Bernoulli(logits=logits).log_prob(x).sum((-3, -2, -1))
    )
    torch.testing.assert_close(weighed["log_posterior"], posterior.log_prob(z).sum(-1))
    torch.testing.assert_close(weighed["log_prior"], Normal(0.0, 1.0).log_prob(z).sum(-1))
    prior = Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(kl_per_dim, torch.distributions.kl_divergence(posterior, prior))
    torch.testing.assert_close(kl, kl_per_dim.sum(-1))


def test_the_evaluation_estimates_log_p_x_given_y(model):
    """k = 1 gives the ELBO's draw; many draws tighten the bound, on the same labelled batch."""
    x = torch.bernoulli(torch.full((6, 1, 28, 28), 0.3, dtype=torch.float64))
    y = torch.arange(6) % 10
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    results = {
        k: evaluate(model, loader, num_importance_samples=k, chunk_size=50, seed=0)
        for k in (1, 200)
    }
    generator, by_hand = torch.Generator().manual_seed(0), []  # evaluate's draws, in order
    for images, labels in loader:
        observed = model.observed((images, labels))
        eps = torch.randn(3, 4, generator=generator, dtype=torch.float64)[None]
        with torch.no_grad():
            weighed = model.weigh(observed, model.encode(observed), eps)
        by_hand.append(weighed["log_likelihood"] + weighed["log_prior"] - weighed["log_posterior"])
    assert results[1]["nll"] == pytest.approx(-float(torch.cat(by_hand, 1).mean()), rel=1e-9)
    assert results[200]["nll"] < -results[200]["elbo"]
    other = DataLoader(TensorDataset(x, (y + 1) % 10), batch_size=3)  # the label matters
    assert evaluate(model, other, 200, 50, seed=0)["nll"] != pytest.approx(results[200]["nll"])


def test_pictures_take_the_class_of_highest_bound(model):
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3, dtype=torch.float64))
    torch.manual_seed(3)
    with torch.no_grad():
        bounds = model.class_bounds(x)
    torch.manual_seed(3)
    with torch.no_grad():
        code = model.code(x)
    assert bounds.shape == (4, 10)
    torch.testing.assert_close(code[:, 4:], torch.eye(10, dtype=torch.float64)[bounds.argmax(1)])
    assert model.analogies(x[:2]).shape == (22, 1, 28, 28)


def test_trains_on_mnist_and_reports_the_nll_given_y(tmp_path):
    overrides = cvae_overrides(tmp_path, "debug=limit", "eval.num_importance_samples=10")
    metrics = train(make_cfg(tmp_path, overrides))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for name in ("test/nll", "test/elbo", "test/kl", "val/elbo", "test/active_units"):
        assert name in saved and math.isfinite(saved[name]), name
    assert metrics["test/nll"] == pytest.approx(saved["test/nll"])
    assert saved["test/nll"] <= -saved["test/elbo"] + 1.0
    with Image.open(tmp_path / "images" / "analogies.png") as picture:
        assert picture.size == (2 + 11 * 30, 2 + 10 * 30)


def test_needs_one_class_label_per_image(tmp_path):
    overrides = ["model=cvae", "data.size=40", "data.batch_size=8", "debug=limit"]
    with pytest.raises(Exception) as raised:
        train(make_cfg(tmp_path, overrides))
    error = user_error(raised.value)
    assert isinstance(error, ConfigError) and "one class label per image" in str(error)
