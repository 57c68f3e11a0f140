"""Training on the log-probs and entropies the Hugging Face engine records while sampling (``old_logprobs: engine``).

They must be the trainer's own scores of the same rows (float rounding aside), so skipping the scoring pass trains
the same policy: pi_old of the PPO ratio and the rollout entropy that ``EntropyHistory`` records are unchanged.
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import seed_everything

from datamodules.rollout_datamodule import RolloutDataModule
from epo_lightning.errors import ConfigurationError
from epo_lightning.module import EPOModule
from epo_lightning.policy import load_policy
from epo_lightning.rollout_engine import HFEngine
from tests.conftest import EASY_DATA, TEST_PRESET, make_trainer, trainer_scores

PROMPTS = [
    "you are in the kitchen . exits : north , east . you see a key .",
    "you are in the hall .",
    "go to the garden and take the apple . you are in the cellar . exits : up .",
]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_recorded_log_probs_and_entropies_are_the_trainers_and_sampling_is_unchanged(tiny_policy_dir, temperature):
    model, tokenizer = load_policy(tiny_policy_dir)
    prompts = [tokenizer.encode(text) for text in PROMPTS] * 4
    lengths = {}
    for max_new_tokens in (2, 12):  # every response runs to the budget / most end at their end-of-turn token
        torch.manual_seed(0)
        plain = HFEngine().generate(model, tokenizer, prompts, temperature, max_new_tokens)
        torch.manual_seed(0)
        scored = HFEngine(report_logprobs=True).generate(model, tokenizer, prompts, temperature, max_new_tokens)
        assert scored.token_ids == plain.token_ids and plain.logprobs is None
        logprobs, entropy = trainer_scores(model, prompts, scored.token_ids, temperature)
        for got, want in zip(scored.logprobs, logprobs, strict=True):
            torch.testing.assert_close(torch.tensor(got), want, rtol=0, atol=1e-5)
        for got, want in zip(scored.entropies, entropy, strict=True):
            torch.testing.assert_close(torch.tensor(got), want, rtol=0, atol=1e-5)
        lengths[max_new_tokens] = [len(ids) for ids in scored.token_ids]
    assert set(lengths[2]) == {2} and min(lengths[12]) < 12  # both ways a response's last token is scored
    greedy = HFEngine(report_logprobs=True).generate(model, tokenizer, prompts, 0.0, 4)
    assert greedy.logprobs is None and greedy.entropies is None


class CountingScores(EPOModule):
    """Counts the trainer's scoring passes of the trained policy (not the KL reference's, not the update's)."""

    actor_passes = 0

    def _logprobs(self, scorer, batch):
        self.actor_passes += scorer is self.actor and not torch.is_grad_enabled()
        return super()._logprobs(scorer, batch)


def test_training_on_the_engines_scores_skips_the_scoring_pass_and_trains_the_same_policy(cache_dir, tmp_path):
    runs = {}
    for mode in ("recompute", "engine"):
        seed_everything(0)
        module = CountingScores(
            tiny=TEST_PRESET,
            cache_dir=str(cache_dir),
            rollout_engine=HFEngine(report_logprobs=True),
            old_logprobs=mode,
            entropy_coef=0.01,
            loss={"kl_coef": 0.01},
        )
        trainer = make_trainer(tmp_path / mode, max_epochs=2, limit_val_batches=0)
        trainer.fit(module, datamodule=RolloutDataModule(**EASY_DATA))
        runs[mode] = module, dict(trainer.callback_metrics)
        trainer.save_checkpoint(tmp_path / f"{mode}.ckpt")
    (recomputed, logged), (engine, engine_logged) = runs["recompute"], runs["engine"]
    assert recomputed.actor_passes > 0 and engine.actor_passes == 0
    assert logged["rollout/logprob_gap_max"] < 1e-5  # decoding and scoring differ by float rounding only
    assert "rollout/logprob_gap" not in engine_logged  # nothing to compare: pi_old is the engine's
    for name in ("rollout/success_rate", "entropy/token_mean", "loss/total"):
        assert engine_logged[name].item() == pytest.approx(logged[name].item(), rel=1e-4, abs=1e-6), name
    # the rollout entropy EntropyHistory records comes from the engine and is the scored one
    assert engine.rollout_entropy.compute().item() == pytest.approx(recomputed.rollout_entropy.compute().item(), 1e-5)
    initial, _ = load_policy(recomputed._policy_source)
    moved = 0.0
    for (name, param), other in zip(recomputed.model.named_parameters(), engine.model.parameters(), strict=True):
        torch.testing.assert_close(other, param, rtol=0, atol=1e-4)
        moved = max(moved, float((param - initial.get_parameter(name)).abs().max()))
    assert moved > 5e-3  # the two steps moved weights by 50x the tolerance (1.1e-2 here; Adam spreads the rounding)
    # the engine is not saved with the hyperparameters: the checkpoint loads (for export) with the default engine
    loaded = EPOModule.load_from_checkpoint(tmp_path / "engine.ckpt", map_location="cpu", weights_only=False)
    assert loaded.hparams.old_logprobs == "engine" and not loaded.rollout_engine.reports_logprobs
    for param, trained in zip(loaded.model.parameters(), engine.model.parameters(), strict=True):
        assert torch.equal(param, trained)


def _refused_at_fit_start(module: EPOModule, root, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        make_trainer(root, max_epochs=1).fit(module, datamodule=RolloutDataModule(**EASY_DATA))


def test_engine_scores_need_an_engine_that_records_them_and_auto_uses_them_when_it_does(tmp_path):
    recording = HFEngine(report_logprobs=True)
    assert not EPOModule().uses_engine_scores  # the default engine records nothing: recompute
    assert EPOModule(rollout_engine=recording).uses_engine_scores  # auto
    assert not EPOModule(rollout_engine=recording, old_logprobs="recompute").uses_engine_scores
    _refused_at_fit_start(EPOModule(old_logprobs="engine"), tmp_path, "report_logprobs: true")
    _refused_at_fit_start(EPOModule(rollout_engine=recording, rollout_is_cap=2.0), tmp_path, "set rollout_is_cap null")
