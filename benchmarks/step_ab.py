"""The quickstart's RL step timed at several commits or settings, runs alternated: what a change did to the step.

python benchmarks/step_ab.py before=90ee048 after=HEAD [--steps 10] [--repeats 3]
python benchmarks/step_ab.py on=HEAD off=HEAD,--keep_freed_memory=false

Each ``NAME=COMMIT[,ARG...]`` is checked out into a temporary git worktree and trained there as a user would run it:
``python -m epo_lightning.cli fit --config configs/quickstart.yaml ARG...`` (that commit's code and its quickstart
config, so each side has its own settings), with ``--steps`` RL steps and validation off. The sides are run one after
the other and the whole round is repeated ``--repeats`` times, so drifts of a shared machine hit every side alike.

A run's step time is the median over RL steps 1 and later of the wall-clock gap between consecutive ``time/train_s``
points in TensorBoard (step 0 holds the first calls and is left out): rollout, scoring and update, as a user waits for
them. The table gives the median and range over repeats, and each side's ratio to the first within the same round.
The format prior is built and cached by the first run (``~/.cache/epo_lightning``) and is not timed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import ROOT, describe  # benchmarks/machine.py (the script's directory is on sys.path)

from epo_lightning.tensorboard_scalars import read_scalars, read_wall_times


def run_steps(checkout: Path, extra: list[str], steps: int, log_dir: Path) -> dict[str, float]:
    """Train the quickstart in ``checkout`` (CLI arguments ``extra`` added) for ``steps`` RL steps; the medians over
    steps 1.. of its step times."""
    command = [
        sys.executable, "-m", "epo_lightning.cli", "fit", "--config", "configs/quickstart.yaml",
        "--trainer.max_epochs", str(steps), "--trainer.default_root_dir", str(log_dir),
        "--data.init_args.val_tasks", "8", "--trainer.check_val_every_n_epoch", str(steps + 1), *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(checkout)}  # that commit's packages, not the installed ones
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed in {checkout}:\n{done.stderr[-3000:]}")
    ends = read_wall_times(log_dir, "time/train_s")
    scalars = read_scalars(log_dir)
    return {
        "step": statistics.median(b - a for a, b in itertools.pairwise(ends)),
        "rollout": statistics.median(value for _, value in scalars["time/rollout_s"][1:]),
        "update": statistics.median(value for _, value in scalars["time/train_s"][1:]),
    }


def cell(values: list[float], unit: str = "") -> str:
    return f"{statistics.median(values):.2f}{unit} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "sides", nargs="+", metavar="NAME=COMMIT[,ARG...]", help="the first one is the reference of the ratios"
    )
    parser.add_argument("--steps", type=int, default=10, help="RL steps per run (step 0 is warm-up, not reported)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    specs = dict(side.split("=", 1) for side in args.sides if "=" in side)
    if len(specs) != len(args.sides) or args.steps < 3 or args.repeats < 1:
        parser.error("give sides as NAME=COMMIT[,ARG...] with distinct names, --steps >= 3 and --repeats >= 1.")
    sides = {name: spec.split(",")[0] for name, spec in specs.items()}
    extras = {name: spec.split(",")[1:] for name, spec in specs.items()}
    with tempfile.TemporaryDirectory(prefix="step_ab_") as tmp:
        checkouts = {name: Path(tmp) / name for name in sides}
        for name, commit in sides.items():
            subprocess.run(["git", "worktree", "add", "--detach", checkouts[name], commit], cwd=ROOT, check=True)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
        try:
            for repeat in range(args.repeats):
                for name, checkout in checkouts.items():
                    runs[name].append(
                        run_steps(checkout, extras[name], args.steps, Path(tmp) / "runs" / f"{name}_{repeat}")
                    )
                    print(f"repeat {repeat} {name}: {runs[name][-1]}", file=sys.stderr)
        finally:
            for checkout in checkouts.values():
                subprocess.run(["git", "worktree", "remove", "--force", checkout], cwd=ROOT, check=False)
    first = next(iter(runs.values()))
    print(f"command: python benchmarks/step_ab.py {' '.join(args.sides)} --steps {args.steps} --repeats {args.repeats}")
    print(f"machine: {describe()}")
    print(f"each run: median over RL steps 1-{args.steps - 1}; cells: median (min-max) over {args.repeats} repeats\n")
    print(f"| side | commit | step s | rollout s | update s | step vs {next(iter(sides))} |")
    print("|---|---|---|---|---|---|")
    for name, repeats in runs.items():
        commit = subprocess.run(["git", "rev-parse", "--short", sides[name]], cwd=ROOT, capture_output=True, text=True)
        parts = [cell([run[part] for run in repeats]) for part in ("step", "rollout", "update")]
        ratios = [run["step"] / base["step"] for run, base in zip(repeats, first, strict=True)]
        print(f"| {name} | {commit.stdout.strip()} | {' | '.join(parts)} | {cell(ratios, 'x')} |")


if __name__ == "__main__":
    main()
