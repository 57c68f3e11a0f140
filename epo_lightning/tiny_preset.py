"""The ``tiny`` policy preset: a small Llama with a word-level tokenizer and a task-free format prior.

A randomly initialised model cannot emit ``<action> take red key </action>`` by chance, while a pretrained LLM starts
RL from a policy that already writes valid, diverse actions. The format prior gives the tiny model that starting point
without task knowledge: behaviour cloning towards a *uniformly random admissible action*. For each sampled state the
target at every response position is the full distribution of valid next words (over the admissible actions that share
the prefix generated so far), so the model learns ``p(action | state) = 1 / |admissible|`` exactly, not one sampled
action per state (which gave valid but low-entropy, non-uniform policies in our prototype). Soft-target cross-entropy:

    L_prior = - sum_i sum_v q_i(v) log p_theta(v | prompt, response_<i)

The result is saved with ``save_pretrained`` into a cache directory keyed by everything that determines it, and loaded
back with ``from_pretrained`` like any Hugging Face model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from epo_lightning.action_format import ACTION_CLOSE, ACTION_OPEN
from epo_lightning.policy import build_once, save_policy
from epo_lightning.progress_display import transient_display

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
PriorExample = tuple[str, Sequence[str]]  # (prompt text, admissible actions)


@dataclass(frozen=True)
class TinyPreset:
    """Size of the tiny Llama and the budget of its format prior.

    Args:
        hidden_size: model width.
        num_layers: transformer blocks.
        num_heads: attention heads (must divide ``hidden_size``).
        intermediate_size: MLP width.
        max_position_embeddings: longest prompt + response the model accepts.
        prior_states: states sampled by random play on the train split for the format prior.
        prior_epochs: passes of soft-target cross-entropy over those states.
        prior_lr: AdamW learning rate of the prior.
        prior_batch_size: states per prior optimizer step.
        seed: initialisation and prior sampling seed.
    """

    hidden_size: int = 96
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 512
    prior_states: int = 4000
    prior_epochs: int = 3
    prior_lr: float = 2e-3
    prior_batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.num_heads, self.max_position_embeddings) < 1:
            raise ValueError("tiny.num_heads and tiny.max_position_embeddings must be positive integers.")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"tiny.hidden_size ({self.hidden_size}) must be divisible by tiny.num_heads ({self.num_heads})."
            )
        if min(self.hidden_size, self.num_layers, self.intermediate_size, self.prior_batch_size) < 1:
            raise ValueError("tiny preset sizes must be positive integers.")
        if self.prior_states < 0 or self.prior_epochs < 0:
            raise ValueError("tiny.prior_states and tiny.prior_epochs must be >= 0 (0 disables the format prior).")


def build_word_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over ``words`` plus the special and action-tag tokens."""
    vocab_words = list(SPECIAL_TOKENS) + [ACTION_OPEN, ACTION_CLOSE]
    vocab_words += sorted(set(words) - set(vocab_words))
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab_words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )


def build_tiny_model(preset: TinyPreset, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A randomly initialised Llama sized by ``preset`` (seeded)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads,
        num_key_value_heads=preset.num_heads,
        max_position_embeddings=preset.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(preset.seed)
        return LlamaForCausalLM(config)


def response_ids(tokenizer: PreTrainedTokenizerFast, action: str) -> list[int]:
    """Token ids of the canonical response for ``action``: ``<action> ... </action> <eos>``."""
    ids = tokenizer(f"{ACTION_OPEN} {action} {ACTION_CLOSE}", add_special_tokens=False)["input_ids"]
    return list(ids) + [tokenizer.eos_token_id]


def next_word_targets(candidates: Sequence[Sequence[int]], path: Sequence[int], vocab_size: int) -> torch.Tensor:
    """``[len(path), V]`` soft targets: at step i, the distribution of token i over candidates sharing ``path[:i]``.

    Every candidate counts once, so following the targets samples a uniformly random candidate.
    """
    targets = torch.zeros(len(path), vocab_size)
    alive = list(candidates)
    for i, token in enumerate(path):
        for cand in alive:
            targets[i, cand[i]] += 1.0
        targets[i] /= targets[i].sum()
        alive = [cand for cand in alive if len(cand) > i + 1 and cand[i] == token]
    return targets


def train_format_prior(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, examples: Sequence[PriorExample], preset: TinyPreset
) -> float:
    """Fit ``model`` to the uniform admissible-action policy on ``examples``; returns the last epoch's mean loss."""
    rng = random.Random(preset.seed)
    rows = []
    for prompt, admissible in examples:
        candidates = [response_ids(tokenizer, action) for action in admissible]
        path = rng.choice(candidates)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        rows.append((prompt_ids, path, next_word_targets(candidates, path, len(tokenizer))))
    optimizer = torch.optim.AdamW(model.parameters(), lr=preset.prior_lr, weight_decay=0.0)
    total_steps = max(1, preset.prior_epochs * -(-len(rows) // preset.prior_batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=preset.prior_lr, total_steps=total_steps)
    model.train()
    epoch_loss = float("nan")
    with prior_progress(total_steps) as advance:
        for epoch in range(preset.prior_epochs):
            rng.shuffle(rows)
            losses = []
            for start in range(0, len(rows), preset.prior_batch_size):
                loss = _soft_target_loss(model, tokenizer.pad_token_id, rows[start : start + preset.prior_batch_size])
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                advance(f"format prior: epoch {epoch + 1}/{preset.prior_epochs}, loss {loss.item():.3f}")
            epoch_loss = sum(losses) / max(1, len(losses))
            log.info("format prior epoch loss %.4f", epoch_loss)
    model.eval()
    return epoch_loss


@contextmanager
def prior_progress(total_steps: int) -> Iterator[Callable[[str], None]]:
    """A progress bar with the time left for the format prior (minutes on CPU), on the process that builds it."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with transient_display(*columns) as display:
        if display is None:
            yield lambda description: None
            return
        task = display.add_task("format prior", total=total_steps)
        yield lambda description: display.update(task, advance=1, description=description)


def _soft_target_loss(model: LlamaForCausalLM, pad_id: int, rows: list) -> torch.Tensor:
    """Mean over response positions of ``-sum_v q(v) log p(v)``, one batched forward and one log-softmax."""
    length = max(len(p) + len(r) for p, r, _ in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    batch_index, positions = [], []
    for b, (prompt, resp, _) in enumerate(rows):
        input_ids[b, : len(prompt) + len(resp)] = torch.tensor(prompt + resp)
        attention[b, : len(prompt) + len(resp)] = 1
        batch_index += [b] * len(resp)
        positions += range(len(prompt) - 1, len(prompt) + len(resp) - 1)  # position t predicts token t + 1
    # Project only the predicting positions onto the vocabulary: long prompts (ScienceWorld's list every valid action)
    # would otherwise materialize a [B, T, V] logits tensor for a handful of trained positions.
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention).last_hidden_state
    logits = model.get_output_embeddings()(hidden[torch.tensor(batch_index), torch.tensor(positions)])
    logp = F.log_softmax(logits.float(), dim=-1)
    targets = torch.cat([t for _, _, t in rows])
    return -(targets * logp).sum() / len(positions)


def cache_key(words: Sequence[str], preset: TinyPreset, examples: Sequence[PriorExample]) -> str:
    """A digest of everything that determines the tiny policy (vocabulary, sizes, prior data)."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"words": sorted(set(words)), "preset": asdict(preset), "v": 2}).encode())
    for prompt, admissible in examples:
        digest.update(prompt.encode())
        digest.update("|".join(admissible).encode())
    return digest.hexdigest()[:16]


def load_or_build_tiny(
    words: Sequence[str], examples: Sequence[PriorExample], preset: TinyPreset, cache_dir: str | Path
) -> Path:
    """Return the directory of the tiny policy for this vocabulary and prior data, building it once if missing.

    Processes that share the cache (the ranks of a DDP job) take a file lock: the first builds, the others wait for it
    and load what it saved.
    """
    target = Path(cache_dir).expanduser() / f"tiny-{cache_key(words, preset, examples)}"
    return build_once(target, lambda directory: _build_tiny(words, examples, preset, directory))


def _build_tiny(words: Sequence[str], examples: Sequence[PriorExample], preset: TinyPreset, directory: Path) -> None:
    """Build the tiny policy and save it to ``directory``."""
    tokenizer = build_word_tokenizer(words)
    model = build_tiny_model(preset, tokenizer)
    if preset.prior_epochs and examples:
        log.info("training the tiny preset's format prior on %d states (into %s)", len(examples), directory)
        with torch.random.fork_rng():
            torch.manual_seed(preset.seed)
            train_format_prior(model, tokenizer, examples, preset)
    save_policy(model, tokenizer, directory)
