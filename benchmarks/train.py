"""The training half of an RL step against its limits: the Lightning update versus a plain PyTorch loop on the same
micro-batches, the EPO loss versus plain PPO, and achieved FLOP/s versus this machine's fp32 matmul peak.

python benchmarks/train.py [--steps 3] [--repeats 3]

One RL step of ``configs/quickstart.yaml`` is played and scored once (its micro-batches, advantages and update
weights recorded); every variant then trains the same initial weights on exactly those micro-batches:

- ``Trainer + EPOModule``: ``trainer.fit`` over the recorded micro-batches (``EPOModule.training_step``, manual
  optimization, gradient clipping, metrics, callbacks: everything but the rollout);
- ``plain loop, EPO``: forward (``ResponseScorer``), ``epo_loss``, backward, clip and AdamW step in a ``for`` loop;
- ``plain loop, PPO``: the same with the entropy bonus and smoothing switched off (the loss of plain PPO/GRPO).

The variants alternate, each repeated; tokens/s counts every position of the micro-batches (padding included, as
the model computes it). The FLOP/s estimate is 6 x parameters x positions (forward and backward of the matmuls).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from lightning.pytorch import Callback, LightningDataModule, Trainer
from machine import ROOT, describe  # benchmarks/machine.py (the script's directory is on sys.path)

from callbacks import EntropyHistory, PhaseScheduler
from datamodules.rollout_datamodule import Batches, RolloutDataModule
from epo_lightning.cpu_memory import keep_freed_memory
from epo_lightning.losses import epo_loss
from epo_lightning.module import EPOModule


class Recorder(Callback):
    """Keeps the micro-batches of the first RL step, as ``training_step`` receives them."""

    def __init__(self) -> None:
        self.batches: list = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(copy.deepcopy(batch))


class Replay(LightningDataModule):
    """Serves the recorded micro-batches as every epoch's training data."""

    def __init__(self, batches: list) -> None:
        super().__init__()
        self.batches = batches

    def train_dataloader(self) -> Batches:
        return Batches(self.batches)


def quickstart() -> tuple[dict, dict]:
    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    return config["model"]["init_args"], config["data"]["init_args"]


def module_settings(model_args: dict) -> dict:
    """A config's model settings as ``EPOModule`` arguments: AdamW without a schedule, and the rollout engine built
    from its ``class_path`` (what LightningCLI does with the YAML)."""
    settings = {k: v for k, v in model_args.items() if k not in ("optimizer", "lr_scheduler")}
    engine = settings.get("rollout_engine")
    if isinstance(engine, dict):
        module, _, name = engine["class_path"].rpartition(".")
        settings["rollout_engine"] = getattr(importlib.import_module(module), name)(**engine.get("init_args", {}))
    return settings


def record_step(cache: str) -> tuple[EPOModule, list]:
    model_args, data_args = quickstart()
    module = EPOModule(**module_settings(model_args), cache_dir=cache)
    recorder = Recorder()
    bare_trainer(1, [recorder]).fit(module, datamodule=RolloutDataModule(**{**data_args, "val_tasks": 0}))
    return module, recorder.batches


def bare_trainer(epochs: int, callbacks: list) -> Trainer:
    """A CPU Trainer of ``epochs`` RL steps with nothing but ``callbacks``: no validation, logger or checkpoints."""
    return Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        reload_dataloaders_every_n_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def lightning_seconds(module: EPOModule, batches: list, steps: int) -> float:
    trained = copy.deepcopy(module)
    trainer = bare_trainer(steps, [EntropyHistory(), PhaseScheduler()])
    start = time.perf_counter()
    trainer.fit(trained, datamodule=Replay(batches))
    return time.perf_counter() - start


def plain_seconds(module: EPOModule, batches: list, steps: int, epo: bool) -> float:
    trained = copy.deepcopy(module)
    scorer, hp = trained.actor, trained.hparams
    optimizer = torch.optim.AdamW([p for p in scorer.parameters() if p.requires_grad], lr=1e-3)
    cfg = trained.loss_config if epo else replace(trained.loss_config, smoothing="off")
    entropy_coef = trained.entropy_coef if epo else 0.0
    h_ref = float(batches[0].old_entropy[batches[0].response_mask.bool()].mean()) if epo else None
    start = time.perf_counter()
    for _ in range(steps):
        for batch in batches:
            logprobs, entropy = scorer(
                batch.input_ids, batch.attention_mask, batch.response_mask, hp.temperature, hp.logprob_chunk_size
            )
            loss, _ = epo_loss(
                logprobs, batch.old_logprobs, entropy, batch.advantages, batch.response_mask, batch.traj_index, cfg,
                entropy_coef=entropy_coef, h_ref=h_ref, ref_logprobs=batch.ref_logprobs, old_entropy=batch.old_entropy,
                token_weights=batch.loss_weights,
            )  # fmt: skip
            loss.backward()
            if batch.update_end:
                torch.nn.utils.clip_grad_norm_(scorer.parameters(), hp.grad_clip or float("inf"))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def matmul_peak(size: int = 2048, repeats: int = 10) -> float:
    """fp32 FLOP/s of a square matmul, the best of ``repeats``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3, help="passes over the recorded micro-batches per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", default=str(Path("~/.cache/epo_lightning").expanduser()))
    args = parser.parse_args()
    keep_freed_memory()  # as the epo CLI does by default (--keep_freed_memory)
    torch.manual_seed(0)
    module, batches = record_step(args.cache)
    positions = sum(batch.input_ids.numel() for batch in batches) * args.steps
    params = sum(p.numel() for p in module.actor.parameters())
    variants = {
        "Trainer + EPOModule": lambda: lightning_seconds(module, batches, args.steps),
        "plain loop, EPO loss": lambda: plain_seconds(module, batches, args.steps, epo=True),
        "plain loop, PPO loss": lambda: plain_seconds(module, batches, args.steps, epo=False),
    }
    for run in variants.values():  # warm-up
        run()
    speed: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            speed[name].append(positions / run())
    peak = matmul_peak()
    print(f"command: python benchmarks/train.py --steps {args.steps} --repeats {args.repeats}")
    print(f"machine: {describe()}")
    print(
        f"one quickstart RL step: {len(batches)} micro-batches, {positions // args.steps} positions, "
        f"{params / 1e6:.2f}M parameters; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s\n"
    )
    print("| variant | positions/s, median (range) | vs plain loop, EPO | GFLOP/s | of peak |\n|---|---|---|---|---|")
    base = statistics.median(speed["plain loop, EPO loss"])
    for name, values in speed.items():
        median = statistics.median(values)
        flops = 6 * params * median
        print(
            f"| {name} | {median:.0f} ({min(values):.0f}-{max(values):.0f}) | {median / base:.2f}x | "
            f"{flops / 1e9:.1f} | {flops / peak:.0%} |"
        )


if __name__ == "__main__":
    main()
