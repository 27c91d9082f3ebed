"""The VAE family's parts against independent computations: the IAF's log-determinant against
autograd's Jacobian, mixture priors against torch.distributions, the Monte-Carlo KL against the
closed form, and every family member end to end through train.py's code."""

import functools
import math

import pytest
import torch
from helpers import TINY_SPRITES, make_cfg
from torch import distributions as D

from vaelab.evaluate import evaluate
from vaelab.likelihoods import Bernoulli
from vaelab.nets.mlp import MLPDecoder, MLPEncoder
from vaelab.posteriors.gaussian import Encoded, GaussianPosterior, gaussian_kl
from vaelab.posteriors.iaf import MADE, IAFPosterior
from vaelab.priors import mixture
from vaelab.priors.mixture import MixturePrior, VampPrior, mixture_log_prob
from vaelab.priors.normal import NormalPrior
from vaelab.train import train
from vaelab.vae import VAE

SHAPE = (1, 28, 28)


def make_vae(posterior=GaussianPosterior, prior=NormalPrior, latent_dim=4, **kwargs) -> VAE:
    return VAE(
        functools.partial(MLPEncoder, hidden_dims=[16]),
        functools.partial(MLPDecoder, hidden_dims=[16]),
        Bernoulli(),
        image_shape=SHAPE,
        latent_dim=latent_dim,
        posterior=posterior,
        prior=prior,
        **kwargs,
    )


def iaf(latent_dim=4, **kwargs) -> IAFPosterior:
    torch.manual_seed(0)
    posterior = IAFPosterior(latent_dim, hidden_dims=(8, 8), context_dim=3, **kwargs).double()
    with torch.no_grad():  # gates far from 1, so every step really moves z
        for step in posterior.steps:
            step.output.bias.normal_()
            step.output.weight.mul_(3)
    return posterior


def test_made_outputs_depend_only_on_earlier_inputs():
    made = MADE(5, hidden_dims=(7, 6), context_dim=2).double()
    z, h = torch.randn(5, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    for index in (0, 1):  # m and s
        jacobian = torch.autograd.functional.jacobian(lambda v, i=index: made(v, h)[i], z)
        assert (jacobian.triu() == 0).all()  # d m_j / d z_i = 0 for i >= j
        lower = torch.ones(5, 5, dtype=torch.bool).tril(-1)
        assert (jacobian[lower] != 0).all()  # every earlier input reaches every later output


def test_iaf_log_determinant_equals_autograd_jacobian():
    posterior = iaf(num_steps=3)
    context = torch.randn(3, dtype=torch.float64)
    for seed in range(3):
        z0 = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        jacobian = torch.autograd.functional.jacobian(lambda v: posterior.flow(v, context)[0], z0)
        _, log_det = posterior.flow(z0, context)
        torch.testing.assert_close(log_det, torch.linalg.slogdet(jacobian).logabsdet)
        assert abs(float(log_det)) > 0.1  # the flow is far from volume-preserving here


def test_iaf_log_q_is_the_change_of_variables_density():
    posterior = iaf()
    features = torch.randn(2, posterior.num_features, dtype=torch.float64)
    q = posterior.split(features)
    eps = torch.randn(5, 2, 4, dtype=torch.float64)
    z, log_q = posterior.rsample(q, eps)
    z0 = q.mean + torch.exp(0.5 * q.log_var) * eps
    base = D.Normal(q.mean, torch.exp(0.5 * q.log_var)).log_prob(z0).sum(-1)
    for s in range(5):
        for b in range(2):
            jacobian = torch.autograd.functional.jacobian(
                lambda v, b=b: posterior.flow(v, q.context[b])[0], z0[s, b]
            )
            expected = base[s, b] - torch.linalg.slogdet(jacobian).logabsdet
            torch.testing.assert_close(log_q[s, b], expected)
    torch.testing.assert_close(posterior.code(q), posterior.flow(q.mean, q.context)[0])


def hand_mixture(z, weights, means, stds) -> torch.Tensor:
    mixture = D.MixtureSameFamily(
        D.Categorical(probs=weights), D.Independent(D.Normal(means, stds), 1)
    )
    return mixture.log_prob(z)


def test_mixture_prior_density_is_the_mixture_of_gaussians():
    torch.manual_seed(0)
    prior = MixturePrior(3, num_components=4).double()
    with torch.no_grad():
        prior.logits.normal_()
        prior.log_vars.uniform_(-2, 1)
    z = torch.randn(6, 5, 3, dtype=torch.float64)
    expected = hand_mixture(
        z, prior.logits.softmax(-1), prior.means, torch.exp(0.5 * prior.log_vars)
    )
    torch.testing.assert_close(prior.log_prob(z), expected)


def test_mixture_density_stays_exact_with_small_variances_in_float32():
    """Pseudo-inputs' posteriors reach variances of 1e-6 and less: expanding the square,
    z^2/v - 2 z m/v + m^2/v, would cancel catastrophically there (errors of many nats)."""
    torch.manual_seed(0)
    means = torch.randn(5, 3) * 2
    log_vars = torch.full((5, 3), math.log(1e-6))
    log_weights = torch.full((5,), -math.log(5))
    z = means[torch.tensor([0, 3, 4])] + 1e-3 * torch.randn(3, 3)
    exact = hand_mixture(
        z.double(), log_weights.exp().double(), means.double(), torch.exp(0.5 * log_vars).double()
    )
    torch.testing.assert_close(
        mixture_log_prob(z, log_weights, means, log_vars).double(), exact, atol=1e-3, rtol=1e-5
    )


def test_mixture_density_is_the_same_in_component_blocks(monkeypatch):
    torch.manual_seed(0)
    z, means, log_vars = torch.randn(4, 6, 3), torch.randn(7, 3), torch.randn(7, 3)
    log_weights = torch.randn(7).log_softmax(-1)
    whole = mixture_log_prob(z, log_weights, means, log_vars)
    monkeypatch.setattr(mixture, "MAX_ELEMENTS", 2 * 24 * 3)  # blocks of 2 components
    torch.testing.assert_close(mixture_log_prob(z, log_weights, means, log_vars), whole)


def test_vamp_prior_is_the_mixture_of_pseudo_input_posteriors():
    torch.manual_seed(0)
    model = make_vae(prior=functools.partial(VampPrior, num_components=5)).double()
    with torch.no_grad():
        model.prior.pseudo_inputs.uniform_(-0.5, 1.5)  # hardtanh clips into [0, 1]
    z = torch.randn(7, 3, 4, dtype=torch.float64)
    by_hand = []
    for k in range(5):
        u = model.prior.pseudo_inputs[k : k + 1].clamp(0, 1)
        mean, log_var, _ = model.encode(u)
        by_hand.append(D.Normal(mean[0], torch.exp(0.5 * log_var[0])).log_prob(z).sum(-1))
    expected = torch.logsumexp(torch.stack(by_hand), 0) - math.log(5)
    torch.testing.assert_close(model.prior.log_prob(z, model.encode), expected)


def test_mixture_samples_have_the_mixture_moments():
    prior = MixturePrior(2, num_components=2)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.0, math.log(3.0)]))  # weights 1/4, 3/4
        prior.means.copy_(torch.tensor([[-2.0, 0.0], [2.0, 1.0]]))
        prior.log_vars.copy_(torch.log(torch.tensor([[0.25, 1.0], [1.0, 0.25]])))
    z = prior.sample(200_000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), torch.tensor([1.0, 0.75]), atol=0.02, rtol=0)
    # Var = E[var] + Var[mean]: (0.25/4 + 3/4 + 3) for z_0, (1/4 + 0.25*3/4 + 0.1875) for z_1
    torch.testing.assert_close(z.var(0), torch.tensor([3.8125, 0.625]), atol=0.03, rtol=0)


def test_monte_carlo_kl_matches_the_closed_form():
    """A one-component mixture at N(0, I) is the normal prior taken by the Monte-Carlo path."""
    torch.manual_seed(0)
    model = make_vae(prior=functools.partial(MixturePrior, num_components=1)).double()
    with torch.no_grad():
        model.prior.means.zero_()
        model.prior.log_vars.zero_()
    assert not model.closed_form_kl
    x = torch.bernoulli(torch.full((3, *SHAPE), 0.3, dtype=torch.float64))
    q = model.encode(x)
    eps = torch.randn(20_000, 3, 4, dtype=torch.float64)
    weighed = model.weigh(x, q, eps)
    kl, kl_per_dim = model.kl_terms(q, weighed)
    assert kl_per_dim is None
    exact = gaussian_kl(q.mean, q.log_var).sum(-1)
    error = (weighed["log_posterior"] - weighed["log_prior"]).std(0) / math.sqrt(20_000)
    assert ((kl - exact).abs() < 4 * error).all()
    assert (error < 0.05).all()


def test_iaf_and_vamp_models_give_consistent_evaluations():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((16, *SHAPE), 0.3))
    loader = [(x, torch.zeros(16))]
    for model in (
        make_vae(posterior=functools.partial(IAFPosterior, hidden_dims=(8,), context_dim=3)),
        make_vae(prior=functools.partial(VampPrior, num_components=3)),
    ):
        few = evaluate(model, loader, num_importance_samples=1, chunk_size=1, seed=0)
        many = evaluate(model, loader, num_importance_samples=200, chunk_size=64, seed=0)
        assert not any(name.startswith("kl_dim_") for name in many)
        assert many["elbo"] == pytest.approx(many["reconstruction"] - many["kl"])
        assert -many["nll"] > -few["nll"]  # L_200 above L_1 (Burda et al.: E L_k increases)
        assert -many["nll"] > many["elbo"]
        assert many["kl"] > 0


def test_free_bits_need_a_closed_form_kl():
    with pytest.raises(Exception, match="free_bits needs the KL per latent dimension"):
        make_vae(prior=MixturePrior, free_bits=0.5)


@pytest.mark.parametrize("model", ["iaf_vae", "vamp_vae", "mog_vae"])
def test_family_member_trains_tests_and_resumes(model, tmp_path):
    overrides = [f"model={model}", *TINY_SPRITES, "debug=limit", "model.latent_dim=3"]
    if model == "vamp_vae":
        overrides.append("model.prior.num_components=6")
    metrics = train(make_cfg(tmp_path, [*overrides, "eval.num_importance_samples=20"]))
    assert metrics["test/elbo"] == pytest.approx(
        metrics["test/reconstruction"] - metrics["test/kl"], rel=1e-4
    )
    assert -metrics["test/nll"] >= metrics["test/elbo"] - 1.0  # MC noise of the two estimates
    for name in ("samples", "reconstructions", "interpolations", "traversals"):
        assert (tmp_path / "images" / f"test_{name}.png").stat().st_size > 100
    last = tmp_path / "checkpoints" / "last.ckpt"
    resumed = make_cfg(
        tmp_path / "resumed", [*overrides, "trainer.max_epochs=3", f"ckpt_path={last}"]
    )
    assert train(resumed)["global_step"] == 15


def test_encoded_without_context_unpacks_as_the_gaussian():
    mean, log_var, context = Encoded(torch.zeros(1), torch.ones(1))
    assert context is None
