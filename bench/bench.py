"""`make bench`: samples/s of the same VAE trained three ways, alternated, several repeats.

(a) vaelab    `python train.py experiment=bench_mlp_mnist` (bench_conv_sprites) in a subprocess.
              Timed: the steps after the first WARMUP_STEPS, by the preset's StepTimer callback,
              read from the checkpoint the preset writes at the last step. Start-up (imports,
              reading the data, building the Trainer, the warm-up steps) is printed apart.
(b) textbook  the loop people write by hand: default torch.optim.Adam (a for-loop over the
              parameters on CPU), each batch indexed from the float dataset by a slice of a random
              permutation, dynamic binarisation by torch.bernoulli on the batch.
(c) tuned     the fastest exact loop found: fused Adam (one kernel for all parameters, the same
              update up to float rounding: the script prints the difference from (b)), batches
              as contiguous slices of the dataset permuted once (counted in the time) and
              vaelab's Bernoulli log-likelihood (on a CPU its own kernel, vaelab.likelihoods).

All three train the nets of the preset's config on the same training split for the preset's
trainer.max_steps steps, and all three are timed from the end of step WARMUP_STEPS to the end of
the last step, leaving out the one-off costs of the first steps (allocations, kernel selection,
CUDA's start-up), which (a) would otherwise pay in its new process and (b), (c) in the bench's.
The order of a, b, c rotates from one repeat to the next, so drifting load on a shared machine
falls on each alike.

    python bench/bench.py --data-root ../shared/data --repeats 3

`--breakdown` instead shows where a step's time goes in the presets users run
(BREAKDOWN: as shipped, with their callbacks and logger), measured by
`vaelab.callbacks.timing.StepPhases` inside train.py, beside the same phases of the tuned loop
(c) on the same nets and batch: forward (model and loss), backward, optimizer, and what happens
between two steps (callbacks, loggers, progress bar, the next batch, Lightning's loop).

`--slope` times what users run end to end (SLOPE: the presets as shipped, with validation,
callbacks and a CSV logger) for two epoch counts, and takes the time per epoch as the slope
between them, so that start-up and exit cancel; beside it the same slope of the plain loop
(default Adam at the preset's settings, a permutation an epoch, torch.bernoulli per batch) on the
same nets and data.
For the presets whose model the bench has not written by hand (MODULE: VampPrior, IAF, two
stochastic layers, the Locatello et al. objectives, M2) the plain loop is loop (m): the same
loop around the preset's own model, its `draw` and `training_loss` (M2: its training step, with
labelled images drawn at random in front of each batch), so it times what the framework adds
around the same arithmetic. `--override KEY=VALUE` (repeatable) changes the preset there.
`--flush-plain` has the hand-written loops flush subnormal floats to zero, as vaelab does on a
CPU (`flush_denormal`), for the strongest loop one could write by hand.
"""

import argparse
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import Dataset

from vaelab.callbacks.timing import synchronize
from vaelab.components import build
from vaelab.cuda_check import drop_nvml_check_without_gpu
from vaelab.data.labels import UNLABELLED, PartlyLabelled
from vaelab.likelihoods import Bernoulli
from vaelab.m2 import M2
from vaelab.vae import VAE

ROOT = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 10  # the presets' StepTimer warmup_steps
BERNOULLI = Bernoulli()  # loop (c)'s log-likelihood, made once rather than every step
EXPERIMENTS = {  # workload: (preset, its overrides)
    "mlp_mnist": ("bench_mlp_mnist", []),
    "mlp_mnist_b20": ("bench_mlp_mnist", ["data.batch_size=20"]),  # the papers' small batches
    # the same with 10 optimizer steps in each Lightning training_step
    "mlp_mnist_s10": ("bench_mlp_mnist", ["model.steps_per_call=10"]),
    "mlp_mnist_b20_s10": ("bench_mlp_mnist", ["data.batch_size=20", "model.steps_per_call=10"]),
    "conv_sprites": ("bench_conv_sprites", []),
}
BREAKDOWN = {  # workload: (preset as users run it, overrides)
    "burda16_vae_mnist_short": ("burda16_vae_mnist_short", []),
    "burda16_vae_mnist_b20_s1": ("burda16_vae_mnist", ["model.steps_per_call=1"]),
    "burda16_vae_mnist_b20": ("burda16_vae_mnist", []),  # the paper's batch, 10 steps a call
    "sprites_conv_vae": ("sprites_conv_vae", []),
    "family_mnist_short": ("family_mnist_short", []),
    "locatello19_vae_short": ("locatello19_vae_short", []),  # Locatello et al.'s conv nets
}
SLOPE = {  # workload: (preset as users run it, overrides, the two epoch counts timed)
    "burda16_vae_mnist_short": ("burda16_vae_mnist_short", [], (3, 15)),
    "burda16_vae_mnist_b20": ("burda16_vae_mnist", [], (5, 15)),  # batch 20, validation every 5
    "sprites_conv_vae": ("sprites_conv_vae", [], (1, 3)),  # 90,000 training sprites an epoch
    # the footing of the family presets (iaf, vamp, ...): 200-unit tanh MLPs, batch 100
    "family_mnist_short": ("family_mnist_short", [], (2, 8)),
    # 50 draws a step: about a minute an epoch on 2 cores; validation every 2 epochs
    "burda16_iwae_k50_mnist_short": ("burda16_iwae_k50_mnist_short", [], (1, 3)),
    "mnist_vae": ("mnist_vae", [], (2, 6)),
    "kingma14_m1_mnist": ("kingma14_m1_mnist", [], (5, 10)),  # validation every 5 epochs
    "tomczak18_vamp_mnist_short": ("tomczak18_vamp_mnist_short", [], (2, 8)),
    "kingma16_iaf_mnist_short": ("kingma16_iaf_mnist_short", [], (2, 8)),
    "burda16_vae2_mnist_short": ("burda16_vae2_mnist_short", [], (5, 15)),
    "burda16_iwae2_k50_mnist_short": ("burda16_iwae2_k50_mnist_short", [], (1, 3)),
    "sprites_vamp": ("sprites_vamp", [], (1, 3)),
    "locatello19_vae_short": ("locatello19_vae_short", [], (1, 3)),
    "locatello19_beta_tcvae_short": ("locatello19_beta_tcvae_short", [], (1, 3)),
    "locatello19_factor_vae_short": ("locatello19_factor_vae_short", [], (1, 3)),
    "locatello19_dip_vae_short": ("locatello19_dip_vae_short", [], (1, 3)),
    # 100 labelled images in front of each batch of 100; validation every epoch
    "kingma14_m2_mnist100_short": ("kingma14_m2_mnist100_short", [], (1, 3)),
    "seed_story": ("seed_story", [], (5, 10)),  # its VAE (model=mlp_vae); validation every 5
}
# loop (m), the plain loop of the SLOPE presets that the bench has no hand-written model for:
# the preset's own model (vaelab.vae.VAE or a subclass) stepped by hand, so it times what the
# framework adds around the same arithmetic (Lightning, callbacks, validation, logging, data)
MODULE = {
    "tomczak18_vamp_mnist_short",
    "kingma16_iaf_mnist_short",
    "burda16_vae2_mnist_short",
    "burda16_iwae2_k50_mnist_short",
    "sprites_vamp",
    "locatello19_vae_short",
    "locatello19_beta_tcvae_short",
    "locatello19_factor_vae_short",
    "locatello19_dip_vae_short",
    "kingma14_m2_mnist100_short",
}
Loss = Callable[[nn.Module, Tensor], Tensor]  # a plain loop's loss of the nets on a batch
CPU_KERNELS = ("channels_last", "native_output")  # the conv nets' options a hand-written loop lacks
ADAM_IMPLEMENTATION = ("_target_", "_partial_", "fused", "foreach", "capturable")  # not settings
ADAM_VARIANTS = {
    "for-loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


def compose_preset(experiment: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", [f"experiment={experiment}", *overrides])


def data_root(experiment: str, overrides: list[str], args: argparse.Namespace) -> list[str]:
    """The overrides that read a downloaded dataset from --data-root (none for the sprites)."""
    if "root" not in compose_preset(experiment, overrides).data:
        return []
    return [f"data.root={Path(args.data_root).resolve()}", "data.download=false"]


def build_nets(
    cfg: DictConfig, image_shape: tuple[int, ...], device: torch.device, by_hand: bool = False
) -> nn.Module:
    """The preset's encoder and decoder, initialised from seed 0; `by_hand`: in PyTorch's
    default memory format and with torch's transposed convs, as a hand-written loop has them
    (vaelab's conv nets: channels-last, and PyTorch's own kernel for a one-channel output layer)."""
    torch.manual_seed(0)
    latent_dim = cfg.model.latent_dim
    nets = {"encoder": cfg.model.encoder, "decoder": cfg.model.decoder}
    if by_hand:
        nets = {
            k: {**net, **{key: False for key in CPU_KERNELS if key in net}}
            for k, net in nets.items()
        }
    encoder = instantiate(nets["encoder"])(image_shape, 2 * latent_dim)
    decoder = instantiate(nets["decoder"])(latent_dim, image_shape)
    return nn.ModuleDict({"encoder": encoder, "decoder": decoder}).to(device)


def negative_elbo(nets: nn.Module, x: Tensor, tuned: bool = False) -> Tensor:
    """-ELBO, batch mean: Bernoulli decoder, one draw of z, KL(q(z|x) || N(0, I)) in closed form.
    The log-likelihood by torch's binary_cross_entropy_with_logits, or `tuned` by vaelab's
    Bernoulli (on a CPU its own kernel, the same values to float rounding)."""
    mean, log_var = nets.encoder(x).chunk(2, dim=-1)
    z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
    logits = nets.decoder(z)
    if tuned:
        nll = -BERNOULLI.log_prob(x, logits).sum()
    else:
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kl = 0.5 * (mean.square() + log_var.exp() - 1 - log_var).sum()
    return (nll + kl) / len(x)


def negative_iwae(nets: nn.Module, x: Tensor, num_samples: int) -> Tensor:
    """-L_k, batch mean (Burda et al. 2016): k = num_samples draws of z per image, weighed by
    log p(x|z) + log p(z) - log q(z|x), their log-mean-exp; torch's BCE-with-logits."""
    mean, log_var = nets.encoder(x).chunk(2, dim=-1)
    eps = torch.randn(num_samples, *mean.shape, device=x.device)
    z = mean + torch.exp(0.5 * log_var) * eps
    logits = nets.decoder(z)
    bce = F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
    log_ratio = 0.5 * (eps.square() + log_var - z.square()).sum(-1)  # log p(z) - log q(z|x)
    log_weights = -bce.flatten(2).sum(-1) + log_ratio
    return -(torch.logsumexp(log_weights, 0) - math.log(num_samples)).mean()


def own_model(cfg: DictConfig, train_set: Dataset) -> VAE:
    """Loop (m)'s model: the preset's, initialised from seed 0, logging nothing, given the
    sizes it reads from the Trainer's training data in vaelab (beta-TCVAE's N, M2's N_l)."""
    torch.manual_seed(0)
    _, model = build(cfg)
    model.logs_this_step = lambda: False  # a hand-written loop computes no train/* values
    if model.objective == "beta_tcvae" and model.dataset_size is None:
        model.dataset_size = len(train_set)
    if isinstance(model, M2):
        model.sizes = {"labels": train_set.num_labels, "all": len(train_set)}
        model.sizes["per_batch"] = train_set.per_batch
    return model


def own_loss(model: VAE, x: Tensor) -> Tensor:
    """Loop (m)'s loss: the model's own training loss on one `draw` (log-densities only where
    the loss needs them, as vaelab's step), at the final KL weight."""
    draws = model.draw(x, densities=model.trains_on_densities)
    return model.training_loss(draws, model.kl_weight)


def labelled_loss(model: M2, x: Tensor, labelled: tuple[Tensor, Tensor], binarize: bool) -> Tensor:
    """Loop (m)'s loss for M2: `per_batch` of the labelled images (float) drawn at random and
    binarised as x, in front of the unlabelled batch x as vaelab's batches hold them, through
    M2's training step."""
    images, labels = labelled
    pick = torch.randint(len(labels), (model.sizes["per_batch"],), device=x.device)
    x_labelled = torch.bernoulli(images[pick]) if binarize else images[pick]
    unlabelled = torch.full((len(x),), UNLABELLED, device=x.device)
    batch = (torch.cat([x_labelled, x]), torch.cat([labels[pick], unlabelled]))
    return model.training_step(batch, 0)


def module_loss(model: VAE, train_set: Dataset, binarize: bool) -> Loss:
    """Loop (m)'s loss for this model and training set."""
    if not isinstance(train_set, PartlyLabelled):
        return own_loss
    images = train_set.images[train_set.labelled].float() / 255
    labelled = (images, train_set.labels[train_set.labelled])
    return functools.partial(labelled_loss, labelled=labelled, binarize=binarize)


def timed_steps(
    nets: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Callable[[int], Tensor],
    steps: int,
    binarize: bool,
    tuned: bool = False,
) -> float:
    """Seconds for the steps after WARMUP_STEPS of `steps` plain training steps on batch(step)."""
    device = next(nets.parameters()).device
    start = time.perf_counter()  # reset after the warm-up; runs shorter than it time every step
    for step in range(steps):
        if step == WARMUP_STEPS:
            synchronize(device)
            start = time.perf_counter()
        x = batch(step)
        if binarize:
            x = torch.bernoulli(x)
        loss = negative_elbo(nets, x, tuned)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    synchronize(device)
    return time.perf_counter() - start


def hand_phases(
    nets: nn.Module, images: Tensor, steps: int, batch_size: int, lr: float, binarize: bool
) -> dict[str, float]:
    """ms per step of the tuned loop (c)'s forward, backward and optimizer step, and of the
    rest (drawing the batch and its binarisation), after WARMUP_STEPS."""
    optimizer = torch.optim.Adam(nets.parameters(), lr=lr, fused=True)
    data = (images.float() / 255)[torch.randperm(len(images), device=images.device)]
    device = data.device
    seconds = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0, "between": 0.0}
    for step in range(steps):
        marks = [time.perf_counter()]
        x = data[step * batch_size : (step + 1) * batch_size]
        x = torch.bernoulli(x) if binarize else x
        synchronize(device)
        marks.append(time.perf_counter())
        optimizer.zero_grad()
        loss = negative_elbo(nets, x, tuned=True)
        synchronize(device)
        marks.append(time.perf_counter())
        loss.backward()
        synchronize(device)
        marks.append(time.perf_counter())
        optimizer.step()
        synchronize(device)
        marks.append(time.perf_counter())
        if step >= WARMUP_STEPS:
            phases = ("between", "forward", "backward", "optimizer")
            for phase, start, end in zip(phases, marks[:-1], marks[1:], strict=True):
                seconds[phase] += end - start
    return {phase: 1e3 * value / (steps - WARMUP_STEPS) for phase, value in seconds.items()}


def textbook_loop(
    nets: nn.Module, images: Tensor, steps: int, batch_size: int, lr: float, binarize: bool
) -> float:
    """(b): the plain loop: default Adam, each batch gathered by a slice of a permutation."""
    optimizer = torch.optim.Adam(nets.parameters(), lr=lr)
    data = images.float() / 255
    order = torch.randperm(len(data), device=data.device)

    def batch(step: int) -> Tensor:
        return data[order[step * batch_size : (step + 1) * batch_size]]

    return timed_steps(nets, optimizer, batch, steps, binarize)


def tuned_loop(
    nets: nn.Module, images: Tensor, steps: int, batch_size: int, lr: float, binarize: bool
) -> float:
    """(c): the fastest exact loop (the same draws as (b)): fused Adam, contiguous batches,
    vaelab's Bernoulli log-likelihood."""
    optimizer = torch.optim.Adam(nets.parameters(), lr=lr, fused=True)
    data = images.float() / 255
    order = torch.randperm(len(data), device=data.device)
    data = data[order]  # one gather per epoch, then every batch is a view

    def batch(step: int) -> Tensor:
        return data[step * batch_size : (step + 1) * batch_size]

    return timed_steps(nets, optimizer, batch, steps, binarize, tuned=True)


def alternate(ways: dict[str, Callable[[Path], float]], repeats: int) -> dict[str, float]:
    """The median of each way's samples/s over `repeats` rounds, the ways' order rotating from
    one round to the next so that a shared machine's drifting load falls on each alike."""
    rates: dict[str, list[float]] = {key: [] for key in ways}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(repeats):
            shift = repeat % len(ways)
            order = list(ways)[shift:] + list(ways)[:shift]
            for key in order:
                rates[key].append(ways[key](Path(scratch) / f"{key}-{repeat}"))
            line = "  ".join(f"{key} {rates[key][-1]:.0f}" for key in ways)
            print(f"  repeat {repeat + 1} ({' '.join(order)}): {line} samples/s", flush=True)
    return {key: statistics.median(values) for key, values in rates.items()}


def train_subprocess(command: list[str]) -> float:
    """Wall seconds of train.py run as `command` with this process's thread count; stops the
    bench with train.py's error if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def framework_run(command: list[str], folder: Path, steps: int) -> tuple[float, float]:
    """(a): seconds of `steps` - WARMUP_STEPS steps at the rate the preset's StepTimer measured
    after the warm-up, and of the whole subprocess."""
    wall = train_subprocess([*command, f"hydra.run.dir={folder}"])
    checkpoint = torch.load(folder / "checkpoints" / "bench.ckpt", weights_only=True)
    timer = checkpoint["callbacks"]["StepTimer"]  # with model.steps_per_call = S its steps may
    if timer["steps"] == 0:  # start past 10
        raise SystemExit(f"{' '.join(command)}: no step was timed after the warm-up")
    return timer["seconds"] / timer["steps"] * (steps - WARMUP_STEPS), wall


def adam_step_ms(nets: nn.Module, repeats: int = 5, steps: int = 10) -> dict[str, float]:
    """Median ms per Adam step on these nets' parameters for each implementation, interleaved."""
    optimizers = {}
    for name, options in ADAM_VARIANTS.items():
        params = [p.detach().clone().requires_grad_() for p in nets.parameters()]
        for param in params:
            param.grad = torch.randn_like(param)
        optimizers[name] = torch.optim.Adam(params, lr=1e-3, **options)
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(repeats):
        for name, optimizer in optimizers.items():
            device = optimizer.param_groups[0]["params"][0].device
            synchronize(device)
            start = time.perf_counter()
            for _ in range(steps):
                optimizer.step()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / steps * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def flat_parameters(nets: nn.Module) -> Tensor:
    return torch.cat([p.detach().flatten() for p in nets.parameters()])


def compare_loops(make_nets: Callable[..., nn.Module], **loop_args) -> tuple[float, float]:
    """Largest |(c) - (b)| over the parameters after the same steps, data and noise, and the
    largest change those steps made to a parameter."""
    initial = flat_parameters(make_nets())
    results = []
    for loop in (tuned_loop, textbook_loop):
        nets = make_nets(by_hand=loop is textbook_loop)  # (b) in PyTorch's default layout
        torch.manual_seed(1)
        loop(nets, **loop_args)
        results.append(flat_parameters(nets))
    change = (results[1] - initial).abs().max().item()
    return (results[0] - results[1]).abs().max().item(), change


def bench(name: str, args: argparse.Namespace, device: torch.device) -> None:
    experiment, overrides = EXPERIMENTS[name]
    overrides = [*overrides, *data_root(experiment, overrides, args)]
    cfg = compose_preset(experiment, overrides)
    steps = args.steps or cfg.trainer.max_steps
    batch_size, lr = cfg.data.batch_size, cfg.model.optimizer.lr
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    images = datamodule.datasets["train"].images.to(device)
    if steps * batch_size > len(images) or steps <= WARMUP_STEPS:
        raise SystemExit(
            f"{experiment}: {steps} steps of {batch_size} must exceed the {WARMUP_STEPS} warm-up "
            "steps and fit in one epoch"
        )

    def make_nets(by_hand: bool = False) -> nn.Module:
        return build_nets(cfg, datamodule.image_shape, device, by_hand)

    loop_args = {
        "images": images,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "binarize": datamodule.binarize == "dynamic",
    }
    samples = (steps - WARMUP_STEPS) * batch_size
    print(
        f"\n{name}: experiment={experiment}, {steps} steps x {batch_size}, the last "
        f"{steps - WARMUP_STEPS} timed ({samples} samples)"
    )
    adam = adam_step_ms(make_nets())
    print("  Adam step (ms): " + "  ".join(f"{k} {v:.2f}" for k, v in adam.items()))
    for check_steps in (1, 5):
        difference, change = compare_loops(make_nets, **{**loop_args, "steps": check_steps})
        print(
            f"  (c) vs (b) after {check_steps} step(s), same data and noise: parameters differ "
            f"by <= {difference:.1e}; the steps moved them by up to {change:.1e}"
        )

    accelerator = "gpu" if device.type == "cuda" else "cpu"
    command = [sys.executable, str(ROOT / "train.py"), f"experiment={experiment}", *overrides]
    command += [f"trainer.max_steps={steps}", f"trainer.accelerator={accelerator}"]
    overheads = []

    def vaelab(folder: Path) -> float:
        seconds, wall = framework_run(command, folder, steps)
        overheads.append(wall - seconds)
        return samples / seconds

    ways = {
        "a": vaelab,
        "b": lambda folder: samples / textbook_loop(make_nets(by_hand=True), **loop_args),
        "c": lambda folder: samples / tuned_loop(make_nets(), **loop_args),
    }
    median = alternate(ways, args.repeats)
    print(
        f"  median samples/s: (a) vaelab {median['a']:.0f}  (b) textbook {median['b']:.0f}  "
        f"(c) tuned {median['c']:.0f}"
    )
    print(
        f"  a/b = {median['a'] / median['b']:.2f} (goal >= 1.3)  "
        f"a/c = {median['a'] / median['c']:.2f} (goal >= 0.95)"
    )
    overhead = statistics.median(overheads)
    print(f"  (a) outside the timed training (start-up, data, exit): {overhead:.1f} s per run")


def breakdown(name: str, args: argparse.Namespace, device: torch.device) -> None:
    """vaelab's StepPhases in the preset as shipped beside hand_phases, ms per step."""
    experiment, overrides = BREAKDOWN[name]
    overrides = [*overrides, "logger=csv"]  # W&B could not reach its server here: CSV instead
    overrides += data_root(experiment, overrides, args)
    cfg = compose_preset(experiment, overrides)
    steps = args.steps or 60
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    images = datamodule.datasets["train"].images.to(device)
    if steps * cfg.data.batch_size > len(images) or steps <= WARMUP_STEPS:
        raise SystemExit(f"{steps} steps must exceed {WARMUP_STEPS} and fit in one epoch")
    nets = build_nets(cfg, datamodule.image_shape, device)
    hand = hand_phases(
        nets,
        images,
        steps,
        cfg.data.batch_size,
        cfg.model.optimizer.lr,
        datamodule.binarize == "dynamic",
    )
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "phases.json"
        command = [sys.executable, str(ROOT / "train.py"), f"experiment={experiment}", *overrides]
        command += [
            f"trainer.max_steps={steps}",
            "test=false",
            "+callbacks.step_phases._target_=vaelab.callbacks.timing.StepPhases",
            f"+callbacks.step_phases.path={path}",
            f"+callbacks.step_phases.warmup_steps={WARMUP_STEPS}",
            f"hydra.run.dir={Path(scratch) / 'run'}",
        ]
        train_subprocess(command)
        vaelab = json.loads(path.read_text())["ms_per_step"]
    print(
        f"\n{name}: experiment={experiment} as shipped, batch {cfg.data.batch_size}, steps "
        f"{WARMUP_STEPS + 1}-{steps} (ms per step)"
    )
    print(f"  {'phase':<10} {'vaelab':>8} {'tuned loop (c)':>15}")
    for phase in vaelab:
        print(f"  {phase:<10} {vaelab[phase]:>8.2f} {hand[phase]:>15.2f}")
    print(f"  {'total':<10} {sum(vaelab.values()):>8.2f} {sum(hand.values()):>15.2f}")


def plain_adam(optimizer: DictConfig) -> dict[str, Any]:
    """The preset's Adam settings (lr, and betas or eps where it sets them) without the choice of
    implementation (`fused`, `foreach`): the plain loop's default Adam then takes the same
    steps as the preset's."""
    settings = OmegaConf.to_container(optimizer, resolve=True)
    return {key: value for key, value in settings.items() if key not in ADAM_IMPLEMENTATION}


def plain_epochs(
    nets: nn.Module,
    images: Tensor,
    epochs: int,
    batch_size: int,
    adam: dict[str, Any],
    binarize: bool,
    loss: Loss = negative_elbo,
) -> float:
    """Seconds of `epochs` epochs of the plain loop: default Adam at the preset's settings
    (`plain_adam`), a permutation an epoch, each batch indexed by a slice of it (the last
    partial one dropped), torch.bernoulli per batch. A vaelab model's optimizer takes its
    parameter groups (FactorVAE: the discriminator's)."""
    groups = nets.parameter_groups() if isinstance(nets, VAE) else nets.parameters()
    optimizer = torch.optim.Adam(groups, **adam)
    data = images.float() / 255
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(data), device=data.device)
        for step in range(len(data) // batch_size):
            x = data[order[step * batch_size : (step + 1) * batch_size]]
            value = loss(nets, torch.bernoulli(x) if binarize else x)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
    synchronize(data.device)
    return time.perf_counter() - start


def slope(name: str, args: argparse.Namespace, device: torch.device) -> None:
    """Samples/s end to end: the preset as shipped (validation, callbacks, logger) for E1 and E2
    epochs, its time per epoch taken as the slope so that start-up and exit cancel, against the
    plain loop's slope on the same nets, batch and training set; alternated, `repeats` times."""
    experiment, overrides, (short, long) = SLOPE[name]
    overrides = [*overrides, *args.override, "logger=csv", "test=false"]
    overrides += data_root(experiment, overrides, args)
    cfg = compose_preset(experiment, overrides)
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    train_set = datamodule.datasets["train"]
    images = train_set.images.to(device)  # M2's: the labelled and the unlabelled
    batch_size, adam = cfg.data.batch_size, plain_adam(cfg.model.optimizer)
    binarize = datamodule.binarize == "dynamic"
    loss = negative_elbo
    if cfg.model.objective == "iwae":
        loss = functools.partial(negative_iwae, num_samples=cfg.model.num_samples)

    def vaelab(epochs: int, folder: Path) -> float:
        command = [sys.executable, str(ROOT / "train.py"), f"experiment={experiment}", *overrides]
        return train_subprocess(
            [*command, f"trainer.max_epochs={epochs}", f"hydra.run.dir={folder}"]
        )

    def plain(epochs: int, folder: Path) -> float:
        if name not in MODULE:
            nets = build_nets(cfg, datamodule.image_shape, device, by_hand=True)
            return plain_epochs(nets, images, epochs, batch_size, adam, binarize, loss)
        model = own_model(cfg, train_set).to(device)
        own = module_loss(model, train_set.to(device), binarize)
        return plain_epochs(model, images, epochs, batch_size, adam, binarize, own)

    def rate(run: Callable[[int, Path], float]) -> Callable[[Path], float]:
        """Samples/s of an epoch, from the runs of `short` and `long` epochs."""

        def measure(folder: Path) -> float:
            seconds = [run(epochs, folder / str(epochs)) for epochs in (short, long)]
            return len(images) * (long - short) / (seconds[1] - seconds[0])

        return measure

    print(
        f"\n{name}: experiment={experiment} {' '.join(args.override) or 'as shipped'}, batch "
        f"{batch_size}, {short} and {long} epochs of {len(images)} images; plain loop: "
        f"{'loop (m), the preset model stepped by hand' if name in MODULE else 'written by hand'}"
    )
    median = alternate({"vaelab": rate(vaelab), "plain": rate(plain)}, args.repeats)
    print(
        f"  median samples/s: vaelab {median['vaelab']:.0f}  plain {median['plain']:.0f}  "
        f"ratio {median['vaelab'] / median['plain']:.2f} (goal >= 1.0)"
    )


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data", help="holds MNIST/raw")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=0, help="default: the preset's max_steps")
    workloads = sorted({*EXPERIMENTS, *BREAKDOWN, *SLOPE})
    parser.add_argument("--only", choices=workloads, help="one workload")
    parser.add_argument("--threads", type=int, default=0, help="default: torch's choice")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="with --slope: a Hydra override of the preset, to measure an option (repeatable)",
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="where a step's time goes (BREAKDOWN presets)"
    )
    parser.add_argument(
        "--slope", action="store_true", help="end to end, the presets against the plain loop"
    )
    parser.add_argument(
        "--flush-plain",
        action="store_true",
        help="the hand-written loops flush subnormal floats to zero, as vaelab does on a CPU",
    )
    args = parser.parse_args()
    if args.flush_plain:  # before any parallel op: torch's worker threads copy it when they start
        torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    drop_nvml_check_without_gpu()  # the hand-written loops run as a script without Lightning would
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else cpu_name()
    print(
        f"vaelab bench {datetime.now():%Y-%m-%d %H:%M}: {device.type} ({name}, "
        f"{torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"lightning {lightning.__version__}, {args.repeats} repeats"
        f"{', hand-written loops flushing subnormals' if args.flush_plain else ''}"
    )
    mode = BREAKDOWN if args.breakdown else SLOPE if args.slope else EXPERIMENTS
    if args.only and args.only not in mode:
        parser.error(f"--only {args.only} is not a workload of this mode: {', '.join(mode)}")
    if args.breakdown:
        for workload in [args.only] if args.only else BREAKDOWN:
            breakdown(workload, args, device)
        return
    if args.slope:
        for workload in [args.only] if args.only else SLOPE:
            slope(workload, args, device)
        return
    for workload in [args.only] if args.only else EXPERIMENTS:
        bench(workload, args, device)


if __name__ == "__main__":
    main()
