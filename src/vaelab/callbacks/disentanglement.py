"""The disentanglement metrics during training: the fast setting, at validation."""

import lightning as L
from lightning.pytorch.callbacks import Callback

from vaelab.disentanglement.report import check_factors, model_disentanglement


class DisentanglementScores(Callback):
    """`val/<metric>` for MIG, SAP, DCI, modularity, the FactorVAE and beta-VAE scores and the
    Gaussian TC, from `num_points` draws of the factors (0: off), every `every_n_epochs` epochs.

    Every rank computes the same scores from the same draws, so no rank waits for another.
    """

    def __init__(self, num_points: int = 0, every_n_epochs: int = 1, seed: int = 0) -> None:
        self.num_points = num_points
        self.every_n_epochs = every_n_epochs
        self.seed = seed

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.num_points > 0:
            check_factors(trainer.datamodule)  # fail before training, not at the first validation

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.num_points <= 0 or trainer.sanity_checking:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        scores = model_disentanglement(pl_module, trainer.datamodule, self.num_points, self.seed)
        for name, value in scores.items():
            pl_module.log(f"val/{name}", value)
