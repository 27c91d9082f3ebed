"""Lightning's EMA weight averaging, with the average also in validation and test after fit."""

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging


class EMAWeights(EMAWeightAveraging):
    """`EMAWeightAveraging` (its checkpoints hold the average as `state_dict` and the trained
    weights as `current_model_state`), changed after fit: Lightning's would, on loading the best
    checkpoint for `trainer.validate`/`trainer.test`, put the trained weights back, and swap its
    own end-of-fit average in for validation only. Here the average is dropped when fit ends, so
    those stages, like evaluate.py, see the checkpoint's average."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_end(trainer, pl_module)
        self._average_model = None

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._average_model is not None:  # resuming fit: the average and the trained weights
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
