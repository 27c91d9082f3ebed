"""model=hvae2, the two-stochastic-layer VAE: exact densities, the shared evaluation, a real run."""

import functools
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY_SPRITES, make_cfg
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image
from torch.distributions import Bernoulli, MultivariateNormal, Normal, kl_divergence
from torch.utils.data import DataLoader, TensorDataset

from vaelab.errors import ConfigError
from vaelab.evaluate import evaluate, main
from vaelab.hvae import HVAE2
from vaelab.likelihoods import Bernoulli as BernoulliLikelihood
from vaelab.likelihoods import Gaussian
from vaelab.nets.linear import LinearDecoder, LinearEncoder
from vaelab.nets.mlp import MLPDecoder, MLPEncoder
from vaelab.posteriors.iaf import IAFPosterior
from vaelab.train import train

TINY_HVAE = [
    "model=hvae2",
    "model.latent_dim=3",
    "model.latent_dim_1=4",
    "model.encoder.hidden_dims=[16]",
    "model.decoder.hidden_dims=[16]",
    "model.encoder_2.hidden_dims=[8]",
    "model.decoder_2.hidden_dims=[8]",
]
PICTURES = ("samples", "reconstructions", "interpolations", "traversals")
PRESETS = ("burda16_vae2_mnist", "burda16_iwae2_k50_mnist")

# The linear-Gaussian two-layer model: p(z2) = N(0, I), p(z1|z2) = N(A z2 + a, diag S1),
# p(x|z1) = N(W z1 + b, S2 I), so p(x) = N(W a + b, W (A A^T + diag S1) W^T + S2 I).
W = torch.tensor(
    [[1.0, 0.3, -0.5], [0.5, -1.2, 0.2], [-0.4, 0.8, 0.9], [0.2, 0.1, -0.7]], dtype=torch.float64
)
B = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.float64)
A = torch.tensor([[0.8, -0.3], [0.4, 0.9], [-0.6, 0.5]], dtype=torch.float64)
A_BIAS = torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64)
S1 = torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64)
S2 = 0.25


def gaussian_posterior_map(
    prior_mean: torch.Tensor, prior_cov: torch.Tensor, weight: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For z ~ N(prior_mean, prior_cov), y|z ~ N(weight z, diag noise): E[z|y] = M y + c and
    Cov[z|y], as (M, c, Cov)."""
    cov = torch.linalg.inv(torch.linalg.inv(prior_cov) + weight.T @ (weight / noise[:, None]))
    mean_map = cov @ weight.T / noise
    return mean_map, cov @ torch.linalg.solve(prior_cov, prior_mean), cov


def linear_gaussian_hvae() -> HVAE2:
    """The model above with q(z1|x) q(z2|z1) = the exact posterior's means and doubled variances,
    diagonal: a reasonable but not exact posterior."""
    model = HVAE2(
        LinearEncoder,
        LinearDecoder,
        Gaussian(S2),
        image_shape=(1, 2, 2),
        latent_dim=2,
        latent_dim_1=3,
        encoder_2=LinearDecoder,
        decoder_2=LinearDecoder,
    ).to(torch.float64)
    # z1|x: the prior of z1 is N(a, A A^T + diag S1), x - b = W z1 + noise
    map_1, shift_1, cov_1 = gaussian_posterior_map(
        A_BIAS, A @ A.T + torch.diag(S1), W, torch.full((4,), S2, dtype=torch.float64)
    )
    # z2|z1 (= z2|z1, x): z1 - a = A z2 + noise
    map_2, _, cov_2 = gaussian_posterior_map(
        torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64), A, S1
    )
    nets = {
        model.decoder.net[0]: (W, B, None),
        model.decoder_2.net[0]: (A, A_BIAS, S1.log()),
        model.encoder.net[0]: (map_1, shift_1 - map_1 @ B, (2 * cov_1.diagonal()).log()),
        model.encoder_2.net[0]: (map_2, -map_2 @ A_BIAS, (2 * cov_2.diagonal()).log()),
    }
    with torch.no_grad():
        for layer, (weight, bias, log_var) in nets.items():
            layer.weight.zero_()
            size = len(bias)
            layer.weight[:size] = weight
            layer.bias[:size] = bias
            if log_var is not None:
                layer.bias[size:] = log_var
    return model


def exact_log_likelihood(x: torch.Tensor) -> torch.Tensor:
    covariance = W @ (A @ A.T + torch.diag(S1)) @ W.T + S2 * torch.eye(4, dtype=torch.float64)
    return MultivariateNormal(W @ A_BIAS + B, covariance).log_prob(x.flatten(1))


def sample_x(count: int) -> torch.Tensor:
    """Ancestral draws x ~ p(x) of the linear-Gaussian model, as (count, 1, 2, 2) images."""
    generator = torch.Generator().manual_seed(0)
    noise = functools.partial(torch.randn, generator=generator, dtype=torch.float64)
    z2 = noise(count, 2)
    z1 = z2 @ A.T + A_BIAS + S1.sqrt() * noise(count, 3)
    return (z1 @ W.T + B + math.sqrt(S2) * noise(count, 4)).view(count, 1, 2, 2)


def test_importance_weighted_nll_converges_to_the_exact_log_likelihood():
    model = linear_gaussian_hvae()
    x = sample_x(200)
    loader = DataLoader(TensorDataset(x, torch.zeros(200)), batch_size=100)
    exact = float(exact_log_likelihood(x).mean())
    results = {
        k: evaluate(model, loader, num_importance_samples=k, chunk_size=500, seed=k)
        for k in (1, 10, 5000)
    }
    bounds = {k: -result["nll"] for k, result in results.items()}
    assert bounds[5000] == pytest.approx(exact, abs=0.01)
    elbo = results[5000]["elbo"]  # E[L_1] from 5000 draws
    assert elbo < bounds[10] < bounds[5000] < exact + 0.01
    assert bounds[1] < bounds[10] and bounds[1] == pytest.approx(elbo, abs=0.15)
    assert exact - elbo > 0.3  # q is not the posterior: the bound has room to climb
    per_unit = [results[5000][f"kl_dim_{unit:02d}"] for unit in range(5)]
    assert sum(per_unit) == pytest.approx(results[5000]["kl"])
    assert results[5000]["active_units"] == 5  # E_q[z1] and E_q[z2] move with x


def small_hvae(**kwargs) -> HVAE2:
    torch.manual_seed(0)
    settings = {
        "latent_dim": 2,
        "latent_dim_1": 3,
        "encoder_2": functools.partial(MLPDecoder, hidden_dims=[6]),
        "decoder_2": functools.partial(MLPDecoder, hidden_dims=[6]),
    }
    return HVAE2(
        functools.partial(MLPEncoder, hidden_dims=[8]),
        functools.partial(MLPDecoder, hidden_dims=[8]),
        BernoulliLikelihood(),
        image_shape=(1, 4, 4),
        **settings | kwargs,
    ).to(torch.float64)


def test_weigh_matches_normal_densities_by_hand_and_kl_splits_by_unit():
    model = small_hvae()
    assert model.noise_dim == model.num_units == 5 and model.latent_dim == 2
    assert not model.closed_form_kl
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.4, dtype=torch.float64))
    q = model.encode(x)
    assert q.mean.shape == (6, 3) and model.posterior_mean(q) is None
    eps = torch.randn(4, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        weighed = model.weigh(x, q, eps)
        kl, kl_per_unit = model.kl_terms(q, weighed)
        z1, z2 = weighed["z"][..., :3], weighed["z"][..., 3:]
        q1 = Normal(q.mean, (0.5 * q.log_var).exp())
        mean_2, log_var_2 = model.encoder_2(z1).chunk(2, dim=-1)
        q2 = Normal(mean_2, (0.5 * log_var_2).exp())
        prior_mean_1, prior_log_var_1 = model.decoder_2(z2).chunk(2, dim=-1)
        p1 = Normal(prior_mean_1, (0.5 * prior_log_var_1).exp())
        p2 = Normal(torch.zeros_like(z2), torch.ones_like(z2))
        decoded = Bernoulli(logits=model.decoder(z1))
    torch.testing.assert_close(z1, q1.mean + q1.stddev * eps[..., :3])
    torch.testing.assert_close(z2, q2.mean + q2.stddev * eps[..., 3:])
    log_posterior = q1.log_prob(z1).sum(-1) + q2.log_prob(z2).sum(-1)
    log_prior = p1.log_prob(z1).sum(-1) + p2.log_prob(z2).sum(-1)
    torch.testing.assert_close(weighed["log_posterior"], log_posterior)
    torch.testing.assert_close(weighed["log_prior"], log_prior)
    torch.testing.assert_close(weighed["log_likelihood"], decoded.log_prob(x).sum((-3, -2, -1)))
    assert weighed["z"].shape == (4, 6, 5)
    # z1: -H[q(z1|x)] - log p(z1|z2); z2: KL(q(z2|z1) || N(0, I)), each in closed form
    units = torch.cat([-q1.entropy() - p1.log_prob(z1), kl_divergence(q2, p2)], -1)
    torch.testing.assert_close(kl_per_unit, units.mean(0))
    torch.testing.assert_close(kl_per_unit.sum(-1), kl)


def test_the_kl_estimate_is_unbiased_for_the_mean_of_log_q_minus_log_p():
    """weigh's per-unit estimate takes the closed-form parts exactly: over many draws its mean
    is that of log q(z|x) - log p(z), the KL."""
    model = small_hvae()
    x = torch.bernoulli(torch.full((3, 1, 4, 4), 0.4, dtype=torch.float64))
    with torch.no_grad():
        q = model.encode(x)
        weighed = model.weigh(x, q, torch.randn(200_000, 3, 5, dtype=torch.float64))
    estimate = weighed["kl_per_unit"].sum(-1)
    plain = weighed["log_posterior"] - weighed["log_prior"]
    error = 4 * (plain - estimate).std(0) / math.sqrt(len(plain))
    assert ((estimate.mean(0) - plain.mean(0)).abs() < error).all()
    assert (error < 0.05).all()


def test_pictures_live_in_the_top_layer():
    model = small_hvae()
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.4, dtype=torch.float64))
    with torch.no_grad():
        code = model.code(x)
        torch.testing.assert_close(code, model.encoder_2(model.encode(x).mean)[:, :2])
        torch.testing.assert_close(model.decode(code), model.decoder(model.decoder_2(code)[:, :3]))
    assert code.shape == (6, 2)
    assert model.sample(5, torch.Generator().manual_seed(0)).shape == (5, 1, 4, 4)
    assert model.reconstruct(x).shape == (6, 1, 4, 4)


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_every_net_gets_a_gradient(objective):
    """All four nets are trained (DDP without find_unused_parameters needs it)."""
    model = small_hvae(objective=objective, num_samples=3)
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.4, dtype=torch.float64))
    model.training_loss(model.draw(x), kl_weight=1.0).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"free_bits": 0.5}, "model.free_bits needs a closed-form KL"),
        ({"posterior": IAFPosterior}, "needs model/posterior=gaussian"),
        ({"latent_dim_1": 0}, "model.latent_dim_1 must be a positive integer"),
    ],
)
def test_unsupported_settings_are_one_line_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message) as error:
        small_hvae(**kwargs)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("preset", [*PRESETS, *(f"{p}_short" for p in PRESETS)])
def test_burda_two_layer_presets_hold_the_paper_settings(preset, tmp_path):
    cfg = make_cfg(tmp_path, [f"experiment={preset}", "data.root=elsewhere"])
    assert cfg.data.root == "elsewhere" and cfg.data.binarize == "dynamic"
    model = instantiate(cfg.model, image_shape=(1, 28, 28), _convert_="all")
    assert isinstance(model, HVAE2) and (model.latent_dim_1, model.latent_dim) == (100, 50)
    widths = {
        name: [layer.out_features for layer in net.net if hasattr(layer, "out_features")]
        for name, net in [
            ("encoder", model.encoder),
            ("encoder_2", model.encoder_2),
            ("decoder_2", model.decoder_2),
            ("decoder", model.decoder),
        ]
    }
    assert widths == {
        "encoder": [200, 200, 200],
        "encoder_2": [100, 100, 100],
        "decoder_2": [100, 100, 200],
        "decoder": [200, 200, 784],
    }
    assert isinstance(model.encoder.net[1], torch.nn.Tanh)
    assert model.objective == ("iwae" if "iwae" in preset else "elbo")
    assert model.num_samples == (50 if "iwae" in preset else 1)
    optimizers = model.configure_optimizers()
    assert optimizers["optimizer"].defaults["eps"] == 1e-4
    assert optimizers["lr_scheduler"]["scheduler"].total_epochs == cfg.trainer.max_epochs
    assert cfg.eval.num_importance_samples == 5000
    if not preset.endswith("_short"):
        assert cfg.data.batch_size == 20 and cfg.trainer.max_epochs == 3280
        assert optimizers["optimizer"].defaults["lr"] == 1e-3


def test_short_run_trains_evaluates_and_resumes(tmp_path):
    run = tmp_path / "run"
    metrics = train(make_cfg(run, [*TINY_SPRITES, *TINY_HVAE, "debug=limit"]))
    saved = json.loads((run / "metrics.json").read_text())
    assert math.isfinite(saved["test/elbo"]) and saved["global_step"] == 10
    assert saved["test/elbo"] == pytest.approx(metrics["test/elbo"])
    assert saved["test/elbo"] == pytest.approx(
        saved["test/reconstruction"] - saved["test/kl"], rel=1e-4
    )
    assert (run / "checkpoints" / "last.ckpt").is_file() and Path(
        saved["best_checkpoint"]
    ).is_file()
    for name in PICTURES:
        for prefix in ("", "test_"):
            assert (run / "images" / f"{prefix}{name}.png").stat().st_size > 100
    with Image.open(run / "images" / "traversals.png") as traversals:
        assert traversals.size == (2 + 10 * 66, 2 + 3 * 66)  # a row per unit of z2
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["hyper_parameters"]["latent_dim"] == 3
    assert last["hyper_parameters"]["latent_dim_1"] == 4

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        eval_cfg = compose(
            "evaluate",
            overrides=[
                f"paths.output_dir={tmp_path / 'eval'}",
                f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                "eval.num_importance_samples=20",
                "eval.chunk_size=7",
            ],
        )
    results = main(eval_cfg)  # rebuilds the model from the run's config.yaml
    assert math.isfinite(results["nll"]) and results["num_examples"] == 6
    per_unit = [results[f"kl_dim_{unit:02d}"] for unit in range(7)]  # z1 (4) and z2 (3)
    assert "kl_dim_07" not in results
    assert sum(per_unit) == pytest.approx(results["kl"])
    assert 0 <= results["active_units"] <= 7

    resumed = make_cfg(
        tmp_path / "resumed",
        [*TINY_SPRITES, *TINY_HVAE, "debug=limit", "trainer.max_epochs=3", f"ckpt_path={run}"],
    )
    assert train(resumed)["global_step"] == 15  # 2 epochs done, one more of 5 batches
