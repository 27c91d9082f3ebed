"""The disentangling objectives (beta-VAE with annealed capacity, beta-TCVAE, DIP-VAE) and the
cyclical KL schedule, each checked against a hand computation on a tiny batch."""

import functools
import itertools
import math

import numpy as np
import pytest
import torch
from helpers import TINY_SPRITES, logged_training_step, make_cfg
from hydra.utils import instantiate

from vaelab.errors import ConfigError, user_error
from vaelab.likelihoods import Bernoulli
from vaelab.nets.mlp import MLPDecoder, MLPEncoder
from vaelab.objectives import kl_decomposition, log_importance_weights
from vaelab.train import train
from vaelab.vae import VAE


def make_vae(latent_dim: int = 2, **kwargs) -> VAE:
    return VAE(
        functools.partial(MLPEncoder, hidden_dims=[16]),
        functools.partial(MLPDecoder, hidden_dims=[16]),
        Bernoulli(),
        image_shape=(1, 28, 28),
        latent_dim=latent_dim,
        **kwargs,
    )


def binary_images(count: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(count)
    return torch.bernoulli(torch.full((count, 1, 28, 28), 0.3), generator=generator)


def same_draws(model: VAE, x: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """The draw the training step makes with this seed, rebuilt from torch.distributions."""
    torch.manual_seed(seed)
    with torch.no_grad():
        mean, log_var, _ = model.encode(x)
    std = torch.exp(0.5 * log_var)
    z = mean + std * torch.randn(1, *mean.shape)
    posterior = torch.distributions.Normal(mean, std)
    prior = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    return {
        "z": z[0],
        "mean": mean,
        "log_var": log_var,
        "reconstruction": model.likelihood.log_prob(x, model.decode(z))[0].detach(),
        "kl": torch.distributions.kl_divergence(posterior, prior).sum(-1),
        "log_q": posterior.log_prob(z[0]).sum(-1),  # log q(z_i|x_i)
        "log_p": prior.log_prob(z[0]).sum(-1),
    }


# The KL-weight schedules.


def test_cyclical_schedule_at_hand_picked_steps():
    # T = 100 steps, M = 4 cycles of 25, rising over the first R = 0.4 of each (10 steps)
    model = make_vae(
        kl_weight=2.0, kl_warmup_steps=100, kl_schedule="cyclical", kl_cycles=4, kl_cycle_ratio=0.4
    )
    expected = {0: 0.0, 1: 0.2, 5: 1.0, 9: 1.8, 10: 2.0, 24: 2.0, 25: 0.0, 30: 1.0, 74: 2.0}
    expected |= {75: 0.0, 84: 1.8, 85: 2.0, 99: 2.0, 100: 2.0, 10_000: 2.0}
    for step, weight in expected.items():
        assert model.kl_weight_at(step) == pytest.approx(weight), step


def test_cyclical_schedule_with_uneven_cycles():
    # T = 10, M = 3 (Fu et al.): cycles of ceil(10/3) = 4 steps, tau = (t mod 4) / (10/3);
    # R = 0.5; the last cycle is cut short at T, after which beta holds
    model = make_vae(kl_warmup_steps=10, kl_schedule="cyclical", kl_cycles=3, kl_cycle_ratio=0.5)
    expected = {0: 0.0, 1: 0.6, 2: 1.0, 3: 1.0, 4: 0.0, 5: 0.6, 7: 1.0, 8: 0.0, 9: 0.6, 10: 1.0}
    for step, weight in expected.items():
        assert model.kl_weight_at(step) == pytest.approx(weight), step


def test_one_cycle_rising_all_the_way_is_the_linear_warm_up():
    linear = make_vae(kl_weight=3.0, kl_warmup_steps=40)
    cyclical = make_vae(
        kl_weight=3.0, kl_warmup_steps=40, kl_schedule="cyclical", kl_cycles=1, kl_cycle_ratio=1
    )
    for step in range(0, 60):
        assert cyclical.kl_weight_at(step) == pytest.approx(min(1, step / 40) * 3.0)
        assert linear.kl_weight_at(step) == pytest.approx(min(1, step / 40) * 3.0)


# beta-VAE with annealed capacity (Burgess et al. 2018).


@pytest.mark.parametrize("step, capacity", [(0, 0.0), (250, 5.0), (1000, 20.0), (5000, 20.0)])
def test_annealed_capacity_loss(step, capacity, monkeypatch):
    torch.manual_seed(0)
    model = make_vae(capacity_max=20.0, capacity_steps=1000, capacity_weight=100.0, kl_weight=4)
    monkeypatch.setattr(VAE, "global_step", property(lambda self: step))
    x = binary_images(4)
    loss, logged = logged_training_step(model, x, seed=3)
    hand = same_draws(model, x, seed=3)
    kl = hand["kl"].mean()
    reconstruction = hand["reconstruction"].mean()
    torch.testing.assert_close(loss, -reconstruction + 100.0 * (kl - capacity).abs())
    assert logged["train/capacity"] == pytest.approx(capacity)
    torch.testing.assert_close(logged["train/kl"], kl)  # the true KL, not the penalty
    torch.testing.assert_close(logged["train/elbo"], reconstruction - kl)


def test_without_capacity_beta_vae_weighs_the_kl_by_beta():
    torch.manual_seed(0)
    model = make_vae(kl_weight=4.0)
    x = binary_images(3)
    loss, logged = logged_training_step(model, x, seed=2)
    hand = same_draws(model, x, seed=2)
    torch.testing.assert_close(loss, -hand["reconstruction"].mean() + 4.0 * hand["kl"].mean())
    assert "train/capacity" not in logged


# beta-TCVAE (Chen et al. 2018).


def hand_weights(batch: int, size: int, estimator: str) -> list[list[float]]:
    """w_ij, written out: MWS 1/(N B); MSS 1/N on the diagonal, (N - M)/(N M) right of it
    (wrapping around), 1/M elsewhere, M = B - 1 (Chen et al. 2018, appendix C)."""
    if estimator == "mws":
        return [[1 / (size * batch)] * batch for _ in range(batch)]
    others = batch - 1
    weights = [[1 / others] * batch for _ in range(batch)]
    for i in range(batch):
        weights[i][i] = 1 / size
        weights[i][(i + 1) % batch] = (size - others) / (size * others)
    return weights


def normal_log_density(value: float, mean: float, log_var: float) -> float:
    return -0.5 * (math.log(2 * math.pi) + log_var + (value - mean) ** 2 / math.exp(log_var))


def hand_decomposition(z, mean, log_var, size: int, estimator: str) -> dict[str, float]:
    """mi, tc and dim_kl with loops over the batch and log-sum-exp written out."""
    batch, dims = mean.shape
    weights = hand_weights(batch, size, estimator)

    def log_sum_exp(values: list[float]) -> float:
        top = max(values)
        return top + math.log(sum(math.exp(value - top) for value in values))

    mi = tc = dim_kl = 0.0
    for i in range(batch):
        # log_q[j][d] = log q(z_id | x_j)
        log_q = [
            [
                normal_log_density(float(z[i, d]), float(mean[j, d]), float(log_var[j, d]))
                for d in range(dims)
            ]
            for j in range(batch)
        ]
        log_q_given_x = sum(log_q[i])
        log_q_z = log_sum_exp([math.log(weights[i][j]) + sum(log_q[j]) for j in range(batch)])
        log_marginals = sum(
            log_sum_exp([math.log(weights[i][j]) + log_q[j][d] for j in range(batch)])
            for d in range(dims)
        )
        log_p = sum(normal_log_density(float(z[i, d]), 0.0, 0.0) for d in range(dims))
        mi += (log_q_given_x - log_q_z) / batch
        tc += (log_q_z - log_marginals) / batch
        dim_kl += (log_marginals - log_p) / batch
    return {"mi": mi, "tc": tc, "dim_kl": dim_kl}


@pytest.mark.parametrize("estimator", ["mws", "mss"])
@pytest.mark.parametrize("batch", [3, 4])
def test_kl_decomposition_matches_a_hand_computation(estimator, batch):
    generator = torch.Generator().manual_seed(batch)
    mean = torch.randn(batch, 2, generator=generator, dtype=torch.float64)
    log_var = 0.5 * torch.randn(batch, 2, generator=generator, dtype=torch.float64)
    z = mean + torch.exp(0.5 * log_var) * torch.randn(batch, 2, generator=generator).double()
    terms = kl_decomposition(z[None], mean, log_var, dataset_size=50, estimator=estimator)
    hand = hand_decomposition(z, mean, log_var, 50, estimator)
    for name in ("mi", "tc", "dim_kl"):
        assert float(terms[name]) == pytest.approx(hand[name], rel=1e-10, abs=1e-10), name
    # the three add up to the Monte-Carlo KL of the same draws, E[log q(z|x) - log p(z)]
    posterior = torch.distributions.Normal(mean, torch.exp(0.5 * log_var))
    prior = torch.distributions.Normal(0.0, 1.0)
    kl = (posterior.log_prob(z).sum(-1) - prior.log_prob(z).sum(-1)).mean()
    torch.testing.assert_close(terms["mi"] + terms["tc"] + terms["dim_kl"], kl)


def test_stratified_weights_give_an_unbiased_estimate_of_the_aggregate_posterior():
    """Over every ordered minibatch of 3 from 5 examples with example n* in row i, the mean of
    sum_j w_ij q(z|x_j) is q(z) = (1/N) sum_n q(z|x_n), for any z and every row i."""
    size, batch = 5, 3
    densities = torch.tensor([0.3, 1.7, 0.05, 0.9, 2.2], dtype=torch.float64)  # q(z|x_n)
    weights = log_importance_weights(batch, size, "mss").exp()
    torch.testing.assert_close(weights.sum(1), torch.ones(batch, dtype=torch.float64))
    for row, own in itertools.product(range(batch), range(size)):
        estimates = [
            sum(float(weights[row, j]) * float(densities[n]) for j, n in enumerate(chosen))
            for chosen in itertools.permutations(range(size), batch)
            if chosen[row] == own
        ]
        assert sum(estimates) / len(estimates) == pytest.approx(float(densities.mean()))


@pytest.mark.parametrize("tc_weight", [0.5, 6.0])
def test_beta_tcvae_loss_weighs_the_total_correlation_alone(tc_weight):
    torch.manual_seed(0)
    model = make_vae(objective="beta_tcvae", tc_weight=tc_weight, dataset_size=100)
    x = binary_images(4)
    loss, logged = logged_training_step(model, x, seed=9)
    hand = same_draws(model, x, seed=9)
    terms = hand_decomposition(hand["z"], hand["mean"], hand["log_var"], 100, "mss")
    reconstruction = hand["reconstruction"].mean()
    expected = -reconstruction + terms["mi"] + tc_weight * terms["tc"] + terms["dim_kl"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for name in ("mi", "tc", "dim_kl"):
        assert logged[f"train/{name}"].item() == pytest.approx(terms[name], rel=1e-4, abs=1e-5)
    # the three add up to the Monte-Carlo KL; the logged kl stays the closed form
    monte_carlo_kl = float((hand["log_q"] - hand["log_p"]).mean())
    assert sum(terms.values()) == pytest.approx(monte_carlo_kl, rel=1e-5, abs=1e-5)
    torch.testing.assert_close(logged["train/kl"], hand["kl"].mean())
    # beta < 1 lowers the loss below -ELBO's Monte-Carlo estimate by (1 - beta) tc, never more
    mc_loss = -reconstruction + monte_carlo_kl
    assert loss.item() == pytest.approx(mc_loss.item() + (tc_weight - 1) * terms["tc"], rel=1e-5)


def test_beta_tcvae_reads_the_dataset_size_from_the_training_loader():
    model = make_vae(objective="beta_tcvae")
    loader = torch.utils.data.DataLoader(list(range(37)), batch_size=4)

    class FakeTrainer:
        train_dataloader = loader

    model._trainer = FakeTrainer()
    assert model.training_set_size() == 37
    model._trainer = None
    with pytest.raises(ConfigError, match="model.dataset_size=N"):
        model.training_set_size()


# DIP-VAE (Kumar et al. 2018).


def hand_dip_penalty(covariance: np.ndarray, lambda_od: float, lambda_d: float) -> float:
    penalty = 0.0
    for i in range(len(covariance)):
        for j in range(len(covariance)):
            if i == j:
                penalty += lambda_d * (covariance[i, i] - 1) ** 2
            else:
                penalty += lambda_od * covariance[i, j] ** 2
    return penalty


@pytest.mark.parametrize("dip_type, lambda_d_factor", [("i", 10.0), ("ii", 1.0)])
def test_dip_vae_loss_is_the_elbo_plus_the_covariance_penalty(dip_type, lambda_d_factor):
    torch.manual_seed(0)
    model = make_vae(latent_dim=3, objective="dip_vae", dip_type=dip_type, lambda_od=2.0)
    x = binary_images(4)
    loss, logged = logged_training_step(model, x, seed=4)
    hand = same_draws(model, x, seed=4)
    means = hand["mean"].double().numpy()
    covariance = np.cov(means, rowvar=False, bias=True)  # Cov_p(x)[mean(x)] over the batch
    if dip_type == "ii":  # + E_p(x)[Cov_q(z|x)[z]], a diagonal
        covariance += np.diag(np.exp(hand["log_var"].double().numpy()).mean(0))
    penalty = hand_dip_penalty(covariance, 2.0, 2.0 * lambda_d_factor)
    elbo_loss = float(-hand["reconstruction"].mean() + hand["kl"].mean())
    assert logged["train/dip_penalty"].item() == pytest.approx(penalty, rel=1e-4)
    assert loss.item() == pytest.approx(elbo_loss + penalty, rel=1e-5)
    torch.testing.assert_close(logged["train/kl"], hand["kl"].mean())


# Settings that make no sense, refused in one line; the configs.


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model=beta_tcvae", "model/posterior=iaf"], "model/posterior=gaussian"),
        (["model=beta_tcvae", "model/prior=mog"], "model/prior=normal"),
        (["model=dip_vae", "model/prior=vamp"], "model/prior=normal"),
        (["model=hvae2", "model.objective=beta_tcvae"], "one stochastic layer"),
        (["model=dip_vae", "model.stochastic=false"], "deterministic encoder"),
        (["model=ae", "model.objective=beta_tcvae"], "deterministic encoder"),
        (["model=beta_tcvae", "model.tc_weight=-1"], "model.tc_weight must be >= 0"),
        (["model=beta_tcvae", "model.tc_estimator=jackknife"], "model.tc_estimator"),
        (["model=beta_tcvae", "model.free_bits=0.5"], "model.free_bits=0"),
        (["model=dip_vae", "model.dip_type=iii"], "model.dip_type"),
        (["model=dip_vae", "model.lambda_od=-1"], "model.lambda_od"),
        (["model=beta_vae", "model.capacity_max=-1"], "model.capacity_max"),
        (["model=beta_vae", "model.capacity_max=25", "model.objective=iwae"], "capacity_max=0"),
        (["model=beta_vae", "model.capacity_max=25", "model.free_bits=1"], "free_bits=0"),
        (["model=beta_vae", "model.capacity_max=25", "model.kl_warmup_steps=9"], "warmup_steps=0"),
        (["model.kl_schedule=cyclical"], "model.kl_warmup_steps"),
        (["model.kl_schedule=cosine"], "model.kl_schedule"),
        (["model.kl_cycle_ratio=0"], "model.kl_cycle_ratio"),
        (["model.kl_cycles=0"], "model.kl_cycles"),
    ],
)
def test_settings_that_make_no_sense_are_refused(overrides, message, tmp_path):
    cfg = make_cfg(tmp_path, overrides)
    with pytest.raises(Exception) as raised:  # Hydra wraps what the constructor raises
        instantiate(cfg.model, image_shape=(1, 64, 64), _convert_="all")
    error = user_error(raised.value)  # what train.py prints, as one line
    assert isinstance(error, ConfigError) and message in str(error) and "\n" not in str(error)


def test_the_configs(tmp_path):
    beta_vae = make_cfg(tmp_path, ["model=beta_vae"]).model
    conv_vae = make_cfg(tmp_path, ["model=conv_vae"]).model
    assert beta_vae.encoder == conv_vae.encoder and beta_vae.decoder == conv_vae.decoder
    assert beta_vae.kl_weight == 4 and beta_vae.capacity_max == 0
    annealed = make_cfg(tmp_path, ["model=beta_vae", "model.capacity_max=25"]).model
    model = instantiate(annealed, image_shape=(1, 64, 64), _convert_="all")
    assert model.capacity_max == 25 and model.capacity_weight == 1000
    tcvae = instantiate(make_cfg(tmp_path, ["model=beta_tcvae"]).model, image_shape=(1, 64, 64))
    assert tcvae.objective == "beta_tcvae" and tcvae.tc_weight == 6 and tcvae.dataset_size is None
    dip_cfg = make_cfg(tmp_path, ["model=dip_vae", "model.dip_type=ii"]).model
    dip = instantiate(dip_cfg, image_shape=(1, 64, 64))
    assert dip.objective == "dip_vae" and dip.dip_type == "ii"


@pytest.mark.parametrize(
    "overrides, logged",
    [
        (["model=beta_tcvae"], ("train/mi", "train/tc", "train/dim_kl")),
        (["model=dip_vae", "model.dip_type=ii"], ("train/dip_penalty",)),
        (
            ["model=beta_vae", "model.capacity_max=25", "model.capacity_steps=4"],
            ("train/capacity",),
        ),
    ],
)
def test_the_objectives_train_through_train_py(overrides, logged, tmp_path):
    """dataset_size null: beta-TCVAE takes N from the training loader."""
    small_nets = ["model.encoder.channels=4", "model.decoder.channels=4"]
    cfg = make_cfg(
        tmp_path,
        [*TINY_SPRITES, *overrides, *small_nets, "debug=limit", "eval.plausibility_samples=0"],
    )
    metrics = train(cfg)
    for name in logged:
        assert math.isfinite(metrics[name])
    assert metrics["test/elbo"] == pytest.approx(
        metrics["test/reconstruction"] - metrics["test/kl"], rel=1e-4
    )
