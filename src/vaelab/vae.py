"""The VAE as one LightningModule: encoder, decoder, prior N(0, I) and the ELBO.

Every loss term is per example, in nats (Kingma & Welling 2014, eq. 10; Kingma 2017, ch. 2):

    reconstruction = E_q(z|x)[log p(x|z)]   (`num_samples` Monte-Carlo draws, all constants)
    kl             = KL(q(z|x) || N(0, I))  (closed form)
    elbo           = reconstruction - kl    (a lower bound on log p(x))
    loss           = -(reconstruction - beta_t * kl), averaged over the batch

beta_t rises linearly from 0 to `kl_weight` over `kl_warmup_steps` optimizer steps. With
`stochastic=False` the module is a plain autoencoder: z = mean, no sampling and no KL.

Two training objectives (`objective`); the logged elbo, reconstruction and kl stay the true ones:

    elbo  loss = -(mean_b reconstruction - beta_t * sum_j max(lambda, mean_b KL_j))
          KL_j is latent dimension j's KL; lambda = `free_bits` floors it per dimension,
          averaged over the batch (Kingma et al. 2016, "Improving VI with IAF": free bits);
          lambda = 0 is the plain (beta-)ELBO.
    iwae  loss = -mean_b log (1/k) sum_s exp(log p(x|z_s) + beta_t (log p(z_s) - log q(z_s|x))),
          z_s ~ q(z|x), k = `num_samples` (Burda et al. 2016; beta_t = 1 is their bound L_k).
"""

import math
from collections.abc import Callable, Sequence

import torch
from lightning import LightningModule
from torch import Tensor, nn
from torchmetrics import MeanMetric

from vaelab.errors import ConfigError
from vaelab.likelihoods import Likelihood

TERMS = ("elbo", "reconstruction", "kl", "bits_per_dim")
STAGES = ("val", "test")
OBJECTIVES = ("elbo", "iwae")


def gaussian_kl(mean: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mean, exp(log_var)) || N(0, 1)) per dimension: (mean^2 + var - 1 - log var) / 2."""
    return 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var)


def reparameterize(mean: Tensor, log_var: Tensor, eps: Tensor) -> Tensor:
    """z = mean + sigma * eps with sigma = exp(log_var / 2): a differentiable draw from q(z|x)."""
    return mean + torch.exp(0.5 * log_var) * eps


def log_prior_ratio(z: Tensor, eps: Tensor, log_var: Tensor) -> Tensor:
    """log p(z) - log q(z|x) for z = mean + sigma * eps, summed over latent dimensions.

    log N(z; 0, I) - log N(z; mean, diag sigma^2) = -sum_j (z_j^2 - eps_j^2 - log sigma_j^2) / 2,
    since (z - mean) / sigma = eps; the log(2 pi) terms cancel.
    """
    return -0.5 * (z.square() - eps.square() - log_var).sum(-1)


def iwae_bound(log_weights: Tensor) -> Tensor:
    """log (1/k) sum_s exp(log_weights[s]) over the leading sample dimension: L_k (Burda et al.)."""
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])


class VAE(LightningModule):
    def __init__(
        self,
        encoder: Callable[..., nn.Module],
        decoder: Callable[..., nn.Module],
        likelihood: Likelihood,
        image_shape: Sequence[int],
        latent_dim: int = 10,
        kl_weight: float = 1.0,
        kl_warmup_steps: int = 0,
        num_samples: int = 1,
        stochastic: bool = True,
        objective: str = "elbo",
        free_bits: float = 0.0,
        compile: bool = False,
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
        if objective == "iwae" and (free_bits > 0 or not stochastic):
            raise ConfigError(
                "model.objective=iwae needs a stochastic encoder and no free bits (the IWAE bound "
                "has no separate KL term to floor)"
            )
        self.image_shape = tuple(int(size) for size in image_shape)
        self.save_hyperparameters(
            {
                "image_shape": list(self.image_shape),
                "latent_dim": latent_dim,
                "kl_weight": kl_weight,
                "kl_warmup_steps": kl_warmup_steps,
                "num_samples": num_samples,
                "stochastic": stochastic,
                "objective": objective,
                "free_bits": free_bits,
            },
            logger=False,
        )
        self.latent_dim = latent_dim
        self.kl_weight = kl_weight
        self.kl_warmup_steps = kl_warmup_steps
        self.num_samples = num_samples
        self.stochastic = stochastic
        self.objective = objective
        self.free_bits = free_bits
        self.likelihood = likelihood
        channels, height, width = self.image_shape
        self.encoder = encoder(self.image_shape, latent_dim * (2 if stochastic else 1))
        self.decoder = decoder(latent_dim, (likelihood.num_params * channels, height, width))
        if compile:  # in place: parameter names, and so checkpoints, stay those of the plain nets
            self.encoder.compile()
            self.decoder.compile()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.num_dims = math.prod(self.image_shape)
        self.metrics = nn.ModuleDict(
            {f"{stage}_{term}": MeanMetric() for stage in STAGES for term in TERMS}
        )

    # The model interface used by evaluation, callbacks and comparison.
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """q(z|x) as (mean, log_var); log_var is None for a deterministic autoencoder."""
        features = self.encoder(x)
        if not self.stochastic:
            return features, None
        mean, log_var = features.chunk(2, dim=-1)
        return mean, log_var

    def decode(self, z: Tensor) -> Tensor:
        """The likelihood's parameters for codes z (..., latent_dim): logits or means."""
        return self.decoder(z)

    def decode_mean(self, z: Tensor) -> Tensor:
        """E[x|z], the image a code stands for."""
        return self.likelihood.mean(self.decode(z))

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Decode draws from the prior N(0, I) to images E[x|z]."""
        z = torch.randn(num_samples, self.latent_dim, generator=generator, device="cpu")
        return self.decode_mean(z.to(self.device))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x|z] at z = the mean of q(z|x)."""
        return self.decode_mean(self.encode(x)[0])

    def draw(self, x: Tensor, num_samples: int | None = None) -> dict[str, Tensor]:
        """Per draw z_s ~ q(z|x): `log_likelihood` log p(x|z_s) and `log_prior_ratio`
        log p(z_s) - log q(z_s|x), each (samples, batch); `kl_per_dim` (batch, latent_dim).

        A deterministic autoencoder has one "draw", z = mean, with ratio and KL zero.
        """
        mean, log_var = self.encode(x)
        if log_var is None:
            log_likelihood = self.likelihood.log_prob(x, self.decode(mean))[None]
            return {
                "log_likelihood": log_likelihood,
                "log_prior_ratio": torch.zeros_like(log_likelihood),
                "kl_per_dim": torch.zeros_like(mean),
            }
        eps = torch.randn((num_samples or self.num_samples, *mean.shape), device=mean.device)
        z = reparameterize(mean, log_var, eps)  # (samples, batch, latent_dim)
        return {
            "log_likelihood": self.likelihood.log_prob(x, self.decode(z)),
            "log_prior_ratio": log_prior_ratio(z, eps, log_var),
            "kl_per_dim": gaussian_kl(mean, log_var),
        }

    @staticmethod
    def elbo_terms(draws: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-example `elbo`, `reconstruction` and `kl` in nats from `draw`'s output."""
        reconstruction = draws["log_likelihood"].mean(0)
        kl = draws["kl_per_dim"].sum(-1)
        return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}

    def elbo(self, x: Tensor, num_samples: int | None = None) -> dict[str, Tensor]:
        """Per-example `elbo`, `reconstruction` and `kl` in nats, each of shape (batch,)."""
        return self.elbo_terms(self.draw(x, num_samples))

    def training_loss(self, draws: dict[str, Tensor], kl_weight: float) -> Tensor:
        """The objective to minimise (module docstring): beta-ELBO with free bits, or IWAE."""
        if self.objective == "iwae":
            log_weights = draws["log_likelihood"] + kl_weight * draws["log_prior_ratio"]
            return -iwae_bound(log_weights).mean()
        reconstruction = draws["log_likelihood"].mean(0).mean()
        # KL per latent dimension averaged over the batch, floored at lambda (Kingma et al. 2016)
        kl = draws["kl_per_dim"].mean(0).clamp(min=self.free_bits).sum()
        return -(reconstruction - kl_weight * kl)

    def bits_per_dim(self, elbo: Tensor) -> Tensor:
        """-elbo / (D ln 2): the bound in bits per pixel and channel."""
        return -elbo / (self.num_dims * math.log(2))

    def kl_weight_at(self, step: int) -> float:
        """beta_t: linear warm-up from 0 to kl_weight over kl_warmup_steps optimizer steps."""
        if self.kl_warmup_steps <= 0:
            return self.kl_weight
        return self.kl_weight * min(1.0, step / self.kl_warmup_steps)

    def logs_this_step(self) -> bool:
        """Whether loggers write this step: self.log costs ~1 ms a call on a CPU, so train/*
        values are computed and logged only on those steps (and the last batch)."""
        try:
            trainer, step = self.trainer, self.global_step + 1
        except RuntimeError:  # not attached to a Trainer (called directly): always log
            return True
        every = max(trainer.log_every_n_steps, 1)
        return step % every == 0 or trainer.is_last_batch or step == trainer.max_steps

    # Lightning hooks.
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        draws = self.draw(batch[0])
        kl_weight = self.kl_weight_at(self.global_step)
        loss = self.training_loss(draws, kl_weight)
        if not self.logs_this_step():
            return loss
        means = {f"train/{name}": value.mean() for name, value in self.elbo_terms(draws).items()}
        means["train/bits_per_dim"] = self.bits_per_dim(means["train/elbo"])
        if self.objective == "iwae":
            bound = iwae_bound(draws["log_likelihood"] + draws["log_prior_ratio"])
            means["train/iwae"] = bound.mean()
        # averaged over DDP ranks (one all-reduce a value, on logging steps only)
        self.log_dict({"train/loss": loss, **means}, on_step=True, on_epoch=False, sync_dist=True)
        self.log("train/kl_weight", kl_weight, on_step=True, on_epoch=False)
        return loss

    def _evaluation_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        terms = self.elbo(batch[0])
        terms["bits_per_dim"] = self.bits_per_dim(terms["elbo"])
        for name, value in terms.items():
            metric = self.metrics[f"{stage}_{name}"]
            metric.update(value)
            self.log(f"{stage}/{name}", metric, on_epoch=True, prog_bar=name == "elbo")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def configure_optimizers(self) -> dict:
        factory = self.optimizer_factory or torch.optim.Adam
        optimizer = factory(params=self.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
