"""The loss terms of the objectives beyond the plain ELBO, each a plain function of tensors.

`VAE.training_loss` (vaelab/vae.py) calls them; the logged `elbo`, `reconstruction` and `kl`
never go through them, so they stay the true quantities whatever the objective. Everything is
per example, in nats, for the diagonal Gaussian posterior q(z|x) = N(mean(x), diag exp
log_var(x)) and the prior p(z) = N(0, I).

- KL-weight schedules: the linear warm-up and Fu et al. (2019)'s cyclical schedule.
- Annealed capacity (Burgess et al. 2018, "Understanding disentangling in beta-VAE").
- The KL's decomposition over a minibatch into index-code mutual information, total
  correlation and dimension-wise KL (Chen et al. 2018, "Isolating Sources of Disentanglement
  in VAEs"), estimated by minibatch-weighted (MWS) or minibatch-stratified (MSS) sampling.
- DIP-VAE's penalty on the covariance of the aggregate posterior (Kumar et al. 2018,
  "Variational Inference of Disentangled Latent Concepts from Unlabeled Observations").
"""

import functools
import math

import torch
from torch import Tensor

from vaelab.errors import ConfigError
from vaelab.posteriors.gaussian import LOG_2PI

KL_SCHEDULES = ("linear", "cyclical")
TC_ESTIMATORS = ("mws", "mss")
DIP_TYPES = ("i", "ii")


def kl_schedule_factor(
    step: int, schedule: str, total_steps: int, cycles: int = 1, ratio: float = 1.0
) -> float:
    """beta_t / beta at optimizer step t = `step` (counted from 0); 1 from T = `total_steps` on.

    linear:   t / T.
    cyclical: Fu et al. (2019), section 3: tau = (t mod ceil(T / M)) / (T / M), the position in
              the current one of M = `cycles` cycles, and the factor is tau / R while tau <= R,
              R = `ratio`, else 1: it rises linearly from 0 over the first R of each cycle and
              holds 1 for the rest. (Their t counts from 1 and takes t - 1, our t counts from 0.)
    M = 1, R = 1 is the linear warm-up. T <= 0: no schedule, the factor is 1.
    """
    if total_steps <= 0 or step >= total_steps:
        return 1.0
    if schedule == "linear":
        return step / total_steps
    tau = (step % math.ceil(total_steps / cycles)) / (total_steps / cycles)
    return tau / ratio if tau <= ratio else 1.0


def annealed_capacity(step: int, capacity_max: float, capacity_steps: int) -> float:
    """C_t, rising linearly from 0 to `capacity_max` nats over `capacity_steps` optimizer
    steps, then staying there (Burgess et al. 2018, section 4); capacity_steps <= 0: C_max."""
    if capacity_steps <= 0:
        return capacity_max
    return capacity_max * min(1.0, step / capacity_steps)


def capacity_penalty(kl: Tensor, capacity: float, weight: float) -> Tensor:
    """gamma |KL - C|: the KL (batch mean, nats) pulled towards the capacity C (Burgess et al.
    2018), whatever side of it it is on."""
    return weight * (kl - capacity).abs()


def log_density_matrix(z: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log q(z_i,d | x_j) = log N(z_i,d; mean_j,d, exp log_var_j,d) for every draw i and every
    example j of the batch: z (..., batch, latent), mean and log_var (batch, latent) ->
    (..., batch i, batch j, latent d)."""
    z = z.unsqueeze(-2)  # (..., batch i, 1, latent) against (batch j, latent)
    return -0.5 * (LOG_2PI + log_var + (z - mean).square() * torch.exp(-log_var))


@functools.lru_cache(maxsize=8)
def importance_weights_on(
    batch_size: int, dataset_size: int, estimator: str, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """`log_importance_weights` made once per shape, device and dtype, not copied every step."""
    return log_importance_weights(batch_size, dataset_size, estimator).to(device, dtype)


def log_importance_weights(batch_size: int, dataset_size: int, estimator: str) -> Tensor:
    """log w_ij (batch i, batch j): log q(z_i) ~ log sum_j w_ij q(z_i | x_j), for z_i ~ q(z|x_i)
    and x_1..x_B a minibatch drawn from the N training examples (Chen et al. 2018, appendix C).

    mws: w_ij = 1 / (N B) for every j (minibatch-weighted sampling).
    mss: with M = B - 1, the others of the batch standing for the N - 1 others of the data set:
         w_ii = 1 / N, w_i,i+1 = (N - M) / (N M) (i + 1 modulo B), every other w_ij = 1 / M
         (minibatch-stratified sampling; each row sums to 1 and, over uniform minibatches,
         sum_j w_ij q(z|x_j) is unbiased for q(z)). Chen et al.'s code builds this matrix with
         a stride of B instead of B + 1, which puts 1 / N and (N - M) / (N M) in columns 0 and 1
         instead of on the diagonal and beside it (rtqichen/beta-tcvae pull request #1); this
         is the matrix their appendix describes.
    """
    size = float(dataset_size)
    if estimator == "mws":
        return torch.full(
            (batch_size, batch_size), -math.log(size * batch_size), dtype=torch.float64
        )
    if batch_size < 2 or dataset_size < batch_size:
        raise ConfigError(
            f"model.tc_estimator=mss needs 2 <= batch size <= model.dataset_size, got a batch of "
            f"{batch_size} from {dataset_size}: change either, or set model.tc_estimator=mws"
        )
    others = batch_size - 1  # M
    weights = torch.full((batch_size, batch_size), 1.0 / others, dtype=torch.float64)
    rows = torch.arange(batch_size)
    weights[rows, (rows + 1) % batch_size] = (size - others) / (size * others)
    weights[rows, rows] = 1.0 / size
    return weights.log()


def kl_decomposition(
    z: Tensor, mean: Tensor, log_var: Tensor, dataset_size: int, estimator: str = "mss"
) -> dict[str, Tensor]:
    """The batch-mean KL split three ways (Chen et al. 2018, section 3), for draws z (samples,
    batch, latent) of q(z|x) = N(mean, diag exp log_var) and p(z) = N(0, I):

        mi     = mean_i log q(z_i|x_i) - log q(z_i)                 index-code mutual information
        tc     = mean_i log q(z_i) - sum_d log q(z_i,d)             total correlation
        dim_kl = mean_i sum_d log q(z_i,d) - log p(z_i,d)           dimension-wise KL

    q(z_i) and q(z_i,d), the aggregate posterior and its marginals, are estimated from the
    minibatch (`log_importance_weights`), each sample s on its own batch. The three add up to
    mean_i log q(z_i|x_i) - log p(z_i), the Monte-Carlo KL of the same draws, whatever the
    estimator. Each is a scalar.
    """
    log_q = log_density_matrix(z, mean, log_var)  # (samples, batch i, batch j, latent)
    log_w = importance_weights_on(len(mean), dataset_size, estimator, log_q.device, log_q.dtype)
    log_q_given_x = log_q.diagonal(dim1=-3, dim2=-2).sum(-2)  # log q(z_i|x_i), (samples, batch)
    log_q_joint = torch.logsumexp(log_w + log_q.sum(-1), dim=-1)  # log q(z_i)
    log_q_marginals = torch.logsumexp(log_w[..., None] + log_q, dim=-2).sum(-1)  # sum_d log q(z_id)
    log_prior = -0.5 * (z.square() + LOG_2PI).sum(-1)  # log N(z_i; 0, I)
    return {
        "mi": (log_q_given_x - log_q_joint).mean(),
        "tc": (log_q_joint - log_q_marginals).mean(),
        "dim_kl": (log_q_marginals - log_prior).mean(),
    }


def dip_covariance(mean: Tensor, log_var: Tensor, dip_type: str) -> Tensor:
    """The covariance (latent, latent) DIP-VAE regularises, over the batch (divided by B):

    i:  Cov_p(x)[mean(x)]                                (Kumar et al. 2018: DIP-VAE-I)
    ii: Cov_q(z)[z] = E_p(x)[diag exp log_var(x)] + Cov_p(x)[mean(x)]   (DIP-VAE-II)
    """
    centred = mean - mean.mean(0)
    covariance = centred.T @ centred / len(mean)
    if dip_type == "ii":
        covariance = covariance + torch.diag(log_var.exp().mean(0))
    return covariance


def dip_penalty(covariance: Tensor, lambda_od: float, lambda_d: float) -> Tensor:
    """lambda_od sum_{i != j} Cov_ij^2 + lambda_d sum_i (Cov_ii - 1)^2: the covariance pulled
    towards the identity, the prior's (Kumar et al. 2018)."""
    diagonal = covariance.diagonal()
    off_diagonal = covariance - torch.diag(diagonal)
    return lambda_od * off_diagonal.square().sum() + lambda_d * (diagonal - 1).square().sum()


def check_options(
    objective: str,
    *,
    stochastic: bool,
    free_bits: float,
    kl_warmup_steps: int,
    kl_schedule: str,
    kl_cycles: int,
    kl_cycle_ratio: float,
    capacity_max: float,
    capacity_steps: int,
    capacity_weight: float,
    tc_weight: float,
    tc_estimator: str,
    dataset_size: int | None,
    dip_type: str,
    lambda_od: float,
) -> None:
    """A ConfigError, one line saying what to do, for an objective option out of range or a
    combination of them that makes no sense (the VAE's constructor calls it)."""
    checks = [
        (kl_schedule in KL_SCHEDULES, f"model.kl_schedule must be one of {KL_SCHEDULES}"),
        (kl_cycles >= 1, f"model.kl_cycles must be a positive integer, got {kl_cycles}"),
        (0 < kl_cycle_ratio <= 1, f"model.kl_cycle_ratio must be in (0, 1], got {kl_cycle_ratio}"),
        (
            kl_schedule != "cyclical" or kl_warmup_steps > 0,
            "model.kl_schedule=cyclical spreads its cycles over model.kl_warmup_steps: set it to "
            "the optimizer steps they span (e.g. the run's total)",
        ),
        (capacity_max >= 0, f"model.capacity_max must be >= 0 nats (0 = off), got {capacity_max}"),
        (capacity_steps >= 0, f"model.capacity_steps must be >= 0, got {capacity_steps}"),
        (capacity_weight >= 0, f"model.capacity_weight must be >= 0, got {capacity_weight}"),
        (tc_weight >= 0, f"model.tc_weight must be >= 0, got {tc_weight}"),
        (tc_estimator in TC_ESTIMATORS, f"model.tc_estimator must be one of {TC_ESTIMATORS}"),
        (
            dataset_size is None or dataset_size >= 1,
            "model.dataset_size must be a positive integer, or null for the training set's size",
        ),
        (dip_type in DIP_TYPES, f"model.dip_type must be one of {DIP_TYPES}, got {dip_type!r}"),
        (lambda_od >= 0, f"model.lambda_od must be >= 0, got {lambda_od}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if objective in ("beta_tcvae", "dip_vae") and not stochastic:
        raise ConfigError(
            f"model.objective={objective} regularises q(z|x), which a deterministic encoder has "
            "not: set model.stochastic=true, or model.objective=elbo"
        )
    if objective == "beta_tcvae" and free_bits > 0:
        raise ConfigError(
            "model.objective=beta_tcvae splits the KL three ways and floors none: set "
            "model.free_bits=0"
        )
    if capacity_max > 0 and (objective not in ("elbo", "dip_vae") or not stochastic):
        raise ConfigError(
            "model.capacity_max targets the KL of a stochastic encoder under model.objective=elbo "
            "or dip_vae: set model.capacity_max=0"
        )
    if capacity_max > 0 and (free_bits > 0 or kl_warmup_steps > 0):
        raise ConfigError(
            "model.capacity_max anneals the KL's target in place of free bits and the KL weight's "
            "schedule: set model.free_bits=0 and model.kl_warmup_steps=0"
        )


def permute_dims(z: Tensor) -> Tensor:
    """Each unit of z (batch, L) shuffled across the batch on its own: draws from prod_j q(z_j),
    the product of the marginals (Kim & Mnih 2018, Algorithm 2)."""
    return z.gather(0, torch.rand_like(z).argsort(dim=0))


def density_ratio_tc(logits: Tensor) -> Tensor:
    """TC(z) ~ E_q(z)[log D(z) / (1 - D(z))], D(z) = softmax(logits)[:, 0] the discriminator's
    probability that z came from q(z) rather than prod_j q(z_j): mean of logit_0 - logit_1."""
    return (logits[:, 0] - logits[:, 1]).mean()


def discriminator_loss(logits_joint: Tensor, logits_permuted: Tensor) -> Tensor:
    """The discriminator's cross-entropy: class 0 for codes from q(z), class 1 for permuted ones,
    the two halves weighted equally (Kim & Mnih 2018)."""
    joint = torch.zeros(len(logits_joint), dtype=torch.long, device=logits_joint.device)
    permuted = torch.ones(len(logits_permuted), dtype=torch.long, device=logits_permuted.device)
    return 0.5 * (
        torch.nn.functional.cross_entropy(logits_joint, joint)
        + torch.nn.functional.cross_entropy(logits_permuted, permuted)
    )
