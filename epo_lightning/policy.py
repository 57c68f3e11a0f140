"""Loading a causal LM policy and sampling responses from it (token-in, token-out).

Any Hugging Face causal LM works, by hub id or local directory, through ``AutoModelForCausalLM``/``AutoTokenizer``.
``generate_responses`` returns the sampled token ids exactly; training uses these ids, never re-tokenized text.
"""

from __future__ import annotations

import copy
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from filelock import FileLock
from safetensors.torch import save_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Cache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.generation import utils as generation_utils

from epo_lightning.lora import base_model

#: The name ``generate`` and the models give their KV cache: ``cache`` from transformers 5.2x, ``past_key_values``
#: before (still accepted, with a deprecation warning, until 6.0).
CACHE_NAME = getattr(generation_utils, "ALL_CACHE_NAMES", ["past_key_values"])[0]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_policy(
    name_or_path: str | Path, dtype: str = "float32", attn_implementation: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer (a tokenizer without a pad token pads with eos; it must have one of them).

    Args:
        name_or_path: hub id or local directory saved with ``save_pretrained``.
        dtype: ``float32`` (the only sensible choice on CPU), ``bfloat16`` or ``float16``.
        attn_implementation: ``sdpa``, ``eager``, ``flash_attention_2``, ...; None lets transformers choose.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}.")
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise ValueError(
            f"The tokenizer of {name_or_path} has neither a pad nor an eos token: rows are padded and responses end "
            "with them. Add one (tokenizer.add_special_tokens({'eos_token': ...}), then save_pretrained) and point "
            "model.policy at the saved directory."
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    options = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=_DTYPES[dtype], **options)
    if not end_of_turn_ids(model, tokenizer):
        warnings.warn(
            f"Nothing ends a response of {name_or_path}: its tokenizer has no eos token, its generation_config no "
            "eos_token_id and its chat template no end-of-turn token, so every response runs to max_new_tokens (and "
            "is trained on to the end). Add an eos token (tokenizer.add_special_tokens({'eos_token': ...}), then "
            "save_pretrained) and point model.policy at the saved directory.",
            stacklevel=2,
        )
    return model, tokenizer


def context_length(config: PretrainedConfig) -> int | None:
    """The longest sequence the model's positions are meant for, rotary scaling included; None when unstated.

    ``max_position_embeddings`` is the pretrained length for most checkpoints, but a YaRN-extended one (Qwen2.5's
    ``rope_scaling: {type: yarn, factor: 4}``) reaches ``factor`` times ``original_max_position_embeddings``, and
    linear or dynamic scaling ``factor`` times ``max_position_embeddings``. Llama 3's and LongRoPE's configs already
    state the extended length, and so does Gemma 3 (its linear factor 8 applies to the global-attention layers of a
    131k context). Per-layer rope settings (a dict of dicts, Gemma 3 under transformers 5) are read as unscaled.
    """
    positions = getattr(config, "max_position_embeddings", None)
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kind, factor = rope.get("rope_type", rope.get("type")), rope.get("factor")
    states_its_extension = str(getattr(config, "model_type", "")).startswith("gemma3")
    if not positions or not isinstance(factor, int | float) or states_its_extension:
        return positions
    if kind == "yarn":
        return max(positions, int(factor * rope.get("original_max_position_embeddings", positions)))
    if kind in ("linear", "dynamic"):
        return int(factor * positions)
    return positions


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each transformer block in the backward instead of storing its activations (non-reentrant).

    transformers 5 names it ``activation_checkpointing_enable``; 4.x ``gradient_checkpointing_enable``.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def end_of_turn_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a response: the tokenizer's eos, the checkpoint's and the chat template's end of turn.

    Instruct checkpoints often list several ids; a base model's own eos is not the token its chat template closes an
    assistant turn with, so a base model prompted through the template would otherwise never stop before
    ``max_new_tokens``.
    """
    ids = {tokenizer.eos_token_id, chat_template_end_of_turn_id(tokenizer)}
    configured = getattr(model.generation_config, "eos_token_id", None) if model.generation_config else None
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def chat_template_end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token the chat template writes right after an assistant message, or None.

    ChatML's ``<|im_end|>``, Llama 3's ``<|eot_id|>``, Gemma's ``<end_of_turn>``. None without a template, with a
    template that closes turns with plain text, or with one that cannot render a user-then-assistant exchange.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    probe = "EPO_PROBE"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # noqa: BLE001 - templates raise whatever Jinja or their own checks raise; then none is known
        return None
    if not isinstance(text, str) or probe not in text:
        return None
    after = tokenizer(text[text.rindex(probe) + len(probe) :], add_special_tokens=False)["input_ids"]
    if not after:
        return None
    added = getattr(tokenizer, "added_tokens_decoder", {}).get(after[0])  # special, yet not a named special token
    return after[0] if after[0] in tokenizer.all_special_ids or (added is not None and added.special) else None


def sampling_config(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, temperature: float, max_new_tokens: int
) -> GenerationConfig:
    """The generation config the framework samples with: the full softmax at ``temperature``, nothing else.

    No top-k, top-p, min-p, repetition penalty or any other logits processor, whatever the checkpoint's own
    ``generation_config`` says: training scores ``softmax(logits / temperature)``, and a rollout sampled from another
    distribution would make the first PPO ratio differ from the one the objective assumes. ``temperature == 0`` is
    greedy decoding (evaluation only).
    """
    return GenerationConfig(
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else 1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        eos_token_id=end_of_turn_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )


@torch.no_grad()
def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    temperature: float,
    max_new_tokens: int,
    logits_processor: LogitsProcessor | None = None,
) -> list[list[int]]:
    """Sample one response per prompt in a single left-padded batch with KV cache.

    Sampling uses ``sampling_config``: the full softmax at ``temperature``, the same distribution the training forward
    scores, so the PPO ratio starts at 1. The checkpoint's ``generation_config`` is set aside while sampling
    (``generate`` would otherwise fill every setting left at its default, such as a repetition penalty, from it).

    ``logits_processor`` is called on every step's logits before sampling; it must return them unchanged (it may
    record them, as ``SampledTokenScores`` does).

    Returns:
        The generated ids of each prompt, cut after the first end-of-turn token (kept: the policy chose it).
    """
    if not prompts:
        return []
    device = next(model.parameters()).device
    config = sampling_config(model, tokenizer, temperature, max_new_tokens)
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.as_tensor(prompt)
        attention_mask[row, width - len(prompt) :] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    shared = shared_prefix_cache(model, prompts, input_ids, attention_mask)
    holder = base_model(model)  # under PEFT, generate reads the wrapped model's config
    checkpoint_config, holder.generation_config = holder.generation_config, config
    try:
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            logits_processor=LogitsProcessorList([logits_processor] if logits_processor is not None else []),
            # each rank decodes alone: under FSDP2 the policy is held gathered for the whole collection
            # (EPOModule.sampling), and a step synced across ranks would wait forever on a rank that has no turn left
            synced_gpus=False,
            **({CACHE_NAME: shared} if shared is not None else {}),
        )
    finally:
        holder.generation_config = checkpoint_config
    ends = set(config.eos_token_id)
    responses = []
    for ids in output[:, width:].tolist():
        end = next((i for i, token in enumerate(ids) if token in ends), None)
        responses.append(ids if end is None else ids[: end + 1])
    return responses


def shared_prefix_cache(
    model: PreTrainedModel, prompts: Sequence[Sequence[int]], input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> Cache | None:
    """The keys and values of every prompt but its last token, computed once per distinct prompt, or None.

    A turn's prompts repeat: at turn 0 a group's episodes share their task, and episodes that played alike see the same
    prompt later (in the quickstart 27% of a rollout's prompts repeat another of their turn, and the prompt is most of
    the work of ``generate``: docs/results/collection.md). The distinct prompts' left-padded rows run through the
    backbone once, with position ids that follow the attention mask as ``generate`` builds them; the cache is copied
    to every row (``reorder_cache``), and ``generate`` runs the last prompt token and samples on from there, as from
    its own prefill, up to float rounding. None (``generate`` prefills itself) when every prompt is distinct, a prompt
    is a single token, or the model returns no ``Cache`` object.
    """
    firsts, index, seen = [], [], {}  # the first row of each distinct prompt; each row's distinct prompt
    for row, prompt in enumerate(prompts):
        if seen.setdefault(tuple(prompt), len(firsts)) == len(firsts):
            firsts.append(row)
        index.append(seen[tuple(prompt)])
    if len(firsts) == len(prompts) or min(len(prompt) for prompt in prompts) < 2:
        return None
    prefix_mask = attention_mask[firsts, :-1]
    position_ids = (prefix_mask.long().cumsum(-1) - 1).masked_fill(prefix_mask == 0, 1)
    backbone = model.get_decoder()  # no output head: its logits are not needed (152k-wide for Qwen2.5)
    output = backbone(
        input_ids=input_ids[firsts, :-1], attention_mask=prefix_mask, position_ids=position_ids, use_cache=True
    )
    cache = output.get(CACHE_NAME)
    if not isinstance(cache, Cache):
        return None
    cache.reorder_cache(torch.tensor(index, device=input_ids.device))
    return cache


def save_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """Write a model (LoRA adapters merged) and its tokenizer as a Hugging Face directory, from any process.

    Not ``model.save_pretrained``: under torch.distributed it writes only on global rank 0, and the process that
    builds a cached policy may be any rank. These are the files ``from_pretrained`` reads. Tied weights are stored
    once, under their first name (the input embedding), as ``save_pretrained`` does: engines such as vLLM read an
    ``lm_head.weight`` without an embedding as an untied head and leave the embedding uninitialized.
    """
    if hasattr(model, "merge_and_unload"):  # LoRA: the adapters merged into a copy of the base weights
        model = copy.deepcopy(model).merge_and_unload()
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(directory)
    weights, stored = {}, set()
    for name, tensor in model.state_dict().items():
        where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if where not in stored:
            stored.add(where)
            weights[name] = tensor.detach().contiguous()
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(directory)


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """``target``, built by ``build(directory)`` if it is missing, by exactly one of the processes sharing the cache.

    The builder holds a file lock (the other ranks wait for it, then find the result), writes into a private
    directory and renames it into place, so no process ever sees a half-written ``target``.
    """
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.with_name(target.name + ".lock"))):
        if not (target / "config.json").exists():
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)  # left by a build that was killed
            build(partial)
            partial.rename(target)
    return target
