"""Scores from the binned mutual information of codes and factors, and the Gaussian TC."""

import numpy as np
from sklearn.metrics import mutual_info_score

from vaelab.disentanglement.arrays import Array, as_numpy, codes_and_factors


def discretise(codes: Array, num_bins: int = 20) -> np.ndarray:
    """Bin each code unit into `num_bins` equal-width bins over its range (labels 1..num_bins).

    disentanglement_lib's `_histogram_discretize`: np.digitize against np.histogram's edges less
    the last, so the maximum falls in the top bin.
    """
    codes = as_numpy(codes)
    return np.stack(
        [np.digitize(unit, np.histogram(unit, num_bins)[1][:-1]) for unit in codes.T], axis=1
    )


def mutual_information_matrix(codes: Array, factors: Array, num_bins: int = 20) -> np.ndarray:
    """I(binned z_j; v_k) in nats, (L, K), by sklearn's plug-in `mutual_info_score`."""
    codes, factors = codes_and_factors(codes, factors)
    binned = discretise(codes, num_bins)
    return np.array(
        [[mutual_info_score(factor, unit) for factor in factors.T] for unit in binned.T]
    )


def mig(codes: Array, factors: Array, num_bins: int = 20) -> float:
    """Mutual Information Gap (Chen et al. 2018), disentanglement_lib's binned estimator.

    MIG = mean_k (I(z_a; v_k) - I(z_b; v_k)) / H(v_k), z_a and z_b the two units with the largest
    mutual information with factor v_k. The MI is that of the means binned into `num_bins`
    equal-width bins (`mutual_information_matrix`), as Locatello et al. 2019 compute it. Chen et
    al.'s own estimator differs: it uses the whole posterior q(z_j|x), sampling z_j and estimating
    H(z_j) and H(z_j | v_k) with log q(z_j) = log mean_x q(z_j|x) over the full factor grid, so
    its values are not the same numbers as these (that estimator: vaelab.disentanglement.chen).
    A unit that encodes two factors still gets a full gap for each: MIG penalises only a factor
    spread over several units.
    """
    codes, factors = codes_and_factors(codes, factors)
    return mig_from_information(mutual_information_matrix(codes, factors, num_bins), factors)


def mig_from_information(information: np.ndarray, factors: Array) -> float:
    """mean_k (I_top - I_second) / H(v_k) for an (L, K) mutual-information matrix, H(v_k) the
    factors' empirical entropies: the gap both MIG estimators share."""
    if information.shape[0] < 2:
        raise ValueError("MIG needs at least two code units")
    entropy = np.array([mutual_info_score(factor, factor) for factor in as_numpy(factors).T])
    if np.any(entropy == 0):
        raise ValueError("MIG is undefined for a constant factor (zero entropy)")
    top = np.sort(information, axis=0)[::-1]
    return float(np.mean((top[0] - top[1]) / entropy))


def modularity_from_mutual_information(information: np.ndarray) -> float:
    """Modularity (Ridgeway & Zemel 2018) of an (L, K) mutual-information matrix.

    For unit j with largest squared MI theta_j^2 = max_k m_jk^2:
    delta_j = sum_{k != argmax} m_jk^2 / (theta_j^2 (K - 1)), modularity_j = 1 - delta_j; the
    score is the mean over units, a unit with no information counting 0 (disentanglement_lib).
    """
    squared = np.square(np.asarray(information, dtype=np.float64))
    largest = squared.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = (squared.sum(axis=1) - largest) / (largest * (squared.shape[1] - 1))
    return float(np.mean(np.where(largest == 0, 0.0, 1 - delta)))


def modularity(codes: Array, factors: Array, num_bins: int = 20) -> float:
    """Modularity (Ridgeway & Zemel 2018) from the binned MI, as disentanglement_lib computes it."""
    return modularity_from_mutual_information(mutual_information_matrix(codes, factors, num_bins))


def gaussian_total_correlation(codes: Array) -> float:
    """Total correlation of the Gaussian fitted to the codes, in nats.

    TC = KL(N(0, S) || N(0, diag S)) = 0.5 (sum_j log S_jj - log det S), S the sample covariance
    (disentanglement_lib, unsupervised_metrics.py).
    """
    codes = as_numpy(codes).astype(np.float64)
    covariance = np.atleast_2d(np.cov(codes, rowvar=False))
    if np.any(np.diag(covariance) == 0):
        raise ValueError("the total correlation is undefined for a constant code unit")
    return float(0.5 * (np.sum(np.log(np.diag(covariance))) - np.linalg.slogdet(covariance)[1]))
