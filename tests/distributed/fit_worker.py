"""One rank of a multi-process fit, launched by the tests with ``torchrun`` (gloo on CPU), recording what it saw.

Each rank writes ``<out>/rank<r>.pt``: its parameters before training and after every RL step, the micro-batches it
trained on in step 0 and in the last step, its rollout counts and local token-entropy sums per step, its validation
episodes, and (rank 0) the logged metrics. The tests compare these across ranks and with a one-process computation
on the pooled rows.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import ModelParallelStrategy, model_parallel
from torch.distributed.tensor import DTensor

from callbacks import EntropyHistory, ExportPolicy, PhaseScheduler
from datamodules import rollout_datamodule
from datamodules.envs.embedded.env import EmbeddedTextEnv
from datamodules.rollout_datamodule import Batches, RolloutDataModule
from epo_lightning.lora import base_model
from epo_lightning.module import EPOModule
from epo_lightning.rollout_engine import HFEngine
from epo_lightning.types import TurnBatch
from tests.conftest import TEST_PRESET, VLLM_PRESET


def _params(module: EPOModule) -> dict[str, torch.Tensor]:
    """The policy's full parameters (sharded ones are gathered: every rank must call this)."""
    full = {}
    for name, param in module.model.named_parameters():
        value = param.detach()
        full[name] = (value.full_tensor() if hasattr(value, "full_tensor") else value).clone().cpu()
    return full


def end_episodes_at_their_first_step() -> None:
    """Every embedded-suite episode of this process ends at its first step, won or not."""
    step = EmbeddedTextEnv.step

    def ending(env: EmbeddedTextEnv, action: str) -> tuple:
        observation, reward, _, truncated, info = step(env, action)
        return observation, reward, True, truncated, info

    EmbeddedTextEnv.step = ending


def die_in_sharded_save(n: int) -> None:
    """The ``n``-th sharded checkpoint save of this process writes its shards, then raises: a job killed before the
    loop state (``meta.pt``) was written."""
    calls = 0
    write_shards = model_parallel._distributed_checkpoint_save

    def dying(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        write_shards(*args, **kwargs)
        if calls == n:
            raise RuntimeError(f"killed after the shards of sharded save {n}")

    model_parallel._distributed_checkpoint_save = dying


def raise_in_the_first_training_rollout() -> None:
    """This rank's first training rollout raises, as a bug in a policy or an out-of-memory error would."""
    collect = rollout_datamodule.collect_episodes

    def raising(*args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("evaluation", args[5] if len(args) > 5 else False):
            raise RuntimeError("rank 1 ran out of memory")
        return collect(*args, **kwargs)

    rollout_datamodule.collect_episodes = raising


class Recorder(Callback):
    """Keeps what the tests compare; written out by the rank at the end of fit."""

    def __init__(self) -> None:
        self.record: dict[str, Any] = {"params": [], "batches": [], "counts": [], "entropy": [], "val": []}
        self.record["reference_sharded"] = []  # after each step: the reference's parameters are all DTensors

    def on_fit_start(self, trainer: Trainer, pl_module: EPOModule) -> None:
        """Record, at every sampling call, whether the policy's parameters are sharded (DTensors) meanwhile."""
        engine = pl_module.rollout_engine
        generate = engine.generate
        self.record["sampled_sharded"] = []
        self.record["sampling_seeds"] = set()

        def recording(policy: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            self.record["sampled_sharded"].append(all(isinstance(p, DTensor) for p in policy.parameters()))
            self.record["sampling_seeds"].add(torch.initial_seed())  # what the collection seeded sampling with
            self.record["sampled_dtypes"] = self.record.get("sampled_dtypes", set()) | {
                p.dtype for p in policy.parameters()
            }
            return generate(policy, *args, **kwargs)

        engine.generate = recording

    def on_train_start(self, trainer: Trainer, pl_module: EPOModule) -> None:
        self.record["initial"] = _params(pl_module)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: EPOModule) -> None:
        self.record["counts"].append(dict(trainer.datamodule.rollout_stats))
        self.record["micro_batches"] = self.record.get("micro_batches", []) + [trainer.num_training_batches]
        self.record["last_step_batches"] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: EPOModule, batch: Any, batch_idx: int) -> None:
        fields = {k: v for k, v in vars(batch).items()}
        if trainer.current_epoch == 0:
            self.record["batches"].append(fields)
        self.record["last_step_batches"].append(fields)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: EPOModule) -> None:
        metric = pl_module.train_entropy  # this rank's own sums (compute() restores them after syncing)
        self.record["entropy"].append((float(metric.mean_value), float(metric.weight)))
        self.record["params"].append(_params(pl_module))
        llm = getattr(pl_module.rollout_engine, "llm", None)
        if llm is not None:  # the device index of this rank's vLLM engine (cuda:<local rank> on GPUs)
            self.record["engine_local_rank"] = (
                llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.local_rank
            )
        if pl_module.reference is not None:
            sharded = all(isinstance(p, DTensor) for p in pl_module.reference.parameters())
            self.record["reference_sharded"].append(sharded)

    def on_validation_batch_start(self, trainer: Trainer, pl_module: EPOModule, batch: Any, batch_idx: int, *_) -> None:
        self.record["val"].append({"split": batch["split"], "success": batch["success"].clone()})


class FirstRolloutFails(Callback):
    """Every environment reset of the first rollout raises (on every rank): an RL step without a usable episode."""

    def on_fit_start(self, trainer: Trainer, pl_module: EPOModule) -> None:
        self.reset = EmbeddedTextEnv.reset

        def broken(env: EmbeddedTextEnv, *, seed: Any = None, options: Any = None) -> Any:
            raise ConnectionError("simulator crashed")

        EmbeddedTextEnv.reset = broken

    def on_train_epoch_start(self, trainer: Trainer, pl_module: EPOModule) -> None:
        EmbeddedTextEnv.reset = self.reset


class HubLikeSource(Callback):
    """The policy's ``name_or_path`` becomes a hub id, as for a policy loaded from the hub: not a directory."""

    def on_fit_start(self, trainer: Trainer, pl_module: EPOModule) -> None:
        model = base_model(pl_module.model)
        model.name_or_path = model.config._name_or_path = "nobody/not-a-directory"


class RecordedBatches(LightningDataModule):
    """A user's own DataModule: each rank trains on recorded micro-batches, without weights, each its own update."""

    rollout_stats: dict = {}
    root_seed = None

    def __init__(self, path: Path, rank: int) -> None:
        super().__init__()
        unweighted = [
            {k: v for k, v in b.items() if k not in ("loss_weights", "value_weights", "update_end")}
            for b in torch.load(path)[rank]
        ]
        self.batches = [TurnBatch(**fields) for fields in unweighted]

    def train_dataloader(self) -> Batches[TurnBatch]:
        return Batches(self.batches)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--phase_steps", type=int, default=3, help="K of the phase schedule, fixed across runs")
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--ckpt_path", default=None)
    parser.add_argument("--save_checkpoint", default=None)
    parser.add_argument("--export", default=None, help="ExportPolicy's directory")
    parser.add_argument("--advantage", default="grpo", help="gae trains a critic too")
    parser.add_argument("--ppo_epochs", type=int, default=1)
    parser.add_argument(
        "--engine", default="hf", choices=["hf", "hf_scored", "vllm"], help="hf_scored: train on HF's recorded scores"
    )
    parser.add_argument("--monitoring", action="store_true", help="TensorBoard with histograms, transcripts, plots")
    parser.add_argument("--short_rank1", action="store_true", help="rank 1's rollouts end after fewer turns")
    parser.add_argument("--val_tasks", type=int, default=5, help="per split, shared out over the ranks")
    parser.add_argument("--hub_like_source", action="store_true", help="the policy's name_or_path is a hub id")
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters (r 2, alpha 4) instead of the policy")
    parser.add_argument("--checkpoint_dir", default=None, help="ModelCheckpoint's last.ckpt there after every step")
    parser.add_argument("--break_save", type=int, default=0, help="the N-th sharded save dies after its shards")
    parser.add_argument("--seed_per_rank", action="store_true", help="each rank's own PL_GLOBAL_SEED: 100 + rank")
    parser.add_argument("--empty_first_step", action="store_true", help="every reset of the first rollout fails")
    parser.add_argument("--max_prompt_tokens", type=int, default=None)
    parser.add_argument("--rank1_raises", action="store_true", help="rank 1's first training rollout raises")
    parser.add_argument("--precision", default="32-true", help="the Trainer's (bf16-mixed: the paper configs')")
    parser.add_argument("--stop_on_valid_ratio", type=float, default=None, help="EarlyStopping under this ratio")
    parser.add_argument(
        "--batches", type=Path, default=None, help="train the cached tiny policy on these micro-batches (per rank)"
    )
    args = parser.parse_args()
    strategy = args.strategy
    if strategy == "fsdp":  # FSDP2 over both ranks
        strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    if args.break_save:
        die_in_sharded_save(args.break_save)
    if args.seed_per_rank:  # as torchrun's processes pick when seed_everything is not pinned
        os.environ["PL_GLOBAL_SEED"] = str(100 + rank)
    if args.short_rank1 and rank == 1:
        end_episodes_at_their_first_step()
    if args.rank1_raises and rank == 1:
        raise_in_the_first_training_rollout()
    # uneven on purpose: rank 0 plays 4 task groups of 4, rank 1 one group of 2 (far fewer rows)
    data = RolloutDataModule(
        env_kwargs={"difficulty": "easy"},
        tasks_per_step=4 if rank == 0 else 1,
        group_size=4 if rank == 0 else 2,
        max_turns=6,
        val_tasks=args.val_tasks,
        micro_batch_size=4,
        mini_batch_size=48,
        ppo_epochs=args.ppo_epochs,
        max_prompt_tokens=args.max_prompt_tokens,
    )
    if args.batches:
        data = RecordedBatches(args.batches, rank)
    engine = HFEngine(report_logprobs=True) if args.engine == "hf_scored" else None
    if args.engine == "vllm":
        from epo_lightning.vllm_engine import VLLMEngine

        engine = VLLMEngine(enforce_eager=True, kv_cache_gb=1)
    module = EPOModule(
        policy=str(next(p for p in args.cache.iterdir() if p.is_dir())) if args.batches else "tiny",
        tiny=VLLM_PRESET if args.engine == "vllm" else TEST_PRESET,
        rollout_engine=engine,
        old_logprobs="engine" if args.engine == "hf_scored" else "recompute",
        cache_dir=str(args.cache),
        loss={"kl_coef": 0.01, "agg": "turn_traj_mean"},
        advantage=args.advantage,
        entropy_coef=0.01,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
        lora={"r": 2, "alpha": 4} if args.lora else None,
    )
    recorder = Recorder()
    history = EntropyHistory()
    monitoring: list[Callback] = []
    if args.monitoring:  # what only the global-zero rank draws, while the other rank trains on
        from callbacks import EntropyPlots

        monitoring = [EntropyPlots(every_n_steps=2)]
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_epochs=args.steps,
        precision=args.precision,
        reload_dataloaders_every_n_epochs=1,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=args.steps,
        logger=TensorBoardLogger(args.out, name="tb") if args.monitoring else False,
        enable_checkpointing=args.checkpoint_dir is not None,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.out,
        callbacks=[history, PhaseScheduler(total_steps=args.phase_steps), recorder, *monitoring]
        + ([ExportPolicy(args.export)] if args.export else [])
        + ([HubLikeSource()] if args.hub_like_source else [])
        + ([FirstRolloutFails()] if args.empty_first_step else [])
        + (
            [
                EarlyStopping(  # as the README's collapse guard: after each RL step, on the divergence only
                    "rollout/valid_action_ratio",
                    mode="max",
                    divergence_threshold=args.stop_on_valid_ratio,
                    patience=1000,
                    check_on_train_epoch_end=True,
                    strict=False,
                )
            ]
            if args.stop_on_valid_ratio is not None
            else []
        )
        + (
            [ModelCheckpoint(args.checkpoint_dir, save_last=True, save_on_train_epoch_end=True)]
            if args.checkpoint_dir
            else []
        ),
    )
    trainer.fit(module, datamodule=data, ckpt_path=args.ckpt_path)
    if args.save_checkpoint:
        trainer.save_checkpoint(args.save_checkpoint)
    recorder.record["history"] = list(history.history)
    recorder.record["root_seed"] = data.root_seed
    recorder.record["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    recorder.record["plots"] = {name: getattr(c, name) for c in monitoring for name in ("turns", "means", "references")}
    torch.save(recorder.record, args.out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main()
