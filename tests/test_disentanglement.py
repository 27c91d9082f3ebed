"""Disentanglement metrics: values worked out by hand, the ends of each range, invariances."""

import math

import numpy as np
import pytest
import torch

from vaelab.disentanglement import (
    beta_vae_score,
    dci,
    dci_from_importance,
    factor_vae_score,
    fixed_factor_pair_sampler,
    fixed_factor_sampler,
    gaussian_total_correlation,
    mig,
    modularity,
    modularity_from_mutual_information,
    mutual_information_matrix,
    sap,
    sap_continuous,
)

SIZES = (4, 4, 4)  # classes of each factor in the synthetic data
# a perfectly separable beta-VAE training set never converges: its weights grow without bound
separable = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def entropy(*probabilities: float) -> float:
    return -sum(p * math.log(p) for p in probabilities if p > 0)


def sample_factors(sizes: tuple[int, ...], num: int, rng: np.random.Generator) -> np.ndarray:
    return np.stack([rng.integers(size, size=num) for size in sizes], axis=1)


def identity_code(factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return factors + 1e-3 * rng.standard_normal(factors.shape)


def random_code(factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(factors.shape)


def rotated_code(factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each unit carries both factors: z = (f0 + f1, f0 - f1)."""
    rotated = np.stack([factors[:, 0] + factors[:, 1], factors[:, 0] - factors[:, 1]], axis=1)
    return identity_code(rotated, rng)


def packed_code(factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit 0 carries both factors, z0 = f0 + 4 f1 (one-to-one); unit 1 is noise."""
    return np.stack([factors[:, 0] + 4 * factors[:, 1], rng.standard_normal(len(factors))], 1)


def all_scores(code, sizes: tuple[int, ...], seed: int = 0) -> dict[str, float]:
    """Every score of `code` on fresh synthetic data, the batch-based ones on 300 + 300 votes."""
    rng = np.random.default_rng(seed)
    factors, test_factors = sample_factors(sizes, 400, rng), sample_factors(sizes, 200, rng)
    codes, test_codes = code(factors, rng), code(test_factors, rng)

    def encode(batch: np.ndarray) -> np.ndarray:
        return code(batch, rng)

    result = dci(codes, factors, test_codes, test_factors)
    votes = {"num_train": 300, "num_eval": 300, "seed": seed}
    sampler = fixed_factor_sampler(sizes, encode)
    return {
        "mig": mig(codes, factors),
        "sap": sap(codes, factors, test_codes, test_factors),
        "disentanglement": result.disentanglement,
        "completeness": result.completeness,
        "informativeness": result.informativeness_test,
        "modularity": modularity(codes, factors),
        "factor_vae": factor_vae_score(sampler, codes, len(sizes), **votes).eval_accuracy,
        "beta_vae": beta_vae_score(fixed_factor_pair_sampler(sizes, encode), len(sizes), **votes),
        "total_correlation": gaussian_total_correlation(codes),
    }


def test_mig_and_modularity_of_four_points_match_hand_computation():
    factors = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    codes = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 2.0]])  # z0 = f0, z1 = f1 (1 + f0)
    # every distinct value falls in its own bin of 20, so I(z; v) = H(z) - H(z | v) on the values
    h_factor = entropy(1 / 2, 1 / 2)  # log 2, both factors
    h_z1 = entropy(1 / 2, 1 / 4, 1 / 4)  # z1 = 0, 1, 2 with probabilities 1/2, 1/4, 1/4
    information = np.array(
        [
            [h_factor, 0.0],  # z0 = f0; z0 is independent of f1
            # z1 given f0 = 0 or 1: {0, 1} or {0, 2}, log 2 each; given f1 = 0: 0, f1 = 1: {1, 2}
            [h_z1 - h_factor, h_z1 - 0.5 * h_factor],
        ]
    )
    assert mutual_information_matrix(codes, factors) == pytest.approx(information, abs=1e-12)
    gaps = [(information[0, 0] - information[1, 0]), (information[1, 1] - information[0, 1])]
    expected = (gaps[0] / h_factor + gaps[1] / h_factor) / 2
    assert expected == pytest.approx(0.75)
    assert mig(codes, factors) == pytest.approx(expected, abs=1e-12)
    assert mig(torch.tensor(codes), torch.tensor(factors)) == pytest.approx(expected, abs=1e-12)
    # modularity per unit: 1 - (sum of the other squared MIs) / (largest squared MI (K - 1))
    per_unit = [1.0, 1 - information[1, 0] ** 2 / information[1, 1] ** 2]
    assert modularity(codes, factors) == pytest.approx(np.mean(per_unit), abs=1e-12)
    assert np.mean(per_unit) == pytest.approx(0.875)


def test_modularity_of_a_hand_made_mutual_information_matrix():
    information = np.array([[0.6, 0.2, 0.0], [0.1, 0.3, 0.3], [0.0, 0.0, 0.0]])
    per_unit = [
        1 - 0.2**2 / (0.6**2 * 2),
        1 - (0.1**2 + 0.3**2) / (0.3**2 * 2),
        0.0,  # a unit with no information counts 0
    ]
    assert modularity_from_mutual_information(information) == pytest.approx(np.mean(per_unit))
    assert np.mean(per_unit) == pytest.approx((17 / 18 + 4 / 9) / 3)


def test_dci_of_a_hand_made_importance_matrix():
    importance = np.array([[0.6, 0.1], [0.2, 0.0], [0.0, 0.5]])  # 3 units x 2 factors
    total = importance.sum()
    disentanglement = (
        0.7 / total * (1 - entropy(6 / 7, 1 / 7) / math.log(2))  # unit 0: P = (6/7, 1/7)
        + 0.2 / total * 1.0  # unit 1: only factor 0
        + 0.5 / total * 1.0  # unit 2: only factor 1
    )
    completeness = (
        0.8 / total * (1 - entropy(3 / 4, 1 / 4) / math.log(3))  # factor 0: units 0, 1
        + 0.6 / total * (1 - entropy(1 / 6, 5 / 6) / math.log(3))  # factor 1: units 0, 2
    )
    result = dci_from_importance(importance)
    assert result == pytest.approx((disentanglement, completeness), abs=1e-8)
    assert dci_from_importance(np.eye(3)) == pytest.approx((1.0, 1.0), abs=1e-8)
    assert dci_from_importance(np.ones((3, 3))) == pytest.approx((0.0, 0.0), abs=1e-8)


def test_gaussian_total_correlation_of_a_known_covariance():
    rho = 0.6
    covariance = np.array([[4.0, rho * 2 * 0.5], [rho * 2 * 0.5, 0.25]])
    white = np.random.default_rng(0).standard_normal((50, 2))
    white = white @ np.linalg.inv(np.linalg.cholesky(np.cov(white, rowvar=False))).T
    codes = white @ np.linalg.cholesky(covariance).T  # sample covariance exactly `covariance`
    assert np.cov(codes, rowvar=False) == pytest.approx(covariance)
    assert gaussian_total_correlation(codes) == pytest.approx(-0.5 * math.log(1 - rho**2))
    independent = np.stack([white[:, 0] * 3, white[:, 1]], axis=1)
    assert gaussian_total_correlation(independent) == pytest.approx(0.0, abs=1e-12)


def test_sap_on_a_balanced_grid_matches_hand_computation():
    factors = np.tile([[0, 0], [0, 1], [1, 0], [1, 1]], (25, 1))
    codes = np.stack([10.0 * factors[:, 0] - 5, np.zeros(len(factors))], axis=1)
    # factor 0: unit 0 separates it (accuracy 1), the constant unit predicts one class (1/2);
    # factor 1: both units are functions of f0, independent of f1 on the grid, so both score 1/2
    assert sap(codes, factors, codes, factors) == pytest.approx(((1 - 1 / 2) + 0) / 2)


def test_continuous_sap_matches_hand_computation():
    codes = np.array([[1.0, 1.0], [2.0, 0.0], [3.0, 0.0], [4.0, 1.0]])
    factors = np.array([[0, 0], [1, 1], [2, 1], [3, 1]])
    # centred: z0 (-1.5, -0.5, 0.5, 1.5), z1 (0.5, -0.5, -0.5, 0.5), v1 (-0.75, 0.25, 0.25, 0.25);
    # v0 = z0 - 1 (R^2 1), orthogonal to z1 (0); R^2(z0, v1) = 1.5^2 / (5 * 0.75) = 0.6,
    # R^2(z1, v1) = (-0.5)^2 / (1 * 0.75) = 1/3
    assert sap_continuous(codes, factors) == pytest.approx(((1 - 0) + (0.6 - 1 / 3)) / 2)


@separable
def test_batch_scores_of_a_unit_shared_by_two_factors_are_two_thirds():
    """z0 = f0 + f1, z1 = f2, z2 collapsed: fixing f0 or f1 looks the same, fixing f2 does not.

    Votes (and beta-VAE points) for f0 and f1 go the same way, so a classifier gets at most one
    of them right: the expected accuracy is P(f2) + P(the one it picks) = 1/3 + 1/3.
    """
    noise = np.random.default_rng(1)

    def encode(factors: np.ndarray) -> np.ndarray:
        units = [factors[:, 0] + factors[:, 1], factors[:, 2], np.zeros(len(factors))]
        return np.stack(units, axis=1) + 1e-2 * noise.standard_normal((len(factors), 3))

    codes = encode(sample_factors(SIZES, 1000, noise))
    votes = {"num_train": 1000, "num_eval": 2000}
    score = factor_vae_score(fixed_factor_sampler(SIZES, encode), codes, 3, **votes)
    assert score.num_active_units == 2  # z2's standard deviation 0.01 < 0.05
    assert score.eval_accuracy == pytest.approx(2 / 3, abs=0.04)
    pairs = fixed_factor_pair_sampler(SIZES, encode)
    assert beta_vae_score(pairs, 3, **votes) == pytest.approx(2 / 3, abs=0.04)


@separable
def test_a_code_equal_to_the_factors_scores_at_the_top():
    scores = all_scores(identity_code, SIZES)
    for name in ("mig", "disentanglement", "completeness", "informativeness", "modularity"):
        assert scores[name] > 0.95, name
    assert scores["factor_vae"] == 1.0
    assert scores["beta_vae"] == 1.0
    # SAP's best is below 1: a 1-D linear classifier of 4 classes beats an unrelated unit by ~0.5
    assert scores["sap"] > 0.4
    assert scores["total_correlation"] == pytest.approx(0.0, abs=0.05)  # independent factors


def test_a_random_code_scores_at_the_bottom():
    scores = all_scores(random_code, SIZES)
    for name in ("mig", "sap", "disentanglement", "completeness", "total_correlation"):
        assert scores[name] < 0.1, name
    assert scores["informativeness"] < 0.4  # chance is 1/4
    assert scores["factor_vae"] < 0.45  # chance is 1/3
    assert scores["beta_vae"] < 0.45
    # modularity ignores how much a unit tells: the noise in a random unit's small MIs is enough
    assert scores["modularity"] < 0.5


@separable
def test_a_rotated_code_is_informative_but_not_disentangled():
    scores = all_scores(rotated_code, (4, 4))
    for name in ("mig", "disentanglement", "completeness", "modularity"):
        assert scores[name] < 0.1, name
    assert scores["informativeness"] > 0.95
    assert scores["factor_vae"] < 0.6  # chance is 1/2: f0 and f1 shrink both units alike
    assert scores["beta_vae"] < 0.6


@separable
def test_a_unit_packing_two_factors_is_complete_but_not_disentangled():
    scores = all_scores(packed_code, (4, 4))
    assert scores["disentanglement"] < 0.05
    assert scores["modularity"] < 0.5  # unit 0 scores 0, the noise unit anything in [0, 1]
    assert scores["completeness"] > 0.95
    assert scores["informativeness"] > 0.95
    assert scores["mig"] > 0.9  # MIG cannot see it: each factor has one best unit
    assert scores["beta_vae"] > 0.95  # nor beta-VAE: |z0 - z0'| is larger when f1 varies


def test_permuting_and_rescaling_units_changes_no_score():
    mixing = np.array([[1.0, 0.3, 0.0, 0.5], [0.0, 1.0, 0.2, 0.5], [0.0, 0.5, 1.0, 0.0]])
    order, scale = np.array([2, 0, 3, 1]), np.array([3.0, -0.5, 7.0, -1.5])
    sizes = (2, 4, 4)
    rng = np.random.default_rng(0)
    factors, test_factors = sample_factors(sizes, 400, rng), sample_factors(sizes, 200, rng)

    def encoder(transform):
        noise = np.random.default_rng(1)

        def encode(batch: np.ndarray) -> np.ndarray:
            return transform(batch @ mixing + 0.7 * noise.standard_normal((len(batch), 4)))

        return encode

    def scores(transform) -> dict[str, float]:
        encode = encoder(transform)
        codes, test_codes = encode(factors), encode(test_factors)
        sampler = fixed_factor_sampler(sizes, encode)
        return {
            "mig": mig(codes, factors),
            "modularity": modularity(codes, factors),
            "total_correlation": gaussian_total_correlation(codes),
            "factor_vae": factor_vae_score(sampler, codes, 3, num_train=300, num_eval=300),
            "dci": dci(codes, factors, test_codes, test_factors)[:2],
            "sap": sap(codes, factors, test_codes, test_factors),
        }

    plain = scores(lambda codes: codes)
    moved = scores(lambda codes: codes[:, order] * scale)
    assert 0.1 < plain["mig"] < 0.9 and 0.5 < plain["factor_vae"].eval_accuracy < 1
    for name in ("mig", "modularity", "total_correlation", "factor_vae"):
        assert moved[name] == pytest.approx(plain[name], rel=1e-9), name
    # the trees break ties between equally good splits by a seeded order of the units
    assert moved["dci"] == pytest.approx(plain["dci"], abs=0.01)
    # SAP's LinearSVC penalises the weight, so only the order and signs of units are free
    flipped = encoder(lambda codes: codes[:, order] * np.sign(scale))
    flipped_sap = sap(flipped(factors), factors, flipped(test_factors), test_factors)
    assert flipped_sap == pytest.approx(plain["sap"], abs=1e-12)
