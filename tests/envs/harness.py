"""What the integration tests of the real environments share: a replaying policy and a short tiny-preset fit."""

from collections.abc import Sequence
from pathlib import Path

import torch

from datamodules.rollout_datamodule import RolloutDataModule
from epo_lightning.module import EPOModule
from epo_lightning.tiny_preset import TinyPreset, build_word_tokenizer, response_ids
from epo_lightning.types import Generation
from tests.conftest import make_trainer


class ReplayPolicy:
    """Answers every prompt of turn t with ``<action> actions[t] </action>`` (a group playing one task).

    Its tokenizer knows only the words of the actions: prompts encode to mostly unknown tokens, which a replay
    does not read.
    """

    def __init__(self, actions: Sequence[str]) -> None:
        self.actions = list(actions)
        self.tokenizer = build_word_tokenizer(sorted({word for action in actions for word in action.split()}))
        self.turn = 0

    def generate(self, prompts, evaluation=False):
        action = self.actions[min(self.turn, len(self.actions) - 1)]
        self.turn += 1
        return Generation([response_ids(self.tokenizer, action) for _ in prompts])


def fit_briefly(tmp_path: Path, env: str, env_kwargs: dict, max_positions: int = 512, **data) -> None:
    """Fit a very small tiny preset for 2 RL steps on ``env`` and check that it trained on real rollouts."""
    preset = TinyPreset(
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        prior_states=40,
        prior_epochs=1,
    )
    module = EPOModule(tiny=preset, cache_dir=str(tmp_path / "cache"), max_new_tokens=10)
    settings = {"tasks_per_step": 2, "group_size": 2, "max_turns": 4, "val_tasks": 1, "micro_batch_size": 16, **data}
    datamodule = RolloutDataModule(env=env, env_kwargs=env_kwargs, **settings)
    trainer = make_trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["loss/total"]) and metrics["rollout/episode_len"] > 0
    assert metrics["rollout/env_errors"] == 0 and trainer.current_epoch == 2
