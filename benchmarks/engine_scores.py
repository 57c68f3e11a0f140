"""Where pi_old comes from, timed: the trainer scoring every row again, or the engine's scores recorded while sampling.

python benchmarks/engine_scores.py [--steps 4] [--repeats 3]

Two settings of the quickstart (``configs/quickstart.yaml``: tiny policy, format prior, embedded suite), alternated
``--repeats`` times in one process, each trained for ``--steps`` RL steps with the real Trainer, EntropyHistory and
PhaseScheduler (no validation):

- ``recompute`` (the library default; the quickstart records): after the rollout, a no-grad forward of the
  trained policy scores every row's log-probs and entropies (pi_old and the entropy ``EntropyHistory`` records),
  besides the KL reference's;
- ``engine``: ``HFEngine(report_logprobs=True)`` records them while sampling (one log-softmax of the vocabulary per
  generated token) and ``old_logprobs: engine`` trains with those, so that forward is skipped.

Both sample the same tokens (same seed; recording draws no random numbers). Per run, the median over RL steps 1 and
later of the step's wall time and its split (``benchmarks/scaling.py``'s clock); the table gives the median and range
over the repeats, and each ratio to ``recompute`` within the same repeat.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import yaml
from machine import ROOT, describe  # benchmarks/machine.py (the script's directory is on sys.path)
from scaling import run_point  # benchmarks/scaling.py

from epo_lightning.cpu_memory import keep_freed_memory
from epo_lightning.rollout_engine import HFEngine

MODES = {
    "recompute": lambda: {"rollout_engine": HFEngine(), "old_logprobs": "recompute"},
    "engine": lambda: {"rollout_engine": HFEngine(report_logprobs=True), "old_logprobs": "engine"},
}
PARTS = ("wall", "rollout", "score + plan", "update")


def timed_run(model_args: dict, data_args: dict, steps: int, cache: str) -> dict[str, float]:
    """The median over RL steps 1.. of one run's step time and its parts, in seconds."""
    records = run_point(model_args, data_args, steps, cache)
    for record in records:
        record["score + plan"] = max(record["wall"] - record["rollout"] - record["update"], 0.0)
    return {part: statistics.median(record[part] for record in records) for part in PARTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="RL steps per run (step 0 is warm-up, not reported)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", default=str(Path("~/.cache/epo_lightning").expanduser()))
    args = parser.parse_args()
    keep_freed_memory()  # as the epo CLI does by default (--keep_freed_memory)
    if args.steps < 2 or args.repeats < 1:
        parser.error("--steps must be >= 2 (step 0 is warm-up) and --repeats >= 1.")
    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    model_args, data_args = config["model"]["init_args"], {**config["data"]["init_args"], "val_tasks": 0}
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for _ in range(args.repeats):
        for mode, settings in MODES.items():  # alternated, so drifts of a shared machine hit both
            runs[mode].append(timed_run({**model_args, **settings()}, data_args, args.steps, args.cache))
    print(f"command: python benchmarks/engine_scores.py --steps {args.steps} --repeats {args.repeats}")
    print(f"machine: {describe()}")
    print(f"each run: median over RL steps 1-{args.steps - 1}; cells: median (min-max) over {args.repeats} repeats\n")
    print("| old_logprobs | step s | rollout s | score + plan s | update s | step vs recompute |")
    print("|---|---|---|---|---|---|")
    for mode, repeats in runs.items():
        cells = []
        for part in PARTS:
            values = [run[part] for run in repeats]
            cells.append(f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        ratios = [run["wall"] / base["wall"] for run, base in zip(repeats, runs["recompute"], strict=True)]
        ratio = f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        print(f"| {mode} | {' | '.join(cells)} | {ratio} |")


if __name__ == "__main__":
    main()
