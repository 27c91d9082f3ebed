"""callbacks=ema: the checkpoint's weights are the moving average worked out by hand from the
trained weights step by step, and a resumed run ends where a straight one does."""

import lightning as L
import torch
from helpers import make_cfg

from vaelab.train import train

TINY = [
    *("data=sprites", "data.size=120", "data.batch_size=8", "data.eval_batch_size=8"),
    *("debug=limit", "model.latent_dim=3", "eval.plausibility_samples=0", "callbacks=ema"),
    "callbacks.weight_averaging.decay=0.7",
]


def weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Trajectory(L.Callback):
    """The trained weights after every optimizer step, and those the tests after fit ran with."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []
        self.tested: dict[str, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.steps.append(weights(pl_module))

    def on_test_batch_start(self, trainer, pl_module, *args) -> None:
        self.tested = weights(pl_module)


def test_checkpoint_holds_the_moving_average_and_resumes_exactly(tmp_path, monkeypatch):
    trajectory = Trajectory()
    original = L.Trainer.__init__

    def with_trajectory(self, *args, callbacks=(), **kwargs):
        original(self, *args, callbacks=[*callbacks, trajectory], **kwargs)

    monkeypatch.setattr(L.Trainer, "__init__", with_trajectory)
    train(make_cfg(tmp_path / "a", TINY))
    monkeypatch.undo()
    last = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    fit_steps = trajectory.steps[:10]  # the 10 training steps (validate/test run no batches)
    average = dict(fit_steps[0])
    for weights in fit_steps[1:]:
        average = {k: 0.7 * average[k] + 0.3 * weights[k] for k in average}
    for name, value in last["state_dict"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, average[name], rtol=1e-5, atol=1e-6, msg=name)
    assert torch.equal(
        last["current_model_state"]["encoder.net.0.weight"], fit_steps[-1]["encoder.net.0.weight"]
    )
    # the test after fit ran with the best checkpoint's average, as evaluate.py loads it
    best = torch.load(next((tmp_path / "a" / "checkpoints").glob("epoch*.ckpt")), weights_only=True)
    for name, value in best["state_dict"].items():
        assert torch.equal(trajectory.tested[name], value), name

    train(make_cfg(tmp_path / "b", [*TINY, "trainer.max_epochs=1"]))
    resumed = [*TINY, f"ckpt_path={tmp_path / 'b' / 'checkpoints' / 'last.ckpt'}"]
    train(make_cfg(tmp_path / "c", resumed))
    again = torch.load(tmp_path / "c" / "checkpoints" / "last.ckpt", weights_only=True)
    for key in ("state_dict", "current_model_state"):
        for name, value in last[key].items():
            assert torch.equal(value, again[key][name]), (key, name)
