"""What a tiny policy does at each kind of decision on the embedded suite, from its exact action probabilities.

python benchmarks/embedded_decisions.py NAME=POLICY [NAME=POLICY ...] [--tasks 128] [--temperature 1.0]

POLICY is a Hugging Face directory of the ``tiny`` preset (the format-prior cache, or ``epo export`` output) or a
``.ckpt`` written by ``epo fit`` (exported first). Each policy plays the first ``--tasks`` ``val_iid`` tasks with
``history_length: 1`` prompts, sampling among the admissible actions in proportion to the probability it gives each
one's canonical response (``<action> ... </action> <eos>``, scored in one batch). At every turn it is asked, exactly:

- **goal**: when ``benchmarks/embedded_ceiling.py``'s scripted policy has a goal-directed action (put, take the goal
  item, unlock, take the key, open), the probability of that action, among the admissible ones (also by kind);
- **walk back**: when only exits lead on, the last action was a move and its reverse is one of several exits, the
  probability of walking back, among the exits, against the uniform policy's;
- **valid mass**: the probability of all admissible responses together (the rest is malformed or inadmissible text).

The scripted policy that takes its goal action and never walks back wins 100% of these tasks (embedded_ceiling.py); a
policy that walks back more often than the uniform one loops between two rooms.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from pathlib import Path

import torch
from embedded_ceiling import OPPOSITE, scripted_action  # benchmarks/ (the script's directory is on sys.path)
from machine import describe
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from datamodules.envs.embedded import EmbeddedTextEnv
from datamodules.prompts import PromptBuilder
from datamodules.turn_rows import TurnRow, collate_rows
from epo_lightning.export import export_checkpoint
from epo_lightning.logprobs import response_logprobs_and_entropy
from epo_lightning.tiny_preset import response_ids

KINDS = ("put", "take item", "unlock", "take key", "open")


def kind_of(action: str) -> str:
    """The kind of a goal-directed action (``KINDS``)."""
    verb = action.split()[0]
    if verb == "take":
        return "take key" if action == "take key" else "take item"
    return verb


@torch.no_grad()
def action_probabilities(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, actions: list[str], temperature: float
) -> list[float]:
    """The probability of each action's canonical response after ``prompt``, scored as the trainer scores rows."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    rows = [TurnRow(list(prompt_ids), response_ids(tokenizer, a), 0.0, 0, 0, 0, 0.0, 0) for a in actions]
    batch = collate_rows(rows, pad_id=tokenizer.pad_token_id)
    logprobs, _ = response_logprobs_and_entropy(
        model, batch.input_ids, batch.attention_mask, batch.response_mask, temperature
    )
    return (logprobs * batch.response_mask).sum(-1).exp().tolist()


def decisions(policy: Path, tasks: int, temperature: float) -> dict[str, float]:
    """Success and the decision probabilities (see the module docstring) of ``policy`` on ``tasks`` val_iid tasks."""
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(policy)
    builder = PromptBuilder(history_length=1)
    rng = random.Random(0)
    goal, back, uniform_back, valid = [], [], [], []
    wins: dict[str, list[bool]] = {}  # task family -> won, per task
    by_kind: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for seed in range(tasks):
        env = EmbeddedTextEnv()
        obs, info = env.reset(seed=seed, options={"split": "val_iid"})
        history, previous = [], None
        wins.setdefault(env.world.family, []).append(False)
        for _ in range(20):
            admissible = info["admissible_actions"]
            prompt = builder.render(info["task"], history, obs, admissible)
            scores = action_probabilities(model, tokenizer, prompt, admissible, temperature)
            probs = dict(zip(admissible, scores, strict=True))
            mass = sum(probs.values())
            valid.append(mass)
            best = scripted_action(info["task"], admissible, previous, rng, walk_back=True)
            exits = [a for a in admissible if a.startswith("go ")]
            if not best.startswith("go "):
                goal.append(probs[best] / mass)
                by_kind[kind_of(best)].append(goal[-1])
            elif previous in OPPOSITE and OPPOSITE[previous] in exits and len(exits) > 1:
                back.append(probs[OPPOSITE[previous]] / sum(probs[e] for e in exits))
                uniform_back.append(1 / len(exits))
            action = rng.choices(admissible, weights=list(probs.values()))[0]
            history.append((obs, action))
            obs, _, won, _, info = env.step(action)
            previous = action
            if won:
                wins[env.world.family][-1] = True
                break
    return {
        "success": sum(map(sum, wins.values())) / tasks,
        **{f"success {family}": statistics.fmean(won) for family, won in sorted(wins.items())},
        "goal": statistics.fmean(goal),
        "goal turns": len(goal),
        "walk back": statistics.fmean(back),
        "uniform": statistics.fmean(uniform_back),
        "walk-back turns": len(back),
        "valid mass": statistics.fmean(valid),
        **{kind: statistics.fmean(values) if values else float("nan") for kind, values in by_kind.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("policies", nargs="+", help="NAME=DIR (a Hugging Face directory) or NAME=FILE.ckpt")
    parser.add_argument("--tasks", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"command: python benchmarks/embedded_decisions.py {' '.join(args.policies)} --tasks {args.tasks} "
          f"--temperature {args.temperature}")  # fmt: skip
    print(f"machine: {describe()}\n")
    print("| policy | success | P(goal action) | P(walk back) | uniform walk back | valid mass | turns (goal / back) |")
    print("|---|---|---|---|---|---|---|")
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for spec in args.policies:
            name, _, path = spec.partition("=")
            policy = Path(path)
            if policy.suffix == ".ckpt":
                policy = export_checkpoint(policy, Path(scratch) / name)
            r = results[name] = decisions(policy, args.tasks, args.temperature)
            print(
                f"| {name} | {r['success']:.3f} | {r['goal']:.3f} | {r['walk back']:.3f} | {r['uniform']:.3f} | "
                f"{r['valid mass']:.3f} | {r['goal turns']} / {r['walk-back turns']} |"
            )
    print("\nP(goal action) by kind of the goal action\n")
    print("| policy | " + " | ".join(KINDS) + " |\n|---|" + "---|" * len(KINDS))
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{r[kind]:.3f}" for kind in KINDS) + " |")
    families = sorted({key for r in results.values() for key in r if key.startswith("success ")})
    print("\nSuccess by task family\n")
    print("| policy | " + " | ".join(f[len("success ") :] for f in families) + " |\n|---|" + "---|" * len(families))
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{r[f]:.3f}" for f in families) + " |")


if __name__ == "__main__":
    main()
