"""The user's path: ``torchrun --nproc_per_node 2 -m epo_lightning.cli fit --config ... --trainer.strategy ddp``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.distributed.launch import ENV, ROOT, free_port


def _epo_fit(root: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
        "-m", "epo_lightning.cli", "fit", "--config", "configs/quickstart.yaml",
        "--trainer.strategy=ddp", "--trainer.devices=2", f"--trainer.default_root_dir={root}",
        "--trainer.check_val_every_n_epoch=1", "--trainer.enable_progress_bar=false",
        f"--model.init_args.cache_dir={cache}", "--model.init_args.tiny.hidden_size=48",
        "--model.init_args.tiny.num_layers=1", "--model.init_args.tiny.num_heads=2",
        "--model.init_args.tiny.intermediate_size=96", "--model.init_args.tiny.prior_states=300",
        "--model.init_args.tiny.prior_epochs=1", "--data.init_args.tasks_per_step=2", "--data.init_args.group_size=2",
        "--data.init_args.max_turns=4", "--data.init_args.val_tasks=3", "--data.init_args.micro_batch_size=4",
        "--data.init_args.mini_batch_size=8", *extra,
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=600)


def test_epo_fit_under_torchrun_logs_and_checkpoints_once_and_resumes(tmp_path):
    root, cache = tmp_path / "runs", tmp_path / "cache"
    done = _epo_fit(root, cache, "--trainer.max_epochs=2")
    assert done.returncode == 0, done.stderr[-4000:]
    versions = sorted(p.name for p in (root / "lightning_logs").iterdir())
    assert versions == ["version_0"]  # one logger, on rank 0
    run = root / "lightning_logs" / "version_0"
    writers = {path.name.split(".")[-2] for path in run.glob("events.out.tfevents.*")}
    assert len(writers) == 1  # TensorBoard files of one process (validate-before-fit and fit each open one)
    checkpoint = root / "checkpoints" / "last.ckpt"  # one place per run directory, not per logger version
    state = torch.load(checkpoint, weights_only=False, map_location="cpu")
    assert state["epoch"] == 1 and state["global_step"] > 0
    steps = state["global_step"]

    resumed = _epo_fit(root, cache, "--trainer.max_epochs=3", "--ckpt_path=last")  # the documented resume command
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    state = torch.load(checkpoint, weights_only=False, map_location="cpu")
    assert state["epoch"] == 2 and state["global_step"] > steps
