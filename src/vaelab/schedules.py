"""Learning-rate schedules for `model.scheduler` (`_partial_: true`, stepped once per epoch)."""

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class GeometricStagesLR(LRScheduler):
    """Stage i = 0..num_stages-1 lasts round(first_stage_epochs * growth^i) epochs (at least 1)
    at lr * decay^i; after the last stage the rate stays at the last stage's.

    Burda et al. (2016): 3^i passes over the data at 1e-3 * 10^(-i/7), i = 0..7, i.e.
    growth 3, decay 10^(-1/7), 8 stages, 3,280 epochs in all.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        num_stages: int = 8,
        growth: float = 3.0,
        decay: float = 10 ** (-1 / 7),
        first_stage_epochs: float = 1.0,
        last_epoch: int = -1,
    ) -> None:
        self.decay = decay
        lengths = [max(1, round(first_stage_epochs * growth**i)) for i in range(num_stages)]
        self.stage_ends = [sum(lengths[: i + 1]) for i in range(num_stages)]
        super().__init__(optimizer, last_epoch)

    @property
    def total_epochs(self) -> int:
        """The epochs of all stages together (`trainer.max_epochs` for the whole schedule)."""
        return self.stage_ends[-1]

    def stage(self, epoch: int) -> int:
        """The stage epoch `epoch` (counted from 0) belongs to."""
        return min(sum(end <= epoch for end in self.stage_ends), len(self.stage_ends) - 1)

    def get_lr(self) -> list[float]:
        factor = self.decay ** self.stage(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]
