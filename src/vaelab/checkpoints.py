"""Finding and checking the checkpoint a run resumes from."""

from pathlib import Path

import torch
from torch import nn

from vaelab.errors import VaelabError


class CheckpointError(VaelabError):
    """A checkpoint that is missing, unreadable or from another model."""


def resolve_checkpoint(ckpt_path: str | None, log_dir: str) -> str | None:
    """A .ckpt file; a run folder (its checkpoints/last.ckpt); or `last`, the newest last.ckpt."""
    if ckpt_path in (None, ""):
        return None
    if ckpt_path == "last":
        candidates = sorted(
            Path(log_dir).glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime
        )
        if not candidates:
            raise CheckpointError(
                f"ckpt_path=last but no run under {log_dir} has checkpoints/last.ckpt"
            )
        return str(candidates[-1])
    path = Path(ckpt_path)
    if path.is_dir():
        path = (
            path / "checkpoints" / "last.ckpt"
            if (path / "checkpoints").is_dir()
            else path / "last.ckpt"
        )
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} not found: give a .ckpt file, a run folder or ckpt_path=last"
        )
    return str(path)


def check_checkpoint(path: str, model: nn.Module) -> dict:
    """The checkpoint at `path` (loaded weights only, on the CPU); CheckpointError unless it
    loads and fits `model` tensor for tensor."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = " ".join(str(error).split())[:120]
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(error).__name__}: {reason}): it is corrupt or "
            "truncated; resume from another one (each run keeps last.ckpt and the best)"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (it has no state_dict)")
    saved, expected = checkpoint["state_dict"], model.state_dict()
    differences = [
        f"{key}: saved {tuple(saved[key].shape) if key in saved else 'nothing'}, "
        f"model {tuple(expected[key].shape) if key in expected else 'nothing'}"
        for key in sorted(set(saved) | set(expected))
        if key not in saved or key not in expected or saved[key].shape != expected[key].shape
    ]
    if differences:
        raise CheckpointError(
            f"{path} was saved by a different model ({len(differences)} tensors differ, e.g. "
            f"{differences[0]}): use the model settings of the run that saved it (its config.yaml)"
        )
    return checkpoint


def check_steps_per_call(checkpoint: dict, model: nn.Module) -> None:
    """CheckpointError when resuming with another `model.steps_per_call` than the checkpoint's:
    Lightning counts steps taken by itself (S = 1) and by the model (S > 1) apart, so the run
    would restart at step 0."""
    saved = checkpoint.get("hyper_parameters", {}).get("steps_per_call", 1)
    wanted = getattr(model, "steps_per_call", 1)
    if saved != wanted:
        raise CheckpointError(
            f"the checkpoint was trained with model.steps_per_call={saved}, and a run cannot "
            f"change it on resuming: resume with model.steps_per_call={saved}"
        )


def match_state_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (Adam's moments) its parameter's strides, keeping
    its values: fused Adam walks raw memory, so moments restored in another memory format (a
    conv run saved with the other `channels_last`) would update the wrong weights."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            same_shape = isinstance(value, torch.Tensor) and value.shape == param.shape
            if same_shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
