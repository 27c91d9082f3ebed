"""The VAE as one LightningModule: encoder, posterior, prior, decoder and the ELBO.

A model is a posterior q(z|x) (`model/posterior`), a prior p(z) (`model/prior`), a likelihood
p(x|z) (`model/likelihood`) and an objective. Every loss term is per example, in nats (Kingma &
Welling 2014, eq. 10; Kingma 2017, ch. 2):

    reconstruction = E_q(z|x)[log p(x|z)]   (`num_samples` Monte-Carlo draws, all constants)
    kl             = KL(q(z|x) || p(z))     closed form for a Gaussian q and p = N(0, I), else
                                            mean_s log q(z_s|x) - log p(z_s) over the draws
    elbo           = reconstruction - kl    (a lower bound on log p(x))
    loss           = -(reconstruction - beta_t * kl), averaged over the batch

beta_t = `kl_weight` x a schedule's factor at the optimizer step t (`kl_schedule`, over
`kl_warmup_steps` = T steps; vaelab.objectives.kl_schedule_factor): `linear` rises from 0 to 1
over T steps; `cyclical` (Fu et al. 2019) cuts T into `kl_cycles` = M cycles of T/M steps and
rises from 0 to 1 over the first `kl_cycle_ratio` = R of each, then holds 1; after T, 1. With
`stochastic=False` the module is a plain autoencoder: z = encoder(x), no sampling and no KL.

Training objectives (`objective`); whatever the objective, the logged elbo, reconstruction and
kl stay the true ones, and only the loss changes (the terms: vaelab/objectives.py):

    elbo        loss = -(mean_b reconstruction - beta_t * sum_j max(lambda, mean_b KL_j))
                KL_j is latent dimension j's KL; lambda = `free_bits` floors it per dimension,
                averaged over the batch (Kingma et al. 2016, "Improving VI with IAF": free
                bits); lambda = 0 is the plain (beta-)ELBO. With `capacity_max` = C_max > 0
                (Burgess et al. 2018, model=beta_vae): loss = -(mean_b reconstruction) +
                gamma |mean_b KL - C_t|, C_t rising linearly from 0 to C_max over
                `capacity_steps`, gamma = `capacity_weight`; kl_weight is not used.
    iwae        loss = -mean_b log (1/k) sum_s exp(log p(x|z_s) + beta_t (log p(z_s) -
                log q(z_s|x))), z_s ~ q(z|x), k = `num_samples` (Burda et al. 2016; beta_t = 1
                is their bound L_k).
    beta_tcvae  loss = -(mean_b reconstruction) + beta_t (mi + `tc_weight` tc + dim_kl), the
                batch-mean KL split into index-code mutual information, total correlation and
                dimension-wise KL over the minibatch (Chen et al. 2018; alpha = gamma = 1,
                beta = tc_weight >= 0 weighs the total correlation alone). q(z) is estimated by
                `tc_estimator` mws or mss, which need N = `dataset_size`, the training set's
                size: None reads it from the Trainer's training DataLoader (len of its dataset).
    dip_vae     loss = the elbo objective's + lambda_od sum_{i!=j} C_ij^2 + lambda_d sum_i
                (C_ii - 1)^2, C the batch covariance of the posterior means (`dip_type` i) or of
                the aggregate posterior, C = E[diag var] + Cov[mean] (ii); lambda_od =
                `lambda_od`, lambda_d = 10 lambda_od (i) or lambda_od (ii) (Kumar et al. 2018).

beta_tcvae and dip_vae need the Gaussian posterior and the N(0, I) prior. On logging steps the
loss's own terms are logged too: train/capacity, train/mi, train/tc, train/dim_kl and
train/dip_penalty.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning import LightningModule
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

from vaelab.checkpoints import match_state_layouts
from vaelab.errors import ConfigError
from vaelab.likelihoods import Likelihood
from vaelab.objectives import (
    annealed_capacity,
    capacity_penalty,
    check_options,
    dip_covariance,
    dip_penalty,
    kl_decomposition,
    kl_schedule_factor,
)
from vaelab.posteriors.gaussian import Encoded, GaussianPosterior, gaussian_kl
from vaelab.priors.normal import NormalPrior

TERMS = ("elbo", "reconstruction", "kl", "bits_per_dim")
STAGES = ("val", "test")
OBJECTIVES = ("elbo", "iwae", "beta_tcvae", "dip_vae")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def iwae_bound(log_weights: Tensor) -> Tensor:
    """log (1/k) sum_s exp(log_weights[s]) over the leading sample dimension: L_k (Burda et al.)."""
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])


class VAE(LightningModule):
    has_nll = True  # evaluate.py estimates its log p(x) by importance sampling
    semi_supervised = False  # trains on partly labelled batches (data.num_labels)
    step_takes_any_batch = False  # its own training_step takes a call's S batches as one (PCA)

    def __init__(
        self,
        encoder: Callable[..., nn.Module],
        decoder: Callable[..., nn.Module],
        likelihood: Likelihood,
        image_shape: Sequence[int],
        latent_dim: int = 10,
        posterior: Callable[..., GaussianPosterior] = GaussianPosterior,
        prior: Callable[..., NormalPrior] = NormalPrior,
        kl_weight: float = 1.0,
        kl_warmup_steps: int = 0,
        num_samples: int = 1,
        stochastic: bool = True,
        objective: str = "elbo",
        free_bits: float = 0.0,
        kl_schedule: str = "linear",
        kl_cycles: int = 4,
        kl_cycle_ratio: float = 0.5,
        capacity_max: float = 0.0,
        capacity_steps: int = 100_000,
        capacity_weight: float = 1000.0,
        tc_weight: float = 1.0,
        tc_estimator: str = "mss",
        dataset_size: int | None = None,
        dip_type: str = "i",
        lambda_od: float = 10.0,
        compile: bool = False,
        compile_step: str | None = None,
        steps_per_call: int = 1,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
    ) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ConfigError(f"model.latent_dim must be a positive integer, got {latent_dim}")
        if kl_weight < 0:
            raise ConfigError(f"model.kl_weight must be >= 0, got {kl_weight}")
        if num_samples < 1:
            raise ConfigError(f"model.num_samples must be >= 1, got {num_samples}")
        if objective not in OBJECTIVES:
            raise ConfigError(f"model.objective must be one of {OBJECTIVES}, got {objective!r}")
        if free_bits < 0:
            raise ConfigError(f"model.free_bits must be >= 0 nats, got {free_bits}")
        if steps_per_call < 1:
            raise ConfigError(f"model.steps_per_call must be >= 1, got {steps_per_call}")
        own_step = type(self).training_step is not VAE.training_step
        if steps_per_call > 1 and own_step and not self.step_takes_any_batch:
            raise ConfigError(
                f"model.steps_per_call > 1 runs the VAE's own training step, and "
                f"{type(self).__name__} has its own: set model.steps_per_call=1"
            )
        if compile_step is not None:
            check_compile_step(compile_step, compile, stochastic, type(self))
        if objective == "iwae" and (free_bits > 0 or not stochastic):
            raise ConfigError(
                "model.objective=iwae needs a stochastic encoder and no free bits (the IWAE bound "
                "has no separate KL term to floor)"
            )
        objective_settings = {  # checked by vaelab.objectives, kept as attributes
            "kl_schedule": kl_schedule,
            "kl_cycles": kl_cycles,
            "kl_cycle_ratio": kl_cycle_ratio,
            "capacity_max": capacity_max,
            "capacity_steps": capacity_steps,
            "capacity_weight": capacity_weight,
            "tc_weight": tc_weight,
            "tc_estimator": tc_estimator,
            "dataset_size": dataset_size,
            "dip_type": dip_type,
            "lambda_od": lambda_od,
        }
        check_options(
            objective,
            stochastic=stochastic,
            free_bits=free_bits,
            kl_warmup_steps=kl_warmup_steps,
            **objective_settings,
        )
        self.image_shape = tuple(int(size) for size in image_shape)
        self.save_hyperparameters({"image_shape": list(self.image_shape)}, logger=False)
        self.remember(
            latent_dim=latent_dim,
            kl_weight=kl_weight,
            kl_warmup_steps=kl_warmup_steps,
            num_samples=num_samples,
            stochastic=stochastic,
            objective=objective,
            free_bits=free_bits,
            steps_per_call=steps_per_call,
            compile_step=compile_step,
            **objective_settings,
        )
        # several steps a call: the optimizer is stepped here, not by Lightning (training_step)
        self.automatic_optimization = steps_per_call == 1
        self.last_step_of_call = True
        self.likelihood = likelihood
        self.posterior = posterior(latent_dim)
        self.prior = prior(latent_dim, image_shape=self.image_shape)
        if free_bits > 0 and not self.closed_form_kl:
            raise ConfigError(
                "model.free_bits needs the KL per latent dimension, which only the gaussian "
                "posterior with the normal prior has: set model.free_bits=0"
            )
        if objective in ("beta_tcvae", "dip_vae") and not self.closed_form_kl:
            raise ConfigError(
                f"model.objective={objective} needs one stochastic layer with "
                "model/posterior=gaussian and model/prior=normal (it uses q(z|x)'s means and "
                "variances and the N(0, I) prior): pick those, or model.objective=elbo"
            )
        channels, height, width = self.image_shape
        self.encoder = encoder(
            self.image_shape, self.posterior.num_features if stochastic else latent_dim
        )
        self.decoder = decoder(latent_dim, (likelihood.num_params * channels, height, width))
        if compile:  # in place: parameter names, and so checkpoints, stay those of the plain nets
            self.encoder.compile()
            self.decoder.compile()
        if compile_step is not None:  # in place too: the training step's forward, as one graph
            self.compile(mode=compile_step, dynamic=False)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.num_dims = math.prod(self.image_shape)
        terms = (*TERMS, "iwae") if objective == "iwae" else TERMS
        self.metrics = nn.ModuleDict(
            {f"{stage}_{term}": MeanMetric() for stage in STAGES for term in terms}
        )

    def remember(self, **settings: Any) -> None:
        """Keep settings as attributes and in the checkpoints' hyperparameters."""
        self.save_hyperparameters({**self.hparams, **settings}, logger=False)
        for name, value in settings.items():
            setattr(self, name, value)

    @property
    def closed_form_kl(self) -> bool:
        """Whether KL(q || p) has a closed form: a Gaussian posterior and the N(0, I) prior."""
        return self.posterior.gaussian and self.prior.standard

    @property
    def trains_on_densities(self) -> bool:
        """Whether the training loss needs the draws' log p(z) and log q(z|x): for the IWAE
        bound, or a KL estimated from them. Otherwise a training step leaves them out."""
        return self.objective == "iwae" or self.kl_from_densities

    @property
    def kl_from_densities(self) -> bool:
        """Whether kl_terms estimates the KL as mean_s log q(z_s|x) - log p(z_s)."""
        return not self.closed_form_kl

    @property
    def has_prior(self) -> bool:
        """Whether `sample` draws from a prior the model was trained with (an autoencoder's
        codes have none: its samples are only a picture of N(0, I) decoded)."""
        return self.stochastic

    @property
    def num_units(self) -> int:
        """Latent units counted by active units and KL per dimension (all stochastic layers)."""
        return self.latent_dim

    @property
    def noise_dim(self) -> int:
        """The size of the standard-normal noise eps behind one draw z ~ q(z|x)."""
        return self.latent_dim

    # The model interface used by evaluation, callbacks and comparison.
    def encode(self, x: Tensor) -> Encoded:
        """q(z|x)'s parameters; log_var is None for a deterministic autoencoder."""
        features = self.encoder(x)
        if not self.stochastic:
            return Encoded(features, None)
        return self.posterior.split(features)

    def code(self, x: Tensor) -> Tensor:
        """The one code that stands for x in pictures: the posterior's mean (before noise)."""
        q = self.encode(x)
        return q.mean if q.log_var is None else self.posterior.code(q)

    def decode(self, z: Tensor) -> Tensor:
        """The likelihood's parameters for codes z (..., latent_dim): logits or means."""
        return self.decoder(z)

    def decode_mean(self, z: Tensor) -> Tensor:
        """E[x|z], the image a code stands for."""
        return self.likelihood.mean(self.decode(z))

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Decode draws from the prior to images E[x|z]."""
        z = self.prior.sample(num_samples, self.encode, generator)
        return self.decode_mean(z.to(self.device, self.dtype))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x|z] at the code of x."""
        return self.decode_mean(self.code(x))

    def observed(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """What `encode`, `weigh` and `draw` take as x from a batch (images, labels): the images
        (the CVAE: images and labels together)."""
        return batch[0]

    def weigh(
        self, x: Tensor, q: Encoded, eps: Tensor, densities: bool = True
    ) -> dict[str, Tensor]:
        """For draws z_s from q(z|x) made of noise eps (samples, batch, noise_dim): `z`,
        `log_likelihood` log p(x|z_s) and, with `densities`, `log_prior` log p(z_s) and
        `log_posterior` log q(z_s|x), each (samples, batch)."""
        if not densities:
            z = self.posterior.draw(q, eps)
            return {"z": z, "log_likelihood": self.likelihood.log_prob(x, self.decode(z))}
        z, log_posterior = self.posterior.rsample(q, eps)
        return {
            "z": z,
            "log_likelihood": self.likelihood.log_prob(x, self.decode(z)),
            "log_prior": self.prior.log_prob(z, self.encode),
            "log_posterior": log_posterior,
        }

    def kl_terms(self, q: Encoded, weighed: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """KL(q(z|x) || p(z)) per example, and per latent unit (batch, num_units) where it is a
        sum over units: closed form when there is one, else mean_s log q(z_s|x) - log p(z_s)."""
        if self.closed_form_kl:
            kl_per_dim = gaussian_kl(q.mean, q.log_var)
            return kl_per_dim.sum(-1), kl_per_dim
        return (weighed["log_posterior"] - weighed["log_prior"]).mean(0), None

    def extra_metrics(self) -> dict[str, Metric]:
        """Metrics beyond the ELBO's terms that `evaluate` reports for a deterministic model,
        each updated with `draw`'s output (VQ-VAE: the codebook perplexity)."""
        return {}

    def extra_pictures(self, images: Tensor) -> dict[str, tuple[Tensor, int]]:
        """Pictures of this model beyond every model's, from a split's first images: name ->
        (images, row length), for the image callback to tile (M2: its analogies)."""
        return {}

    def posterior_mean(self, q: Encoded) -> Tensor | None:
        """E_q[z] (batch, num_units) where it has a closed form; None: estimate it from draws."""
        return self.posterior.mean(q)

    def draw(
        self, x: Tensor, num_samples: int | None = None, densities: bool = True
    ) -> dict[str, Tensor | None]:
        """`log_likelihood` log p(x|z_s) and `log_prior_ratio` log p(z_s) - log q(z_s|x), each
        (samples, batch), for z_s ~ q(z|x); `kl` (batch,) and `kl_per_dim` (kl_terms). Without
        `densities` the ratio is None and not computed, unless the KL is estimated from it.

        A deterministic autoencoder has one "draw", z = its `code` (batch, latent_dim), with
        ratio and KL zero.
        """
        if self.stochastic:
            return self.forward(x, self.noise(x, num_samples), densities)
        code = self.encode(x).mean
        log_likelihood = self.likelihood.log_prob(x, self.decode(code))[None]
        return {
            "log_likelihood": log_likelihood,
            "log_prior_ratio": torch.zeros_like(log_likelihood),
            "kl": torch.zeros_like(log_likelihood[0]),
            "kl_per_dim": torch.zeros_like(code),
            "code": code,
        }

    def noise(self, x: Tensor, num_samples: int | None = None) -> Tensor:
        """eps ~ N(0, I) (samples, batch, noise_dim), the noise behind draws z ~ q(z|x)."""
        shape = (num_samples or self.num_samples, len(x), self.noise_dim)
        return torch.randn(shape, device=x.device)

    def forward(self, x: Tensor, eps: Tensor, densities: bool = True) -> dict[str, Tensor | None]:
        """`draw` of a stochastic model for the noise eps: encoder, draws, decoder, log-densities
        and KL, the graph that model.compile_step compiles (the noise is drawn outside it, so
        compiled and eager steps take the same eps from the same generator)."""
        densities = densities or self.kl_from_densities
        q = self.encode(x)
        weighed = self.weigh(x, q, eps.to(q.mean.dtype), densities)
        kl, kl_per_dim = self.kl_terms(q, weighed)
        ratio = weighed["log_prior"] - weighed["log_posterior"] if densities else None
        return {
            "log_likelihood": weighed["log_likelihood"],
            "log_prior_ratio": ratio,
            "kl": kl,
            "kl_per_dim": kl_per_dim,
            # the draws and q's parameters, for the objectives that regularise q (beta_tcvae, dip)
            "z": weighed["z"],
            "mean": q.mean,
            "log_var": q.log_var,
        }

    @staticmethod
    def elbo_terms(draws: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-example `elbo`, `reconstruction` and `kl` in nats from `draw`'s output."""
        reconstruction = draws["log_likelihood"].mean(0)
        kl = draws["kl"]
        return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}

    def elbo(self, x: Tensor, num_samples: int | None = None) -> dict[str, Tensor]:
        """Per-example `elbo`, `reconstruction` and `kl` in nats, each of shape (batch,)."""
        return self.elbo_terms(self.draw(x, num_samples))

    def training_loss(self, draws: dict[str, Tensor | None], kl_weight: float) -> Tensor:
        """The objective to minimise (module docstring): beta-ELBO with free bits or annealed
        capacity, IWAE, beta-TCVAE or DIP-VAE. Logs the terms beyond the ELBO's."""
        if self.objective == "iwae":
            log_weights = draws["log_likelihood"] + kl_weight * draws["log_prior_ratio"]
            return -iwae_bound(log_weights).mean()
        reconstruction = draws["log_likelihood"].mean(0).mean()
        terms: dict[str, Tensor | float] = {}  # logged as train/<name>
        if self.objective == "beta_tcvae":  # Chen et al. 2018: alpha = gamma = 1, beta = tc_weight
            size = self.dataset_size or self.training_set_size()
            terms = kl_decomposition(
                draws["z"], draws["mean"], draws["log_var"], size, self.tc_estimator
            )
            regulariser = kl_weight * (terms["mi"] + self.tc_weight * terms["tc"] + terms["dim_kl"])
        elif self.capacity_max > 0:  # Burgess et al. 2018: gamma |KL - C_t|
            capacity = annealed_capacity(self.global_step, self.capacity_max, self.capacity_steps)
            regulariser = capacity_penalty(draws["kl"].mean(), capacity, self.capacity_weight)
            terms["capacity"] = capacity
        elif self.free_bits > 0:  # KL per latent dimension averaged over the batch, floored
            regulariser = kl_weight * draws["kl_per_dim"].mean(0).clamp(min=self.free_bits).sum()
        else:
            regulariser = kl_weight * draws["kl"].mean()
        if self.objective == "dip_vae":  # Kumar et al. 2018: lambda_d = 10 lambda_od for DIP-VAE-I
            lambda_d = self.lambda_od * (10.0 if self.dip_type == "i" else 1.0)
            covariance = dip_covariance(draws["mean"], draws["log_var"], self.dip_type)
            terms["dip_penalty"] = dip_penalty(covariance, self.lambda_od, lambda_d)
            regulariser = regulariser + terms["dip_penalty"]
        if terms and self.logs_this_step():
            logged = {f"train/{name}": value for name, value in terms.items()}
            self.log_dict(logged, on_step=True, on_epoch=False, sync_dist=True)
        return -reconstruction + regulariser

    def training_set_size(self) -> int:
        """N for beta-TCVAE when `dataset_size` is None: the size of the dataset the Trainer's
        training DataLoader draws from (all of it, not one DDP rank's share)."""
        try:
            return len(self.trainer.train_dataloader.dataset)
        except (RuntimeError, AttributeError, TypeError):
            raise ConfigError(
                "model.objective=beta_tcvae needs the training set's size: set model.dataset_size=N"
            ) from None

    def bits_per_dim(self, elbo: Tensor) -> Tensor:
        """-elbo / (D ln 2): the bound in bits per pixel and channel."""
        return -elbo / (self.num_dims * math.log(2))

    def kl_weight_at(self, step: int) -> float:
        """beta_t: kl_weight times the `kl_schedule` (linear warm-up or cyclical) at this
        optimizer step, over kl_warmup_steps steps (vaelab.objectives.kl_schedule_factor)."""
        factor = kl_schedule_factor(
            step, self.kl_schedule, self.kl_warmup_steps, self.kl_cycles, self.kl_cycle_ratio
        )
        return self.kl_weight * factor

    def logs_this_step(self) -> bool:
        """Whether loggers write this step: self.log costs ~1 ms a call on a CPU, so train/*
        values are computed and logged only on those steps (and the last batch). Lightning
        writes every `log_every_n_steps` training_step calls: with `steps_per_call` = S, on the
        last step of every log_every_n_steps-th call, so every S log_every_n_steps steps, and
        the loggers' step axis counts calls (global_step / S)."""
        try:
            trainer, step = self.trainer, self.global_step + 1
        except RuntimeError:  # not attached to a Trainer (called directly): always log
            return True
        every = max(trainer.log_every_n_steps, 1)
        if step == trainer.max_steps:
            return True
        if self.steps_per_call > 1:  # the calls Lightning counts for its loggers, this one too
            if not self.last_step_of_call:
                return False
            step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", step) + 1
        return step % every == 0 or trainer.is_last_batch

    # Lightning hooks.
    def on_train_start(self) -> None:
        """Optimizer state restored from a checkpoint takes its parameters' memory layout."""
        for optimizer in self.trainer.optimizers:
            match_state_layouts(optimizer)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """One optimizer step (Lightning's), or with `steps_per_call` = S > 1 S of them here,
        one on each S-th of the batch (the datamodule's batches are S times data.batch_size):
        the same steps, data and noise as S calls, without Lightning's per-call work. Returns
        the mean of the steps' losses (NaN if any was)."""
        if self.automatic_optimization:
            return self.step_loss(batch)
        trainer, optimizer, losses = self.trainer, self.optimizers(), []
        size = getattr(trainer.datamodule, "batch_size", None) or len(batch[0])
        parts = list(zip(*(part.split(size) for part in batch), strict=True))
        for index, part in enumerate(parts):
            if 0 <= trainer.max_steps <= self.global_step:
                break
            self.last_step_of_call = index == len(parts) - 1
            loss = self.step_loss(part)
            self.manual_backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.detach())
        scheduler = self.lr_schedulers()  # Lightning steps none in manual optimization: here,
        epoch_done = trainer.is_last_batch or batch_idx + 1 == trainer.num_training_batches
        if scheduler is not None and epoch_done and len(losses) == len(parts):
            scheduler.step()  # where it would have, after the epoch's last step (interval epoch)
        return torch.stack(losses).mean()

    def step_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """The loss of one optimizer step, logged on logging steps. With model.compile_step the
        draws come from the compiled forward (`self(x, eps)`); evaluation stays eager."""
        x = self.observed(batch)
        if self.compile_step is None:
            draws = self.draw(x, densities=self.trains_on_densities)
        else:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are done
            draws = self(x, self.noise(x), densities=self.trains_on_densities)
        kl_weight = self.kl_weight_at(self.global_step)
        loss = self.training_loss(draws, kl_weight)
        if not self.logs_this_step():
            return loss
        means = {f"train/{name}": value.mean() for name, value in self.elbo_terms(draws).items()}
        means["train/bits_per_dim"] = self.bits_per_dim(means["train/elbo"])
        if self.objective == "iwae":
            means["train/iwae"] = self.iwae_terms(draws).mean()
        # averaged over DDP ranks (one all-reduce a value, on logging steps only)
        self.log_dict({"train/loss": loss, **means}, on_step=True, on_epoch=False, sync_dist=True)
        self.log("train/kl_weight", kl_weight, on_step=True, on_epoch=False)
        return loss

    @staticmethod
    def iwae_terms(draws: dict[str, Tensor]) -> Tensor:
        """L_k per example from the k = num_samples draws (Burda et al. 2016)."""
        return iwae_bound(draws["log_likelihood"] + draws["log_prior_ratio"])

    def evaluation_terms(self, draws: dict[str, Tensor]) -> dict[str, Tensor]:
        """What validation and testing average, per example: the ELBO's terms, bits per dim and,
        with the IWAE objective, its bound `iwae` (the IWAE presets keep the best by val/iwae)."""
        terms = self.elbo_terms(draws)
        terms["bits_per_dim"] = self.bits_per_dim(terms["elbo"])
        if self.objective == "iwae":
            terms["iwae"] = self.iwae_terms(draws)
        return terms

    def _evaluation_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        for name, value in self.evaluation_terms(self.draw(self.observed(batch))).items():
            metric = self.metrics[f"{stage}_{name}"]
            metric.update(value)
            self.log(f"{stage}/{name}", metric, on_epoch=True, prog_bar=name == "elbo")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: one, every parameter at the optimizer's settings."""
        return [{"params": list(self.parameters())}]

    def configure_optimizers(self) -> dict:
        factory = self.optimizer_factory or torch.optim.Adam
        optimizer = factory(params=self.parameter_groups())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }


def check_compile_step(mode: str, compile: bool, stochastic: bool, model: type) -> None:
    """A clear error for a model.compile_step the training step cannot take."""
    if mode not in COMPILE_MODES:
        raise ConfigError(
            f"model.compile_step must be null or one of {COMPILE_MODES}, got {mode!r}"
        )
    if compile:
        raise ConfigError(
            "model.compile compiles the nets and model.compile_step the whole training draw that "
            "holds them: set one of the two"
        )
    if not stochastic or model.training_step is not VAE.training_step:
        raise ConfigError(
            f"model.compile_step compiles the VAE's own training draw, which {model.__name__} "
            "does not use: set model.compile_step=null (model.compile=true compiles its nets)"
        )
