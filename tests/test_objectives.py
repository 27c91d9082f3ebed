import functools
import math

import pytest
import torch
from helpers import TINY_SPRITES, logged_training_step, make_cfg
from hydra.utils import instantiate

from vaelab.errors import ConfigError
from vaelab.likelihoods import Bernoulli
from vaelab.nets.mlp import MLPDecoder, MLPEncoder
from vaelab.posteriors.gaussian import gaussian_kl, reparameterize
from vaelab.schedules import GeometricStagesLR
from vaelab.train import train
from vaelab.vae import VAE

PRESETS = ("burda16_vae_mnist", "burda16_iwae_k50_mnist")


def make_vae(**kwargs) -> VAE:
    return VAE(
        functools.partial(MLPEncoder, hidden_dims=[16]),
        functools.partial(MLPDecoder, hidden_dims=[16]),
        Bernoulli(),
        image_shape=(1, 28, 28),
        latent_dim=4,
        **kwargs,
    )


def by_hand(model: VAE, x: torch.Tensor, num_samples: int, seed: int) -> dict[str, torch.Tensor]:
    """log p(x|z_s) and log p(z_s) - log q(z_s|x) from Gaussian densities, same draws."""
    torch.manual_seed(seed)
    mean, log_var, _ = model.encode(x)
    eps = torch.randn(num_samples, *mean.shape)
    z = reparameterize(mean, log_var, eps)
    std = torch.exp(0.5 * log_var)
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_posterior = torch.distributions.Normal(mean, std).log_prob(z).sum(-1)
    return {
        "log_likelihood": model.likelihood.log_prob(x, model.decode(z)),
        "log_ratio": log_prior - log_posterior,
        "kl_per_dim": gaussian_kl(mean, log_var),
    }


def binary_images(count: int) -> torch.Tensor:
    return torch.bernoulli(torch.full((count, 1, 28, 28), 0.3), generator=torch.Generator())


def test_iwae_loss_is_the_importance_weighted_bound_and_logs_the_true_elbo():
    torch.manual_seed(0)
    model = make_vae(objective="iwae", num_samples=5)
    x = binary_images(3)
    loss, logged = logged_training_step(model, x, seed=7)
    terms = by_hand(model, x, 5, seed=7)
    log_weights = terms["log_likelihood"] + terms["log_ratio"]
    bound = torch.logsumexp(log_weights, 0) - math.log(5)  # L_k, Burda et al. 2016
    torch.testing.assert_close(loss, -bound.mean())
    torch.testing.assert_close(logged["train/iwae"], bound.mean())
    reconstruction = terms["log_likelihood"].mean(0).mean()
    kl = terms["kl_per_dim"].sum(-1).mean()
    torch.testing.assert_close(logged["train/reconstruction"], reconstruction)
    torch.testing.assert_close(logged["train/kl"], kl)
    torch.testing.assert_close(logged["train/elbo"], reconstruction - kl)
    assert (bound >= log_weights.mean(0)).all()  # Jensen: log mean exp >= mean, per example


def test_validation_logs_the_iwae_bound_of_the_same_draws():
    torch.manual_seed(0)
    model = make_vae(objective="iwae", num_samples=6).eval()
    x = binary_images(4)
    logged = {}
    model.log = lambda name, metric, **kwargs: logged.update({name: metric.compute()})
    torch.manual_seed(3)
    model.validation_step((x, None), 0)
    terms = by_hand(model, x, 6, seed=3)
    log_weights = (terms["log_likelihood"] + terms["log_ratio"]).double()
    bound = (log_weights.exp().mean(0).log()).mean()  # log (1/k) sum_s w_s, without logsumexp
    torch.testing.assert_close(logged["val/iwae"].double(), bound, rtol=1e-5, atol=1e-4)
    assert logged["val/iwae"] >= logged["val/elbo"]  # L_k >= L_1 for the same draws


@pytest.mark.parametrize("preset", ["burda16_iwae_k50_mnist", "burda16_iwae2_k50_mnist_short"])
def test_iwae_presets_keep_the_best_by_the_iwae_bound(tmp_path, preset):
    cfg = make_cfg(tmp_path, [f"experiment={preset}"])
    assert cfg.callbacks.model_checkpoint.monitor == "val/iwae"


def test_iwae_warm_up_weights_the_prior_ratio():
    torch.manual_seed(0)
    model = make_vae(objective="iwae", num_samples=4, kl_weight=1.0, kl_warmup_steps=10)
    x = binary_images(2)
    loss, _ = logged_training_step(model, x, seed=3)  # global_step 0: beta = 0
    terms = by_hand(model, x, 4, seed=3)
    expected = torch.logsumexp(terms["log_likelihood"], 0) - math.log(4)
    torch.testing.assert_close(loss, -expected.mean())


@pytest.mark.parametrize("free_bits", [0.0, 0.05, 100.0])
def test_free_bits_floor_the_batch_mean_kl_of_each_dimension(free_bits):
    torch.manual_seed(0)
    model = make_vae(free_bits=free_bits, kl_weight=2.0)
    x = binary_images(6)
    loss, logged = logged_training_step(model, x, seed=5)
    terms = by_hand(model, x, 1, seed=5)
    kl_per_dim = terms["kl_per_dim"].mean(0)
    floored = torch.maximum(kl_per_dim, torch.tensor(free_bits)).sum()
    reconstruction = terms["log_likelihood"].mean()
    torch.testing.assert_close(loss, -(reconstruction - 2.0 * floored))
    torch.testing.assert_close(logged["train/kl"], kl_per_dim.sum())  # the true KL is logged
    if free_bits == 100.0:  # every dimension under the floor: the KL term adds no gradient
        parameters = list(model.encoder.parameters())
        got = torch.autograd.grad(loss, parameters)
        expected = torch.autograd.grad(-reconstruction, parameters)
        for got_grad, expected_grad in zip(got, expected, strict=True):
            torch.testing.assert_close(got_grad, expected_grad)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"objective": "vimco"}, "model.objective"),
        ({"free_bits": -0.1}, "model.free_bits"),
        ({"objective": "iwae", "free_bits": 0.5}, "no free bits"),
        ({"objective": "iwae", "stochastic": False}, "stochastic encoder"),
    ],
)
def test_bad_objective_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_vae(**kwargs)


def test_iwae_trains_through_train_py(tmp_path):
    cfg = make_cfg(
        tmp_path,
        [
            *TINY_SPRITES,
            "debug=limit",
            "model.objective=iwae",
            "model.num_samples=3",
            "callbacks.model_checkpoint.monitor=val/iwae",
            "callbacks.model_checkpoint.filename='iwae{val/iwae:.2f}'",
        ],
    )
    metrics = train(cfg)
    assert len(list((tmp_path / "checkpoints").glob("iwae-*.ckpt"))) == 1
    assert math.isfinite(metrics["train/iwae"]) and math.isfinite(metrics["test/elbo"])
    assert metrics["test/elbo"] == pytest.approx(
        metrics["test/reconstruction"] - metrics["test/kl"], rel=1e-4
    )


def test_burda_schedule_runs_3_to_the_i_epochs_at_decaying_rates():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = GeometricStagesLR(optimizer)
    rates = []
    for _ in range(3300):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert scheduler.total_epochs == 3280 == sum(3**i for i in range(8))
    starts = [0, 1, 4, 13, 40, 121, 364, 1093]
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else 3280
        expected = 1e-3 * 10 ** (-i / 7)
        assert rates[start] == pytest.approx(expected) and rates[end - 1] == pytest.approx(expected)
    assert rates[3299] == pytest.approx(1e-4)
    state = scheduler.state_dict()
    resumed = GeometricStagesLR(torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3))
    resumed.load_state_dict(state)
    assert resumed.get_last_lr() == scheduler.get_last_lr()


@pytest.mark.parametrize("preset", [*PRESETS, *(f"{p}_short" for p in PRESETS)])
def test_burda_presets_hold_the_paper_settings(preset, tmp_path):
    cfg = make_cfg(tmp_path, [f"experiment={preset}", "data.root=elsewhere"])
    assert cfg.data.root == "elsewhere" and cfg.data.binarize == "dynamic"
    model = instantiate(cfg.model, image_shape=(1, 28, 28), _convert_="all")
    assert [m.out_features for m in model.encoder.net if hasattr(m, "out_features")] == [
        200,
        200,
        100,
    ]
    assert model.objective == ("iwae" if "iwae" in preset else "elbo")
    assert model.num_samples == (50 if "iwae" in preset else 1)
    optimizers = model.configure_optimizers()
    assert optimizers["optimizer"].defaults["eps"] == 1e-4
    scheduler = optimizers["lr_scheduler"]["scheduler"]
    assert scheduler.total_epochs == cfg.trainer.max_epochs
    if not preset.endswith("_short"):
        assert cfg.data.batch_size == 20 and cfg.trainer.max_epochs == 3280
        assert optimizers["optimizer"].defaults["lr"] == 1e-3
