"""The VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning").

The encoder's `latent_dim` outputs are `num_positions` vectors z_e of size `code_dim` (their
ratio); each is replaced by its nearest vector e_k of one shared codebook (K = `codebook_size`
rows, squared Euclidean distance) and the decoder reads the quantised vectors z_q. The
straight-through estimator z_q = z_e + sg[e - z_e] passes d loss / d z_q on to z_e unchanged.
Per example, in nats:

    loss = -log p(x|z_q) + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2   (sums over positions
           and code dims, beta = `commitment_weight`), averaged over the batch

With `codebook_update: ema` the codebook is not trained by gradient and its loss term is dropped:
training steps keep exponential moving averages (decay gamma) of each code's cluster size N_k and
vector sum m_k, Laplace-smoothed N_k' = (N_k + eps) / (n + K eps) n with n = sum_k N_k, and set
e_k = m_k / N_k' (the paper's appendix A.1). N_k = 1 and m_k = e_k at the start.

Codes can die: the encoder's outputs move away from a code and it is never picked again (with
these nets z_e hardly depends on x at first, so one code per position wins at the start). As in
Jukebox (Dhariwal et al. 2020), each code whose moving-average use N_k (tracked for both updates)
falls below `restart_threshold` assignments per step is moved to a random z_e of the batch at
every step until it is used; 0 turns restarts off, as in the paper.

The posterior is one-hot and the prior uniform over the K codes at every position, so the logged
kl = KL(q || p) = P log K, elbo = log p(x|z_q) - P log K, and the perplexity exp(H) of the
codebook usage over a batch (train) or an epoch (val, test) shows how many codes are in use.
"""

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch import distributed as dist
from torchmetrics import Metric

from vaelab.errors import ConfigError
from vaelab.likelihoods import Likelihood
from vaelab.vae import STAGES, VAE

CODEBOOK_UPDATES = ("gradient", "ema")


def perplexity(counts: Tensor) -> Tensor:
    """exp(H(p)) of the usage p = counts / sum(counts): K when K codes are used alike, 1 for one."""
    p = counts / counts.sum()
    return torch.exp(-torch.xlogy(p, p).sum())


class CodebookPerplexity(Metric):
    """The perplexity of the codes `draw` picked, from usage counts summed over all batches."""

    full_state_update = False

    def __init__(self, codebook_size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.codebook_size = codebook_size
        counts = torch.zeros(codebook_size, dtype=torch.float64)
        self.add_state("counts", counts, dist_reduce_fx="sum")

    def update(self, draws: Mapping[str, Tensor]) -> None:
        indices = draws["indices"].flatten()
        self.counts += torch.bincount(indices, minlength=self.codebook_size).double()

    def compute(self) -> Tensor:
        return perplexity(self.counts)


class VQVAE(VAE):
    def __init__(
        self,
        encoder: Callable[..., nn.Module],
        decoder: Callable[..., nn.Module],
        likelihood: Likelihood,
        image_shape: Sequence[int],
        latent_dim: int = 64,
        num_positions: int = 8,
        codebook_size: int = 64,
        commitment_weight: float = 0.25,
        codebook_update: str = "gradient",
        ema_decay: float = 0.99,
        ema_epsilon: float = 1e-5,
        restart_threshold: float = 1.0,
        compile: bool = False,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        code_dim: int | None = None,
        **settings: Any,
    ) -> None:
        """`latent_dim` = P * D, the numbers the decoder reads; `code_dim` = D, the older spelling
        (runs saved before 2026-11-29), sets latent_dim = P * D; `settings` are VAE's (those
        about the KL, such as kl_warmup_steps, change nothing: the loss has no KL term)."""
        if code_dim is not None:
            latent_dim = num_positions * code_dim
        if min(latent_dim, num_positions, codebook_size) < 1 or latent_dim % num_positions:
            raise ConfigError(
                "model.latent_dim, model.num_positions and model.codebook_size must be positive "
                "and latent_dim a multiple of num_positions (each position's code is "
                f"latent_dim / num_positions numbers), got {latent_dim}, {num_positions}, "
                f"{codebook_size}"
            )
        code_dim = latent_dim // num_positions
        if codebook_update not in CODEBOOK_UPDATES:
            raise ConfigError(
                f"model.codebook_update must be one of {CODEBOOK_UPDATES}, got {codebook_update!r}"
            )
        if (
            min(commitment_weight, restart_threshold) < 0
            or not 0 <= ema_decay < 1
            or ema_epsilon <= 0
        ):
            raise ConfigError(
                "need model.commitment_weight >= 0, model.restart_threshold >= 0, "
                "0 <= model.ema_decay < 1 and model.ema_epsilon > 0, got "
                f"{commitment_weight}, {restart_threshold}, {ema_decay}, {ema_epsilon}"
            )
        super().__init__(
            encoder,
            decoder,
            likelihood,
            image_shape,
            latent_dim=latent_dim,
            kl_weight=0.0,
            stochastic=False,
            compile=compile,
            optimizer=optimizer,
            scheduler=scheduler,
            **settings,
        )
        self.remember(
            num_positions=num_positions,
            codebook_size=codebook_size,
            commitment_weight=commitment_weight,
            codebook_update=codebook_update,
            ema_decay=ema_decay,
            ema_epsilon=ema_epsilon,
            restart_threshold=restart_threshold,
        )
        self.code_dim = code_dim
        codebook = torch.empty(codebook_size, code_dim).uniform_(
            -1 / codebook_size, 1 / codebook_size
        )
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        if codebook_update == "gradient":
            self.codebook = nn.Parameter(codebook)
        else:
            self.register_buffer("codebook", codebook)
            self.register_buffer("cluster_sum", codebook.clone())
        for stage in STAGES:
            self.metrics[f"{stage}_perplexity"] = CodebookPerplexity(codebook_size)

    @property
    def code_kl(self) -> float:
        """KL(one-hot q || uniform p) = P log K nats: log K at each position."""
        return self.num_positions * math.log(self.codebook_size)

    def quantise(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """The nearest code's index (..., P) and vector e (..., P, D) for codes z (..., P * D)."""
        vectors = z.unflatten(-1, (self.num_positions, self.code_dim))
        with torch.no_grad():
            distances = (
                vectors.square().sum(-1, keepdim=True)
                - 2 * vectors @ self.codebook.T
                + self.codebook.square().sum(-1)
            )
            indices = distances.argmin(-1)
        return indices, F.embedding(indices, self.codebook)

    def straight_through(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """z_e (..., P, D), the indices and e, and z_q = z_e + sg[e - z_e] flattened like z."""
        indices, e = self.quantise(z)
        z_e = z.unflatten(-1, (self.num_positions, self.code_dim))
        return z_e, indices, e, (z_e + (e - z_e).detach()).flatten(-2)

    def decode(self, z: Tensor) -> Tensor:
        """The likelihood's parameters at the quantised codes z (..., P * D)."""
        return self.decoder(self.straight_through(z)[-1])

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Decode uniformly random codes at every position: the uniform prior the ELBO uses
        (the paper's learned autoregressive prior over codes is not built here)."""
        indices = torch.randint(
            self.codebook_size, (num_samples, self.num_positions), generator=generator
        )
        e = F.embedding(indices.to(self.device), self.codebook)
        return self.likelihood.mean(self.decoder(e.flatten(-2)))

    def draw(self, x: Tensor, num_samples: int | None = None) -> dict[str, Tensor | None]:
        """`log_likelihood` (1, batch) at z_q, `kl` (batch,) = P log K and its negative as
        `log_prior_ratio`; `z_e` (batch, P, D), `indices` (batch, P); `codebook_loss`
        and `commitment_loss` (batch,)."""
        z_e, indices, e, z_q = self.straight_through(self.encode(x).mean)
        log_likelihood = self.likelihood.log_prob(x, self.decoder(z_q))[None]
        kl = torch.full_like(log_likelihood[0], self.code_kl)
        return {
            "log_likelihood": log_likelihood,
            "log_prior_ratio": -kl[None],
            "kl": kl,
            "kl_per_dim": None,
            "z_e": z_e,
            "code": z_e.flatten(-2),
            "indices": indices,
            "codebook_loss": (z_e.detach() - e).square().sum((-2, -1)),
            "commitment_loss": (z_e - e.detach()).square().sum((-2, -1)),
        }

    def training_loss(self, draws: dict[str, Tensor], kl_weight: float = 0.0) -> Tensor:
        """The module docstring's loss (kl_weight is unused: P log K is a constant)."""
        loss = self.commitment_weight * draws["commitment_loss"] - draws["log_likelihood"][0]
        if self.codebook_update == "gradient":
            loss = loss + draws["codebook_loss"]
        return loss.mean()

    def smoothed_cluster_size(self) -> Tensor:
        """N_k' = (N_k + eps) / (n + K eps) n with n = sum_k N_k: Laplace smoothing, no zeros."""
        total = self.cluster_size.sum()
        epsilon = self.ema_epsilon
        return (self.cluster_size + epsilon) / (total + self.codebook_size * epsilon) * total

    @torch.no_grad()
    def update_codebook(self, z_e: Tensor, indices: Tensor) -> None:
        """One training step's bookkeeping from its assignments, summed over DDP ranks: the EMA
        of N_k (and for ema of m_k, with e_k = m_k / N_k'), then the restarts."""
        indices = indices.flatten()
        vectors = z_e.reshape(-1, self.code_dim).to(self.cluster_size)
        counts = torch.bincount(indices, minlength=self.codebook_size).to(self.cluster_size)
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            dist.all_reduce(counts)
        self.cluster_size.lerp_(counts, 1 - self.ema_decay)  # N_k <- gamma N_k + (1 - gamma) n_k
        if self.codebook_update == "ema":
            sums = torch.zeros_like(self.cluster_sum).index_add_(0, indices, vectors)
            if distributed:
                dist.all_reduce(sums)
            self.cluster_sum.lerp_(sums, 1 - self.ema_decay)  # m_k <- gamma m_k + (1 - gamma) sum
            self.codebook.copy_(self.cluster_sum / self.smoothed_cluster_size()[:, None])
        if self.restart_threshold == 0:
            return
        # each code with N_k below the threshold moves to a random z_e of the batch
        new = vectors[torch.randint(len(vectors), (self.codebook_size,), device=vectors.device)]
        if distributed:  # rank zero's picks, so that the ranks keep one codebook
            dist.broadcast(new, src=0)
        dead = (self.cluster_size < self.restart_threshold)[:, None]
        self.codebook.copy_(torch.where(dead, new, self.codebook))
        if self.codebook_update == "ema":  # m_k = N_k' e_k, so that m_k / N_k' stays e_k
            restarted = new * self.smoothed_cluster_size()[:, None]
            self.cluster_sum.copy_(torch.where(dead, restarted, self.cluster_sum))

    def step_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """The loss of one optimizer step; the codebook's moving averages step with it."""
        draws = self.draw(batch[0])
        loss = self.training_loss(draws)
        self.update_codebook(draws["z_e"], draws["indices"])
        if not self.logs_this_step():
            return loss
        means = {f"train/{name}": value.mean() for name, value in self.elbo_terms(draws).items()}
        means["train/bits_per_dim"] = self.bits_per_dim(means["train/elbo"])
        counts = torch.bincount(draws["indices"].flatten(), minlength=self.codebook_size)
        means["train/perplexity"] = perplexity(counts.float())
        self.log_dict({"train/loss": loss, **means}, on_step=True, on_epoch=False, sync_dist=True)
        return loss

    @property
    def has_prior(self) -> bool:
        """The uniform prior over the K^P codes, which `sample` draws from."""
        return True

    def extra_metrics(self) -> dict[str, Metric]:
        return {"perplexity": CodebookPerplexity(self.codebook_size)}

    def _evaluation_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        draws = self.draw(batch[0])
        terms = self.evaluation_terms(draws)
        for name, value in terms.items():
            self.metrics[f"{stage}_{name}"].update(value)
        self.metrics[f"{stage}_perplexity"].update(draws)
        for name in (*terms, "perplexity"):
            metric = self.metrics[f"{stage}_{name}"]
            self.log(f"{stage}/{name}", metric, on_epoch=True, prog_bar=name == "elbo")
