"""What a policy that sees only what the agent sees can win on the embedded suite: the ceiling of ``history_length: 1``.

python benchmarks/embedded_ceiling.py [--tasks 512] [--max-turns 20]

The scripted policy reads the task, the admissible actions and its own previous action, as the agent's prompt shows
them with ``history_length: 1``. It prefers, in order: put the goal item in the goal container, take the goal item,
unlock, take the key, open a container; otherwise it takes an exit, either avoiding the one that leads back where it
came from ("no walking back") or at random. A uniformly random policy is the floor.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence

from machine import describe  # benchmarks/machine.py (the script's directory is on sys.path)

from datamodules.envs.embedded import EmbeddedTextEnv

OPPOSITE = {"go east": "go west", "go west": "go east", "go north": "go south", "go south": "go north"}


def scripted_action(
    task: str, admissible: Sequence[str], previous: str | None, rng: random.Random, walk_back: bool
) -> str:
    """The first goal-directed admissible action, else an exit (not the way back unless ``walk_back``)."""
    words = task.split()
    item, container = words[2], (words[-1] if words[0] == "put" else None)
    ranked = [
        f"put {item} in {container}" if container else None,
        f"take {item}",
        *(a for a in admissible if a.startswith("unlock")),
        "take key",
        *(a for a in admissible if a.startswith("open")),
    ]
    for action in ranked:
        if action in admissible:
            return action
    exits = [a for a in admissible if a.startswith("go ")]
    if not walk_back and previous in OPPOSITE and len(exits) > 1:
        exits = [a for a in exits if a != OPPOSITE[previous]]
    return rng.choice(exits or list(admissible))


def success_rate(split: str, policy: str, tasks: int, max_turns: int) -> float:
    """Share of the first ``tasks`` tasks of ``split`` won within ``max_turns`` by ``policy``."""
    rng, wins = random.Random(0), 0
    for seed in range(tasks):
        env = EmbeddedTextEnv()
        _, info = env.reset(seed=seed, options={"split": split})
        previous = None
        for _ in range(max_turns):
            admissible = info["admissible_actions"]
            if policy == "random":
                action = rng.choice(admissible)
            else:
                action = scripted_action(info["task"], admissible, previous, rng, walk_back=policy == "goal first")
            _, _, won, _, info = env.step(action)
            previous = action
            if won:
                wins += 1
                break
    return wins / tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=512)
    parser.add_argument("--max-turns", type=int, default=20)
    args = parser.parse_args()
    print(f"command: python benchmarks/embedded_ceiling.py --tasks {args.tasks} --max-turns {args.max_turns}")
    print(f"machine: {describe()}\n")
    print("| policy | val_iid | val_ood |\n|---|---|---|")
    for policy in ("random", "goal first", "goal first, no walking back"):
        rates = [success_rate(split, policy, args.tasks, args.max_turns) for split in ("val_iid", "val_ood")]
        print(f"| {policy} | " + " | ".join(f"{rate:.3f}" for rate in rates) + " |")


if __name__ == "__main__":
    main()
