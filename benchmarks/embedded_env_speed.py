"""Embedded suite: stepping speed, random-policy success and optimal solution lengths per split and difficulty.

python benchmarks/embedded_env_speed.py
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import time

from datamodules.envs.embedded import SPLITS, EmbeddedTextEnv, optimal_actions

EPISODES, MAX_TURNS = 500, 20


def measure(difficulty: str, split: str) -> tuple[float, float, float, float]:
    env, rng = EmbeddedTextEnv(difficulty), random.Random(0)
    wins = steps = 0
    reset_time = step_time = 0.0
    lengths = []
    for seed in range(EPISODES):
        start = time.perf_counter()
        _, info = env.reset(seed=seed, options={"split": split})
        reset_time += time.perf_counter() - start
        lengths.append(len(optimal_actions(env)))
        start = time.perf_counter()
        for _ in range(MAX_TURNS):
            _, _, terminated, _, info = env.step(rng.choice(info["admissible_actions"]))
            steps += 1
            if terminated:
                wins += 1
                break
        step_time += time.perf_counter() - start
    return steps / step_time, EPISODES / reset_time, wins / EPISODES, statistics.fmean(lengths)


def main() -> None:
    print("command: python benchmarks/embedded_env_speed.py")
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}\n")
    print(f"| difficulty | split | steps/s | resets/s | random success ({MAX_TURNS} turns) | mean optimal length |")
    print("|---|---|---|---|---|---|")
    for difficulty in ("easy", "default"):
        for split in SPLITS:
            sps, rps, success, length = measure(difficulty, split)
            print(f"| {difficulty} | {split} | {sps:,.0f} | {rps:,.0f} | {success:.3f} | {length:.1f} |")


if __name__ == "__main__":
    main()
