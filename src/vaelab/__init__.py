"""vaelab: a PyTorch Lightning + Hydra lab for variational autoencoders."""

__version__ = "0.1.0"
