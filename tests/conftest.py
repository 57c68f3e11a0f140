"""Shared fixtures: a tiny-tiny policy preset built once per session in a temp cache, and a fast Trainer."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
import torch
from lightning.pytorch import Trainer

from epo_lightning.tiny_preset import TinyPreset

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

#: Small enough to build in seconds; the format prior still makes most actions valid on the easy suite.
TEST_PRESET = TinyPreset(
    hidden_size=48,
    num_layers=1,
    num_heads=2,
    intermediate_size=96,
    prior_states=1500,
    prior_epochs=3,
    prior_batch_size=32,
    prior_lr=3e-3,
)
#: The same with a head size vLLM's CPU attention has kernels for (32; the one above has 24).
VLLM_PRESET = replace(TEST_PRESET, hidden_size=64, intermediate_size=128)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("epo_cache")


@contextmanager
def benchmark_script(name: str) -> Iterator[ModuleType]:
    """``benchmarks/<name>.py`` imported as when it runs: its directory on ``sys.path`` (for ``machine.py`` etc.)."""
    benchmarks = Path(__file__).parents[1] / "benchmarks"
    sys.path.insert(0, str(benchmarks))
    try:
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", benchmarks / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # where dataclasses look their module up
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(f"benchmark_{name}", None)
        sys.path.remove(str(benchmarks))


def make_trainer(root: Path, **overrides) -> Trainer:
    settings = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        reload_dataloaders_every_n_epochs=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    settings.update(overrides)
    return Trainer(**settings)


@pytest.fixture(scope="session")
def tiny_policy_dir(cache_dir: Path) -> Path:
    """The test preset built for the easy embedded suite (what ``EPOModule(policy="tiny")`` builds in setup)."""
    from datamodules.rollout_datamodule import RolloutDataModule
    from epo_lightning.tiny_preset import load_or_build_tiny

    data = RolloutDataModule(**EASY_DATA)
    examples = data.format_prior_examples(TEST_PRESET.prior_states, TEST_PRESET.seed)
    return load_or_build_tiny(data.vocabulary(examples), examples, TEST_PRESET, cache_dir)


#: A small rollout setting on the easy suite that trains in a few seconds per epoch.
EASY_DATA = dict(
    env_kwargs={"difficulty": "easy"}, tasks_per_step=4, group_size=4, max_turns=6, val_tasks=8, micro_batch_size=16
)


def trainer_scores(model, prompts, responses, temperature: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """What the trainer scores for each prompt's response: the response tokens' log-probs and entropies, row by row."""
    from datamodules.turn_rows import TurnRow, collate_rows
    from epo_lightning.logprobs import response_logprobs_and_entropy

    rows = [TurnRow(list(p), list(r), 0.0, 0, 0, 0, 0.0, 0) for p, r in zip(prompts, responses, strict=True)]
    batch = collate_rows(rows, pad_id=0)
    with torch.no_grad():
        logprobs, entropy = response_logprobs_and_entropy(
            model, batch.input_ids, batch.attention_mask, batch.response_mask, temperature
        )
    masks = [batch.response_mask[b].bool() for b in range(len(rows))]
    return [logprobs[b][m] for b, m in enumerate(masks)], [entropy[b][m] for b, m in enumerate(masks)]


def trainer_logprobs(model, prompts, responses, temperature: float) -> list[torch.Tensor]:
    """What the trainer scores for each prompt's response: the log-probs of the response tokens, row by row."""
    return trainer_scores(model, prompts, responses, temperature)[0]
