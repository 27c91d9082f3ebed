"""Numpy views of codes and factors given as arrays or tensors."""

import numpy as np
import torch
from numpy.typing import ArrayLike

Array = ArrayLike | torch.Tensor


def as_numpy(values: Array) -> np.ndarray:
    """A numpy array of a tensor (any device) or an array-like."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def codes_and_factors(codes: Array, factors: Array) -> tuple[np.ndarray, np.ndarray]:
    """(N, L) float64 codes and (N, K) factors, checked to pair up."""
    codes, factors = as_numpy(codes).astype(np.float64), as_numpy(factors)
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors):
        raise ValueError(f"need codes (N, L), factors (N, K); got {codes.shape}, {factors.shape}")
    return codes, factors
