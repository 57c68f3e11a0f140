"""Can the tiny architecture represent the scripted policy? Clone it, then ask ``embedded_decisions.py``'s questions.

python benchmarks/embedded_cloning.py --out DIR [--states 4000] [--layers 2 | --from-prior] [--cache DIR]

The scripted policy of ``embedded_ceiling.py`` (goal actions first, never walking back: 100% of ``val_iid``) plays the
train split; each of its turns becomes a format-prior example whose only admissible action is the one it chose, so the
format prior's own loss and budget (``train_format_prior`` with the quickstart's ``tiny`` settings) fit the tiny model
to it. The model is built fresh with the quickstart's sizes and ``--layers`` blocks, on the tokenizer of the
quickstart's format prior (loaded from ``--cache``, built there first if missing); with ``--from-prior`` it starts from
the format prior's weights instead, as RL does, so cloning does not have to learn to spell the actions again.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from embedded_ceiling import scripted_action  # benchmarks/ (the script's directory is on sys.path)
from embedded_decisions import decisions
from machine import ROOT, describe
from transformers import AutoModelForCausalLM, AutoTokenizer

from datamodules.envs.embedded import EmbeddedTextEnv
from datamodules.prompts import PromptBuilder
from datamodules.rollout_datamodule import RolloutDataModule
from epo_lightning.policy import save_policy
from epo_lightning.tiny_preset import (
    PriorExample,
    TinyPreset,
    build_tiny_model,
    load_or_build_tiny,
    train_format_prior,
)


def scripted_examples(states: int) -> list[PriorExample]:
    """``states`` turns of scripted play on the train split, each with the scripted action as its only target."""
    builder, rng, examples, seed = PromptBuilder(history_length=1), random.Random(0), [], 0
    while len(examples) < states:
        env = EmbeddedTextEnv()
        obs, info = env.reset(seed=seed, options={"split": "train"})
        seed += 1
        history, previous = [], None
        for _ in range(20):
            admissible = info["admissible_actions"]
            action = scripted_action(info["task"], admissible, previous, rng, walk_back=False)
            examples.append((builder.render(info["task"], history, obs, admissible), [action]))
            history.append((obs, action))
            obs, _, won, _, info = env.step(action)
            previous = action
            if won:
                break
    return examples[:states]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="where to save the cloned policy")
    parser.add_argument("--states", type=int, default=4000)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--from-prior", action="store_true", help="start from the format prior, as RL does")
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/epo_lightning").expanduser())
    args = parser.parse_args()
    if args.from_prior and args.layers != 2:
        parser.error("--from-prior starts from the quickstart's 2-layer prior: leave --layers at 2")
    start_from = "--from-prior" if args.from_prior else f"--layers {args.layers}"
    print(f"command: python benchmarks/embedded_cloning.py --states {args.states} {start_from}")
    print(f"machine: {describe()}\n")
    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    quickstart = TinyPreset(**config["model"]["init_args"]["tiny"])
    data = RolloutDataModule(**{**config["data"]["init_args"], "val_tasks": 0})
    examples = data.format_prior_examples(quickstart.prior_states, quickstart.seed)
    prior = load_or_build_tiny(data.vocabulary(examples), examples, quickstart, args.cache)
    tokenizer = AutoTokenizer.from_pretrained(prior)
    preset = replace(quickstart, num_layers=args.layers)
    if args.from_prior:
        model = AutoModelForCausalLM.from_pretrained(prior, dtype=torch.float32)
    else:
        model = build_tiny_model(preset, tokenizer)
    start = time.perf_counter()
    torch.manual_seed(preset.seed)
    loss = train_format_prior(model, tokenizer, scripted_examples(args.states), preset)
    seconds = time.perf_counter() - start
    save_policy(model, tokenizer, Path(args.out))
    result = decisions(Path(args.out), tasks=128, temperature=1.0)
    print(f"cloned on {args.states} states in {seconds:.0f} s, last-epoch loss {loss:.4f}")
    print(", ".join(f"{key} {value:.3f}" for key, value in result.items()))


if __name__ == "__main__":
    main()
