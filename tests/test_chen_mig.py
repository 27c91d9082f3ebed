"""Chen et al.'s MIG estimator against mutual information computed by quadrature."""

import math

import numpy as np
import pytest

from vaelab.disentanglement.chen import chen_mutual_information, mig_chen


def mixture_information(centres: np.ndarray, sigma: float) -> float:
    """I(z; v) for v uniform over the centres and z | v ~ N(centre_v, sigma^2), by quadrature:
    H(z) of the mixture on a fine grid minus H(z | v) = 0.5 log(2 pi e sigma^2)."""
    grid = np.linspace(centres.min() - 10 * sigma, centres.max() + 10 * sigma, 200_001)
    density = np.mean(
        [
            np.exp(-0.5 * ((grid - c) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
            for c in centres
        ],
        axis=0,
    )
    integrand = np.where(density > 0, -density * np.log(np.where(density > 0, density, 1)), 0)
    return float(np.trapezoid(integrand, grid)) - 0.5 * math.log(2 * math.pi * math.e * sigma**2)


def toy_posterior(num: int, sigma: float, rng: np.random.Generator):
    """Factor 0 uniform on 4 values coded by unit 0 as N(v, sigma^2); unit 1 is N(0, 1) for every
    x, so it carries nothing; factor 1 (3 values) is coded by no unit."""
    factors = np.stack([rng.integers(4, size=num), rng.integers(3, size=num)], axis=1)
    mean = np.stack([factors[:, 0].astype(float), np.zeros(num)], axis=1)
    log_var = np.log(np.stack([np.full(num, sigma**2), np.ones(num)], axis=1))
    samples = mean + np.exp(0.5 * log_var) * rng.standard_normal(mean.shape)
    return samples, mean, log_var, factors


@pytest.mark.parametrize("sigma", [0.3, 1.0])
def test_mutual_information_matches_quadrature(sigma):
    samples, mean, log_var, factors = toy_posterior(3000, sigma, np.random.default_rng(0))
    information = chen_mutual_information(samples, mean, log_var, factors)
    expected = mixture_information(np.arange(4.0), sigma)
    assert information[0, 0] == pytest.approx(expected, abs=0.03)
    assert abs(information[1, 0]) < 0.01 and np.all(np.abs(information[:, 1]) < 0.02)


def test_mig_of_a_unit_that_fully_codes_its_factor_is_near_one():
    samples, mean, log_var, factors = toy_posterior(3000, 0.01, np.random.default_rng(1))
    factors = factors[:, :1]
    assert mig_chen(samples, mean, log_var, factors) == pytest.approx(1.0, abs=0.01)
    # the same information split over two copies of the unit leaves no gap
    doubled = [np.concatenate([a, a[:, :1]], axis=1) for a in (samples, mean, log_var)]
    assert mig_chen(*doubled, factors) == pytest.approx(0.0, abs=0.01)
