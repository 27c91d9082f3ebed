"""The VAE as one LightningModule: encoder, decoder, prior N(0, I) and the ELBO.

Every loss term is per example, in nats (Kingma & Welling 2014, eq. 10; Kingma 2017, ch. 2):

    reconstruction = E_q(z|x)[log p(x|z)]   (`num_samples` Monte-Carlo draws, all constants)
    kl             = KL(q(z|x) || N(0, I))  (closed form)
    elbo           = reconstruction - kl    (a lower bound on log p(x))
    loss           = -(reconstruction - beta_t * kl), averaged over the batch

beta_t rises linearly from 0 to `kl_weight` over `kl_warmup_steps` optimizer steps. With
`stochastic=False` the module is a plain autoencoder: z = mean, no sampling and no KL.
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


def gaussian_kl(mean: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mean, exp(log_var)) || N(0, 1)) per dimension: (mean^2 + var - 1 - log var) / 2."""
    return 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var)


def reparameterize(mean: Tensor, log_var: Tensor, eps: Tensor) -> Tensor:
    """z = mean + sigma * eps with sigma = exp(log_var / 2): a differentiable draw from q(z|x)."""
    return mean + torch.exp(0.5 * log_var) * eps


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
        self.image_shape = tuple(int(size) for size in image_shape)
        self.save_hyperparameters(
            {
                "image_shape": list(self.image_shape),
                "latent_dim": latent_dim,
                "kl_weight": kl_weight,
                "kl_warmup_steps": kl_warmup_steps,
                "num_samples": num_samples,
                "stochastic": stochastic,
            },
            logger=False,
        )
        self.latent_dim = latent_dim
        self.kl_weight = kl_weight
        self.kl_warmup_steps = kl_warmup_steps
        self.num_samples = num_samples
        self.stochastic = stochastic
        self.likelihood = likelihood
        channels, height, width = self.image_shape
        self.encoder = encoder(self.image_shape, latent_dim * (2 if stochastic else 1))
        self.decoder = decoder(latent_dim, (likelihood.num_params * channels, height, width))
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

    def elbo(self, x: Tensor, num_samples: int | None = None) -> dict[str, Tensor]:
        """Per-example `elbo`, `reconstruction` and `kl` in nats, each of shape (batch,)."""
        mean, log_var = self.encode(x)
        if log_var is None:
            reconstruction = self.likelihood.log_prob(x, self.decode(mean))
            kl = torch.zeros_like(reconstruction)
        else:
            eps = torch.randn((num_samples or self.num_samples, *mean.shape), device=mean.device)
            z = reparameterize(mean, log_var, eps)  # (samples, batch, latent_dim)
            reconstruction = self.likelihood.log_prob(x, self.decode(z)).mean(0)
            kl = gaussian_kl(mean, log_var).sum(-1)
        return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}

    def bits_per_dim(self, elbo: Tensor) -> Tensor:
        """-elbo / (D ln 2): the bound in bits per pixel and channel."""
        return -elbo / (self.num_dims * math.log(2))

    def kl_weight_at(self, step: int) -> float:
        """beta_t: linear warm-up from 0 to kl_weight over kl_warmup_steps optimizer steps."""
        if self.kl_warmup_steps <= 0:
            return self.kl_weight
        return self.kl_weight * min(1.0, step / self.kl_warmup_steps)

    # Lightning hooks.
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        terms = self.elbo(batch[0])
        kl_weight = self.kl_weight_at(self.global_step)
        loss = -(terms["reconstruction"] - kl_weight * terms["kl"]).mean()
        means = {f"train/{name}": value.mean() for name, value in terms.items()}
        means["train/bits_per_dim"] = self.bits_per_dim(means["train/elbo"])
        self.log_dict({"train/loss": loss, **means}, on_step=True, on_epoch=False)
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
