"""Scores from batches that hold one factor fixed: the beta-VAE and FactorVAE scores.

Both take a callable that draws such batches, so any dataset and encoder plug in; for a dataset
whose images are a function of the factors (the sprites' `render`), `fixed_factor_sampler` and
`fixed_factor_pair_sampler` build it from the factor sizes and an `encode(factors) -> codes`.
"""

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from sklearn.linear_model import LogisticRegression

from vaelab.disentanglement.arrays import Array, as_numpy

CodeSampler = Callable[[np.ndarray, int, np.random.Generator], Array]
PairSampler = Callable[[np.ndarray, int, np.random.Generator], tuple[Array, Array]]
Encoder = Callable[[np.ndarray], Array]
POINTS_PER_CALL = 64  # points whose batches are drawn and encoded together (64 x 64 images)


def sample_factors(
    factor_sizes: Sequence[int], batch_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Factor classes (batch_size, K), each factor uniform over its classes."""
    return np.stack([rng.integers(size, size=batch_size) for size in factor_sizes], axis=1)


def _encode_batches(encode: Encoder, factors: np.ndarray) -> np.ndarray:
    """Codes (P, B, L) of factor classes (P, B, K), encoded in one call."""
    points, batch_size, num_factors = factors.shape
    codes = as_numpy(encode(factors.reshape(-1, num_factors)))
    return codes.reshape(points, batch_size, -1)


def fixed_factor_sampler(factor_sizes: Sequence[int], encode: Encoder) -> CodeSampler:
    """Codes (P, B, L) of P batches of uniform factor classes; in batch i, factor `ks[i]`
    shares one random value."""

    def sample_codes(ks: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        factors = sample_factors(factor_sizes, len(ks) * batch_size, rng)
        factors = factors.reshape(len(ks), batch_size, -1)
        points = np.arange(len(ks))
        factors[points, :, ks] = factors[points, :1, ks]
        return _encode_batches(encode, factors)

    return sample_codes


def fixed_factor_pair_sampler(factor_sizes: Sequence[int], encode: Encoder) -> PairSampler:
    """Codes (P, B, L) of two sets of P batches of uniform factor classes; pair (i, b) shares
    the value of factor `ks[i]`."""

    def sample_pairs(
        ks: np.ndarray, batch_size: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        shape = (len(ks), batch_size, -1)
        first = sample_factors(factor_sizes, len(ks) * batch_size, rng).reshape(shape)
        second = sample_factors(factor_sizes, len(ks) * batch_size, rng).reshape(shape)
        points = np.arange(len(ks))
        second[points, :, ks] = first[points, :, ks]
        return _encode_batches(encode, first), _encode_batches(encode, second)

    return sample_pairs


def _beta_vae_points(
    sample_pairs: PairSampler,
    num_factors: int,
    batch_size: int,
    num_points: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(num_factors, size=num_points)
    points = []
    for start in range(0, num_points, POINTS_PER_CALL):
        ks = labels[start : start + POINTS_PER_CALL]
        first, second = (as_numpy(codes) for codes in sample_pairs(ks, batch_size, rng))
        points.append(np.mean(np.abs(first - second), axis=1))  # z_diff = mean_b |z1_b - z2_b|
    return np.concatenate(points), labels


def beta_vae_score(
    sample_pairs: PairSampler,
    num_factors: int,
    batch_size: int = 64,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    seed: int = 0,
) -> float:
    """beta-VAE score (Higgins et al. 2017): held-out accuracy of a linear classifier.

    Each point: a random factor k, `batch_size` pairs sharing factor k, feature mean |z1 - z2|;
    a LogisticRegression (sklearn defaults: multinomial, L2, C=1) predicts k. disentanglement_lib's
    beta_vae.py with its defaults (64, 10,000, 5,000); it ran sklearn 0.20, whose default was a
    one-vs-rest liblinear fit, and the paper a linear softmax trained by Adagrad.
    """
    rng = np.random.default_rng(seed)
    train = _beta_vae_points(sample_pairs, num_factors, batch_size, num_train, rng)
    model = LogisticRegression(random_state=seed).fit(*train)
    evaluation = _beta_vae_points(sample_pairs, num_factors, batch_size, num_eval, rng)
    return float(model.score(*evaluation))


class FactorVAEScore(NamedTuple):
    """Accuracy of the majority-vote classifier on its votes and on fresh ones."""

    train_accuracy: float
    eval_accuracy: float
    num_active_units: int


def _factor_vae_votes(
    sample_codes: CodeSampler,
    num_factors: int,
    variances: np.ndarray,
    active: np.ndarray,
    batch_size: int,
    num_points: int,
    rng: np.random.Generator,
) -> np.ndarray:
    votes = np.zeros((num_factors, len(variances)), dtype=np.int64)
    labels = rng.integers(num_factors, size=num_points)
    for start in range(0, num_points, POINTS_PER_CALL):
        ks = labels[start : start + POINTS_PER_CALL]
        local = np.var(as_numpy(sample_codes(ks, batch_size, rng)), axis=1, ddof=1)
        # the unit whose variance, normalised by its variance over the data, is least
        units = active[np.argmin(local[:, active] / variances[active], axis=1)]
        np.add.at(votes, (ks, units), 1)
    return votes


def factor_vae_score(
    sample_codes: CodeSampler,
    codes: Array,
    num_factors: int,
    batch_size: int = 64,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    prune_threshold: float = 0.05,
    seed: int = 0,
) -> FactorVAEScore:
    """FactorVAE score (Kim & Mnih 2018) as disentanglement_lib's factor_vae.py.

    `codes`: codes of random data, for the variance of each unit (ddof=1). Units whose standard
    deviation is below `prune_threshold` are dropped (collapsed to the prior; disentanglement_lib's
    configs use 0.05). Each vote: a random factor k, a batch of `batch_size` with k fixed, the
    active unit of least variance / data variance. The classifier maps each unit to the factor
    that got most of its training votes; eval_accuracy is its accuracy on `num_eval` new votes.
    """
    variances = np.var(as_numpy(codes).astype(np.float64), axis=0, ddof=1)
    active = np.flatnonzero(np.sqrt(variances) >= prune_threshold)
    if len(active) == 0:
        return FactorVAEScore(0.0, 0.0, 0)
    rng = np.random.default_rng(seed)
    arguments = (sample_codes, num_factors, variances, active, batch_size)
    train_votes = _factor_vae_votes(*arguments, num_train, rng)
    classifier = np.argmax(train_votes, axis=0)  # unit -> its majority factor
    eval_votes = _factor_vae_votes(*arguments, num_eval, rng)
    units = np.arange(len(variances))
    return FactorVAEScore(
        float(train_votes[classifier, units].sum() / train_votes.sum()),
        float(eval_votes[classifier, units].sum() / eval_votes.sum()),
        len(active),
    )
