"""Scores from classifiers that predict each factor from the codes: SAP and DCI."""

from typing import NamedTuple

import numpy as np
from scipy.stats import entropy
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.svm import LinearSVC

from vaelab.disentanglement.arrays import Array, codes_and_factors

EPSILON = 1e-11  # disentanglement_lib adds it to the importances before taking entropies


def _top_two_gap(scores: np.ndarray) -> float:
    """Mean over factors (columns) of the best unit's score minus the second best's."""
    top = np.sort(scores, axis=0)[::-1]
    return float(np.mean(top[0] - top[1]))


def sap(codes_train: Array, factors_train: Array, codes_test: Array, factors_test: Array) -> float:
    """SAP score (Kumar et al. 2018) for discrete factors, as disentanglement_lib's sap_score.py.

    Score of unit j for factor k: the test accuracy of LinearSVC(C=0.01, class_weight="balanced")
    trained on that unit alone (plain accuracy, classes weighted only in training); SAP = mean_k
    of the top score minus the second. An uninformative unit scores about chance, so even a
    perfect code stays below 1 (about 1 - 1/classes). The SVC penalises its weight and intercept,
    so rescaling a unit can move its score a little; its sign and position cannot.
    """
    codes_train, factors_train = codes_and_factors(codes_train, factors_train)
    codes_test, factors_test = codes_and_factors(codes_test, factors_test)
    scores = np.zeros((codes_train.shape[1], factors_train.shape[1]))
    for j in range(codes_train.shape[1]):
        for k in range(factors_train.shape[1]):
            classifier = LinearSVC(C=0.01, class_weight="balanced")
            classifier.fit(codes_train[:, j : j + 1], factors_train[:, k])
            predicted = classifier.predict(codes_test[:, j : j + 1])
            scores[j, k] = np.mean(predicted == factors_test[:, k])
    return _top_two_gap(scores)


def sap_continuous(codes: Array, factors: Array) -> float:
    """SAP score (Kumar et al. 2018) for continuous factors: R^2 of a 1-D linear regression.

    Score of unit j for factor k: Cov(z_j, v_k)^2 / (Var z_j Var v_k), 0 for a unit of variance
    under 1e-12 (disentanglement_lib, continuous_factors=True); SAP = mean_k top minus second.
    """
    codes, factors = codes_and_factors(codes, factors)
    scores = np.zeros((codes.shape[1], factors.shape[1]))
    for j, unit in enumerate(codes.T):
        for k, factor in enumerate(factors.T.astype(np.float64)):
            covariance = np.cov(unit, factor, ddof=1)
            if covariance[0, 0] > 1e-12:
                scores[j, k] = covariance[0, 1] ** 2 / (covariance[0, 0] * covariance[1, 1])
    return _top_two_gap(scores)


class DCI(NamedTuple):
    """Eastwood & Williams 2018's three scores (informativeness as classification accuracy)."""

    disentanglement: float
    completeness: float
    informativeness_train: float
    informativeness_test: float


def dci_from_importance(importance: np.ndarray) -> tuple[float, float]:
    """(disentanglement, completeness) of an (L, K) importance matrix R (Eastwood & Williams 2018).

    D = sum_j rho_j (1 - H_K(P_j.)), P_jk = R_jk / sum_k R_jk, rho_j = sum_k R_jk / sum R;
    C = sum_k rho_k (1 - H_L(P~_.k)), P~_jk = R_jk / sum_j R_jk, rho_k = sum_j R_jk / sum R;
    entropies in base K and base L. As disentanglement_lib: 1e-11 is added to R inside the
    entropies, and C is weighted by the factors' shares of importance, which is the plain mean
    over factors that the paper reports whenever every column sums to the same (GBT importances
    sum to 1).
    """
    importance = np.asarray(importance, dtype=np.float64)
    num_units, num_factors = importance.shape
    per_unit = 1 - entropy(importance.T + EPSILON, base=num_factors)  # entropy over axis 0
    per_factor = 1 - entropy(importance + EPSILON, base=num_units)
    if importance.sum() == 0:
        importance = np.ones_like(importance)
    unit_weight = importance.sum(axis=1) / importance.sum()
    factor_weight = importance.sum(axis=0) / importance.sum()
    return float(np.sum(per_unit * unit_weight)), float(np.sum(per_factor * factor_weight))


def dci(
    codes_train: Array,
    factors_train: Array,
    codes_test: Array,
    factors_test: Array,
    seed: int = 0,
) -> DCI:
    """DCI (Eastwood & Williams 2018) with gradient-boosted trees, as disentanglement_lib's dci.py.

    One GradientBoostingClassifier (sklearn defaults, `seed` fixing its tie-breaks) per factor;
    column k of R is its |feature_importances_|; informativeness is the mean accuracy over factors.
    """
    codes_train, factors_train = codes_and_factors(codes_train, factors_train)
    codes_test, factors_test = codes_and_factors(codes_test, factors_test)
    importance = np.zeros((codes_train.shape[1], factors_train.shape[1]))
    train_accuracy, test_accuracy = [], []
    for k in range(factors_train.shape[1]):
        model = GradientBoostingClassifier(random_state=seed)
        model.fit(codes_train, factors_train[:, k])
        importance[:, k] = np.abs(model.feature_importances_)
        train_accuracy.append(np.mean(model.predict(codes_train) == factors_train[:, k]))
        test_accuracy.append(np.mean(model.predict(codes_test) == factors_test[:, k]))
    disentanglement, completeness = dci_from_importance(importance)
    return DCI(
        disentanglement, completeness, float(np.mean(train_accuracy)), float(np.mean(test_accuracy))
    )
