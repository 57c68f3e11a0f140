"""Rollout engines side by side: generated tokens/s of ``HFEngine`` and ``VLLMEngine`` on the same prompts, the time
of a weight sync, and the engine-versus-trainer log-prob gap.

python benchmarks/rollout.py [--policy tiny|smollm2-135m] [--prompts 64] [--max-new-tokens 16] [--repeats 3]

The prompts are real ones: states of the embedded suite reached by play, rendered and tokenized as a rollout does
(with the chat template for SmolLM2). Each repeat times one batched call of each engine, alternating them, at
temperature 1 with the response budget as the only limit. Run it in the vLLM environment (README, "Fast rollouts
with vLLM"); on CPU the goal is equal results, not speed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml
from machine import ROOT, describe  # benchmarks/machine.py (the script's directory is on sys.path)

from datamodules.rollout_datamodule import RolloutDataModule
from datamodules.turn_rows import TurnRow, collate_rows
from epo_lightning.logprobs import response_logprobs_and_entropy
from epo_lightning.policy import load_policy
from epo_lightning.pretrained import resolve_policy
from epo_lightning.rollout_engine import HFEngine
from epo_lightning.tiny_preset import TinyPreset, load_or_build_tiny
from epo_lightning.vllm_engine import VLLMEngine


def policy_and_prompts(name: str, count: int, cache: Path) -> tuple[torch.nn.Module, object, list[list[int]]]:
    data = RolloutDataModule()
    examples = data.format_prior_examples(max(count, 300), seed=0)
    if name == "tiny":  # the quickstart's policy
        config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
        preset = TinyPreset(**config["model"]["init_args"]["tiny"])
        directory = load_or_build_tiny(data.vocabulary(examples), examples, preset, cache)
    else:
        directory = resolve_policy(name, cache)
    model, tokenizer = load_policy(directory)
    model.eval()
    step = max(len(examples) // count, 1)
    prompts = [data.prompt_builder.encode(tokenizer, text) for text, _ in examples[::step][:count]]
    return model, tokenizer, prompts


def max_gap(model, prompts, generation) -> float:
    rows = [TurnRow(p, r, 0.0, 0, 0, 0, 0.0, 0) for p, r in zip(prompts, generation.token_ids, strict=True)]
    batch = collate_rows(rows, pad_id=0)
    with torch.no_grad():
        scored, _ = response_logprobs_and_entropy(model, batch.input_ids, batch.attention_mask, batch.response_mask)
    mask = batch.response_mask.bool()
    engine = torch.zeros_like(scored)
    for b, logprobs in enumerate(generation.logprobs):
        engine[b, mask[b]] = torch.tensor(logprobs)
    return float((scored - engine)[mask].abs().max())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", default="tiny", choices=["tiny", "smollm2-135m"])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/epo_lightning").expanduser())
    args = parser.parse_args()
    model, tokenizer, prompts = policy_and_prompts(args.policy, args.prompts, args.cache)
    engines = {"HFEngine": HFEngine(), "VLLMEngine": VLLMEngine(kv_cache_gb=2)}
    start = time.perf_counter()
    warm = engines["VLLMEngine"].generate(model, tokenizer, prompts[:2], 1.0, 2)  # builds the engine
    startup = time.perf_counter() - start
    speed: dict[str, list[float]] = {name: [] for name in engines}
    last = None
    for repeat in range(args.repeats + 1):  # the first round warms both up and is not counted
        for name, engine in engines.items():
            torch.manual_seed(repeat)
            begin = time.perf_counter()
            generation = engine.generate(model, tokenizer, prompts, 1.0, args.max_new_tokens)
            seconds = time.perf_counter() - begin
            if repeat:
                speed[name].append(sum(len(ids) for ids in generation.token_ids) / seconds)
            if name == "VLLMEngine":
                last = generation
    syncs = []
    for _ in range(3):
        begin = time.perf_counter()
        engines["VLLMEngine"].load_weights(model)
        syncs.append(time.perf_counter() - begin)
    del warm
    lengths = [len(p) for p in prompts]
    print(
        f"command: python benchmarks/rollout.py --policy {args.policy} --prompts {args.prompts} "
        f"--max-new-tokens {args.max_new_tokens} --repeats {args.repeats}"
    )
    print(f"machine: {describe()}")
    print(f"{len(prompts)} prompts of {min(lengths)}-{max(lengths)} tokens (mean {statistics.mean(lengths):.0f})\n")
    print("| engine | generated tokens/s, median (range) | vs HFEngine |\n|---|---|---|")
    base = statistics.median(speed["HFEngine"])
    for name, values in speed.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.0f} ({min(values):.0f}-{max(values):.0f}) | {median / base:.2f}x |")
    print(f"\nVLLMEngine start (first call): {startup:.1f} s; weight sync: {statistics.median(syncs) * 1000:.0f} ms")
    print(f"max |engine - trainer| log-prob on the last vLLM batch: {max_gap(model, prompts, last):.1e}")


if __name__ == "__main__":
    main()
