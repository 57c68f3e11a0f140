"""Loading a causal LM policy and sampling responses from it (token-in, token-out).

Any Hugging Face causal LM works, by hub id or local directory, through ``AutoModelForCausalLM``/``AutoTokenizer``.
``generate_responses`` returns the sampled token ids exactly; training uses these ids, never re-tokenized text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_policy(name_or_path: str | Path, dtype: str = "float32") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer (a pad token is set to eos when the tokenizer has none).

    Args:
        name_or_path: hub id or local directory saved with ``save_pretrained``.
        dtype: ``float32`` (the only sensible choice on CPU), ``bfloat16`` or ``float16``.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}.")
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=_DTYPES[dtype])
    return model, tokenizer


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each transformer block in the backward instead of storing its activations (non-reentrant).

    transformers 5 names it ``activation_checkpointing_enable``; 4.x ``gradient_checkpointing_enable``.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@torch.no_grad()
def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    temperature: float,
    max_new_tokens: int,
) -> list[list[int]]:
    """Sample one response per prompt in a single left-padded batch with KV cache.

    Sampling is from the full softmax at ``temperature`` (no top-k/top-p), the same distribution the training
    forward scores, so the PPO ratio starts at exactly 1. ``temperature == 0`` means greedy.

    Returns:
        The generated ids of each prompt, cut after the first end-of-sequence token (kept: the policy chose it).
    """
    if not prompts:
        return []
    device = next(model.parameters()).device
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.as_tensor(prompt)
        attention_mask[row, width - len(prompt) :] = 1
    sampling = {"temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {}
    output = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        use_cache=True,
        do_sample=temperature > 0,
        **sampling,
    )[:, width:].tolist()
    return [ids[: ids.index(eos_id) + 1] if eos_id in ids else ids for ids in output]
