"""A job that SLURM requeues goes on in its first run folder and its W&B run.

Lightning's SLURM plugin answers the pre-emption signal by saving `hpc_ckpt_N.ckpt` in the run
folder and requeueing the job; SLURM starts the same command again, with the same job id and
SLURM_RESTART_COUNT >= 1, and Hydra makes a new run folder. On its first start under SLURM a run
records its folder and W&B run id in `<paths.log_dir>/slurm/<job id>[_<sweep job>].json`; a
requeued start reads them back and trains in that folder, where Lightning finds the newest
`hpc_ckpt_N.ckpt` and resumes from it, logging to the same W&B run.
"""

import json
import logging
import os
import secrets
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


def slurm_job_id() -> str | None:
    """The SLURM job (or array task) this process belongs to, or None outside SLURM."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job:
        return f"{array_job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID")


def record_path(cfg: DictConfig, job_id: str) -> Path:
    """Where this job's run is recorded; sweep jobs of one allocation get one record each."""
    name = job_id
    if HydraConfig.initialized() and HydraConfig.get().job.get("num") is not None:
        name += f"_{HydraConfig.get().job.num}"
    return Path(cfg.paths.log_dir) / "slurm" / f"{name}.json"


def follow_requeue(cfg: DictConfig) -> bool:
    """Point `cfg` at the run folder and W&B run of this SLURM job's first start when SLURM has
    requeued it (True), or record them on a first start (False). Nothing outside SLURM."""
    job_id = slurm_job_id()
    if job_id is None:
        return False
    record = record_path(cfg, job_id)
    wandb = (cfg.get("logger") or {}).get("wandb")
    if int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0 and record.is_file():
        saved = json.loads(record.read_text())
        log.info(f"SLURM requeued job {job_id}: continuing in {saved['run_folder']}")
        with open_dict(cfg):
            cfg.paths.output_dir = saved["run_folder"]
            if wandb is not None and saved.get("wandb_id"):
                wandb.id, wandb.resume = saved["wandb_id"], "allow"
        return True
    wandb_id = secrets.token_hex(4) if wandb is not None else None
    if wandb is not None:
        with open_dict(cfg):
            wandb.id = wandb_id
    if os.environ.get("SLURM_PROCID", "0") == "0":
        record.parent.mkdir(parents=True, exist_ok=True)
        saved = {"run_folder": str(cfg.paths.output_dir), "wandb_id": wandb_id}
        record.write_text(json.dumps(saved) + "\n")
    return False
