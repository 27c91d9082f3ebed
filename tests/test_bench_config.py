"""The bench presets train what bench/bench.py's hand-written loops train."""

import importlib.util
import json
import time
import warnings

import pytest
import torch
from helpers import ROOT, make_cfg
from hydra.utils import instantiate
from lightning import Callback
from torch import nn

from vaelab.callbacks.timing import PHASES, StepPhases
from vaelab.components import build
from vaelab.data.base import InMemoryImages
from vaelab.data.labels import PartlyLabelled
from vaelab.likelihoods import Bernoulli
from vaelab.posteriors.gaussian import GaussianPosterior
from vaelab.priors.normal import NormalPrior
from vaelab.train import train
from vaelab.vae import VAE

spec = importlib.util.spec_from_file_location("bench", ROOT / "bench" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


MLP_LINEARS = [(784, 500), (500, 500), (500, 100), (50, 500), (500, 500), (500, 784)]


@pytest.mark.parametrize(
    "experiment, image_shape, linears",
    [("bench_mlp_mnist", (1, 28, 28), MLP_LINEARS), ("bench_conv_sprites", (1, 64, 64), None)],
)
def test_hand_written_loss_is_the_presets_training_loss(tmp_path, experiment, image_shape, linears):
    cfg = make_cfg(tmp_path, [f"experiment={experiment}"])
    assert cfg.model.optimizer.fused and cfg.trainer.limit_val_batches == 0 and not cfg.test
    assert set(cfg.callbacks) == {"step_timer", "checkpoint"}
    assert cfg.callbacks.step_timer.warmup_steps == bench.WARMUP_STEPS
    torch.manual_seed(0)
    vae = instantiate(cfg.model, image_shape=image_shape, _convert_="all")
    if linears is not None:  # 784-500-500-50 with ReLU; the encoder gives mean and log-variance
        layers = [m for m in vae.modules() if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in layers] == linears
        assert (cfg.data.batch_size, cfg.model.optimizer.lr) == (128, 1e-3)
        assert all(
            isinstance(m, nn.ReLU) for net in (vae.encoder, vae.decoder) for m in net.net[1::2]
        )
    nets = nn.ModuleDict({"encoder": vae.encoder, "decoder": vae.decoder})
    x = torch.bernoulli(torch.full((6, *image_shape), 0.3))
    torch.manual_seed(1)
    expected = vae.training_loss(vae.draw(x), kl_weight=1.0)
    for tuned in (False, True):
        torch.manual_seed(1)  # the same draw of z
        loss = bench.negative_elbo(nets, x, tuned)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


HAND_WRITTEN_SLOPE = [
    (experiment, overrides)
    for name, (experiment, overrides, _) in bench.SLOPE.items()
    if name not in bench.MODULE
]


@pytest.mark.parametrize("experiment, overrides", HAND_WRITTEN_SLOPE)
def test_slope_hand_written_loss_is_the_presets_training_loss(tmp_path, experiment, overrides):
    """The --slope presets with a hand-written plain loop: a one-layer Gaussian VAE with a
    Bernoulli decoder and the N(0, I) prior, the ELBO or the IWAE bound, as the loop assumes."""
    cfg = make_cfg(tmp_path, [f"experiment={experiment}", *overrides])
    _, vae = build(cfg)
    assert type(vae) is VAE and type(vae.prior) is NormalPrior and not vae.free_bits
    assert (type(vae.posterior), type(vae.likelihood)) == (GaussianPosterior, Bernoulli)
    vae = vae.double()
    nets = nn.ModuleDict({"encoder": vae.encoder, "decoder": vae.decoder})
    x = torch.bernoulli(torch.full((4, *vae.image_shape), 0.3, dtype=torch.float64))
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # vaelab's noise and randn_like(mean) alike
    try:
        torch.manual_seed(1)
        expected = vae.training_loss(vae.draw(x), kl_weight=1.0)
        torch.manual_seed(1)  # the same draws of z
        if vae.objective == "iwae":
            loss = bench.negative_iwae(nets, x, num_samples=vae.num_samples)
            torch.manual_seed(1)  # and not the ELBO of the same draws
            assert bench.negative_elbo(nets, x).item() > expected.item() + 0.1
        else:
            assert (vae.objective, vae.num_samples) == ("elbo", 1)
            loss = bench.negative_elbo(nets, x)
    finally:
        torch.set_default_dtype(default_dtype)
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize(
    "experiment",
    ["locatello19_factor_vae_short", "tomczak18_vamp_mnist_short", "kingma14_m2_mnist100_short"],
)
def test_module_loop_steps_every_parameter_of_the_presets_model(tmp_path, experiment):
    """Loop (m) trains the preset's own model with its whole loss: every parameter moves (the
    FactorVAE's discriminator, the VampPrior's pseudo-inputs, M2's classifier), and nothing is
    logged."""
    cfg = make_cfg(tmp_path, [f"experiment={experiment}"])
    datamodule, preset_model = build(cfg)
    images = torch.randint(0, 256, (16, *datamodule.image_shape), dtype=torch.uint8)
    labels = torch.arange(16) % 10
    train_set = InMemoryImages(images, labels)
    if experiment.startswith("kingma14_m2"):  # 4 labelled images in front of each batch
        train_set = PartlyLabelled(images, labels, labelled=torch.arange(6), per_batch=4)
    model = bench.own_model(cfg, train_set)
    assert type(model) is type(preset_model)
    loss = bench.module_loss(model, train_set, binarize=True)
    before = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Lightning warns on self.log without a Trainer
        bench.plain_epochs(model, images, 1, 8, {"lr": 1e-3}, binarize=True, loss=loss)
    assert all((p != b).any() for p, b in zip(model.parameters(), before, strict=True))


def test_plain_loops_adam_takes_the_presets_steps(tmp_path):
    """The plain loop's default Adam at `plain_adam`'s settings steps as the preset's fused Adam
    (family_mnist_short: eps 1e-4), where gradients near eps make Adam's default eps differ."""
    cfg = make_cfg(tmp_path, ["experiment=family_mnist_short"])
    adam = bench.plain_adam(cfg.model.optimizer)
    assert "fused" not in adam and adam["eps"] == 1e-4
    gradient = torch.logspace(-6, -2, 50)
    moved = {}
    for name, make in {
        "preset": instantiate(cfg.model.optimizer),
        "plain": lambda params: torch.optim.Adam(params, **adam),
        "default eps": lambda params: torch.optim.Adam(params, lr=adam["lr"]),
    }.items():
        weight = nn.Parameter(torch.zeros(50))
        optimizer = make(params=[weight])
        for _ in range(3):
            weight.grad = gradient.clone()
            optimizer.step()
        moved[name] = weight.detach()
    torch.testing.assert_close(moved["plain"], moved["preset"], rtol=1e-6, atol=1e-12)
    assert not torch.allclose(moved["default eps"], moved["preset"], rtol=1e-2)


def test_preset_checkpoint_keeps_the_time_of_the_steps_after_the_warm_up(tmp_path):
    """What bench.py reads as way (a)'s time: steps warmup+1 .. max_steps, in the checkpoint."""
    overrides = ["experiment=bench_conv_sprites", "data.size=1000", "trainer.max_steps=14"]
    start = time.perf_counter()
    train(make_cfg(tmp_path, overrides))
    wall = time.perf_counter() - start
    checkpoint = torch.load(tmp_path / "checkpoints" / "bench.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 14
    timed = checkpoint["callbacks"]["StepTimer"]
    assert timed["steps"] == 14 - bench.WARMUP_STEPS
    assert 0 < timed["seconds"] < wall


class SlowBatchEnd(Callback):
    """Sleeps 30 ms after every batch: time the breakdown must put in `between`."""

    def on_train_batch_end(self, *args) -> None:
        time.sleep(0.03)


@pytest.mark.parametrize("steps_per_call", [1, 3])
def test_step_phases_count_each_step_after_the_warm_up_once(tmp_path, steps_per_call):
    path = tmp_path / "phases.json"
    phases = StepPhases(str(path), warmup_steps=3)
    cfg = make_cfg(
        tmp_path,
        ["data.size=200", "data.batch_size=8", "trainer.max_steps=12", "trainer.max_epochs=-1"]
        + ["+trainer.limit_val_batches=0", "test=false", "eval.plausibility_samples=0"]
        + [f"model.steps_per_call={steps_per_call}"],
    )
    datamodule, model = build(cfg)
    trainer = instantiate(cfg.trainer, callbacks=[SlowBatchEnd(), phases], logger=False)
    trainer.fit(model, datamodule=datamodule)
    record = json.loads(path.read_text())
    calls = (12 - 3) // steps_per_call  # the gaps between calls after step 3
    assert record["counts"] == {**dict.fromkeys(PHASES, 12 - 3), "between": calls}
    ms = record["ms_per_step"]  # each call's 30 ms shared by its steps
    assert ms["between"] >= 30 / steps_per_call and all(ms[phase] > 0 for phase in PHASES)


WORKLOADS = [
    *bench.EXPERIMENTS.values(),
    *bench.BREAKDOWN.values(),
    *((experiment, overrides) for experiment, overrides, _ in bench.SLOPE.values()),
]


@pytest.mark.parametrize("experiment, overrides", WORKLOADS)
def test_every_bench_workload_builds(tmp_path, experiment, overrides):
    """A renamed preset or setting fails here, not after minutes of `make bench`."""
    cfg = make_cfg(tmp_path, [f"experiment={experiment}", *overrides])
    datamodule, model = build(cfg)
    assert model.steps_per_call == cfg.model.get("steps_per_call", 1)
