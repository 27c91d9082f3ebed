"""Every disentanglement metric of a model on data with ground-truth factors, at one size.

`num_points` n sizes them all as disentanglement_lib's defaults do at n = 10,000: MIG, modularity,
the Gaussian TC and the training halves of SAP and DCI on n codes of uniformly drawn factor
classes, their test halves on n // 2 more; the FactorVAE score from n training and n // 2
evaluation votes (batches of 64, unit variances from the n codes); the beta-VAE score from n
training and n // 2 evaluation points (64 pairs each). Codes are the model's `code` (the posterior
mean) of the images `datamodule.images_of` renders or reads for the drawn classes.
"""

from collections.abc import Callable, Sequence

import lightning as L
import numpy as np
import torch

from vaelab.disentanglement.chen import mig_chen
from vaelab.disentanglement.classifiers import dci, sap
from vaelab.disentanglement.information import gaussian_total_correlation, mig, modularity
from vaelab.disentanglement.interventions import (
    Encoder,
    beta_vae_score,
    factor_vae_score,
    fixed_factor_pair_sampler,
    fixed_factor_sampler,
    sample_factors,
)
from vaelab.errors import ConfigError

Posterior = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # classes -> mean, log_var


def disentanglement_scores(
    encode: Encoder,
    factor_sizes: Sequence[int],
    num_points: int,
    seed: int = 0,
    posterior: Posterior | None = None,
) -> dict[str, float]:
    """MIG, SAP, DCI's three scores, modularity, the FactorVAE and beta-VAE scores and the
    Gaussian total correlation of `encode`'s codes, from factor classes drawn with `seed`; with
    a diagonal-Gaussian `posterior`, also `mig_chen`, MIG by Chen et al.'s own estimator on the
    n training points, one draw of q(z|x) each."""
    rng = np.random.default_rng(seed)
    factors_train = sample_factors(factor_sizes, num_points, rng)
    factors_test = sample_factors(factor_sizes, max(num_points // 2, 1), rng)
    codes_train, codes_test = encode(factors_train), encode(factors_test)
    scores = dci(codes_train, factors_train, codes_test, factors_test, seed=seed)
    num_factors = len(factor_sizes)
    factor_vae = factor_vae_score(
        fixed_factor_sampler(factor_sizes, encode),
        codes_train,
        num_factors,
        num_train=num_points,
        num_eval=max(num_points // 2, 1),
        seed=seed,
    )
    beta_vae = beta_vae_score(
        fixed_factor_pair_sampler(factor_sizes, encode),
        num_factors,
        num_train=num_points,
        num_eval=max(num_points // 2, 1),
        seed=seed,
    )
    scores_of_posterior = {}
    if posterior is not None:
        mean, log_var = posterior(factors_train)
        draws = mean + np.exp(0.5 * log_var) * rng.standard_normal(mean.shape)
        scores_of_posterior["mig_chen"] = mig_chen(draws, mean, log_var, factors_train)
    return {
        "mig": mig(codes_train, factors_train),
        **scores_of_posterior,
        "sap": sap(codes_train, factors_train, codes_test, factors_test),
        "dci_disentanglement": scores.disentanglement,
        "dci_completeness": scores.completeness,
        "dci_informativeness": scores.informativeness_test,
        "modularity": modularity(codes_train, factors_train),
        "factor_vae_score": factor_vae.eval_accuracy,
        "beta_vae_score": beta_vae,
        "gaussian_tc": gaussian_total_correlation(codes_train),
    }


def check_factors(datamodule: L.LightningDataModule) -> None:
    """A one-line error unless the data has ground-truth factors."""
    if getattr(datamodule, "factor_sizes", None) is None:
        raise ConfigError(
            f"{type(datamodule).__name__} has no ground-truth factors: the disentanglement "
            "metrics need data=sprites or data=dsprites (or set their points to 0)"
        )


def images_to(
    model: torch.nn.Module, datamodule: L.LightningDataModule, net: Callable
) -> Callable[[np.ndarray], np.ndarray]:
    """Factor classes (N, K) -> `net`'s outputs (a tuple of (N, L) tensors) for their images,
    stacked on a last axis, in chunks, in eval mode."""
    check_factors(datamodule)
    # on a CPU a conv encoder codes 64 images at a time 2-3x faster per image than 256 or 1024
    chunk = 64 if model.device.type == "cpu" else datamodule.eval_batch_size

    @torch.no_grad()
    def encode(factors: np.ndarray) -> np.ndarray:
        was_training = model.training
        model.eval()
        codes = []
        for classes in torch.from_numpy(np.asarray(factors)).split(chunk):
            images = datamodule.images_of(classes).to(model.device)
            codes.append(torch.stack(tuple(net(images.float().div_(255))), -1).double().cpu())
        model.train(was_training)
        return torch.cat(codes).numpy()

    return encode


def model_encoder(model: torch.nn.Module, datamodule: L.LightningDataModule) -> Encoder:
    """Factor classes (N, K) -> the model's codes (N, L) of their images, in chunks."""
    code = images_to(model, datamodule, lambda x: (model.code(x),))
    return lambda factors: code(factors)[..., 0]


def model_posterior(model: torch.nn.Module, datamodule: L.LightningDataModule) -> Posterior | None:
    """Factor classes (N, K) -> q(z|x)'s mean and log-variance (N, L) of their images, for a
    model with one diagonal-Gaussian stochastic layer; None for any other."""
    one_layer = getattr(model, "num_units", None) == getattr(model, "latent_dim", 0)
    if not (model.stochastic and model.posterior.gaussian and one_layer):
        return None
    parameters = images_to(model, datamodule, lambda x: model.encode(x)[:2])

    def posterior(factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        both = parameters(factors)
        return both[..., 0], both[..., 1]

    return posterior


def model_disentanglement(
    model: torch.nn.Module, datamodule: L.LightningDataModule, num_points: int, seed: int = 0
) -> dict[str, float]:
    """`disentanglement_scores` of a model's codes on its datamodule's factors."""
    encode = model_encoder(model, datamodule)
    posterior = model_posterior(model, datamodule)
    return disentanglement_scores(encode, datamodule.factor_sizes, num_points, seed, posterior)
