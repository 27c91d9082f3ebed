"""Disentanglement metrics from mean codes and ground-truth factors.

Each follows disentanglement_lib (Locatello et al. 2019, "Challenging Common Assumptions in the
Unsupervised Learning of Disentangled Representations"), which reimplemented every score from its
paper; where that code and the paper differ, the function's docstring says so. Codes are (N, L)
floats, factors (N, K) integer classes, as the sprites' labels (shape, scale, orientation, x, y).
"""

from vaelab.disentanglement.classifiers import DCI, dci, dci_from_importance, sap, sap_continuous
from vaelab.disentanglement.information import (
    discretise,
    gaussian_total_correlation,
    mig,
    modularity,
    modularity_from_mutual_information,
    mutual_information_matrix,
)
from vaelab.disentanglement.interventions import (
    FactorVAEScore,
    beta_vae_score,
    factor_vae_score,
    fixed_factor_pair_sampler,
    fixed_factor_sampler,
)

__all__ = [
    "DCI",
    "FactorVAEScore",
    "beta_vae_score",
    "dci",
    "dci_from_importance",
    "discretise",
    "factor_vae_score",
    "fixed_factor_pair_sampler",
    "fixed_factor_sampler",
    "gaussian_total_correlation",
    "mig",
    "modularity",
    "modularity_from_mutual_information",
    "mutual_information_matrix",
    "sap",
    "sap_continuous",
]
