"""EPO against its baselines on the embedded suite, at one fixed budget of RL steps: a resumable study in parts.

python benchmarks/learning.py run [--only ARM] [--seed S] [--seeds 8] [--steps 60] [--out runs/learning]
                                  [--keep-policies]
python benchmarks/learning.py report [--out runs/learning]

Every arm is the quickstart (``configs/quickstart.yaml``) with a few settings changed, so the arms differ only in
the objective; every seed is paired across arms (the same seed gives the same tasks and the same initial policy).
``run`` trains each (arm, seed) that has no result yet in its own ``epo fit`` process and keeps its scalars in
``<out>/<arm>/seed<S>.json``: stop it at any time (SIGTERM or Ctrl-C stops the run in progress too, and discards it)
and run it again to go on, or run parts on several machines.
With ``--keep-policies`` it also exports each run's final policy to ``<out>/<arm>/seed<S>.policy`` (a Hugging Face
directory, ~3 MB for the tiny preset), for analyses such as ``benchmarks/embedded_decisions.py``.
``report`` prints, per arm, the mean +- std over seeds of:

- ``IID`` / ``OOD``: success on ``--eval-tasks`` held-out tasks of each split, evaluated once after the last step;
- ``rollout (last W)``: training rollout success averaged over the last ``--window`` RL steps;
- ``valid``: the valid-action ratio over the same window;
- ``H mean`` / ``H var`` / ``H jitter``: the token entropy over the window, its variance across all RL steps, and
  half the mean squared change from one step to the next (the variance without the slow trend: oscillation). The
  paper's claim is about all three: EPO keeps entropy from collapsing and from oscillating;

then each arm against ``grpo`` on paired seeds (IID, OOD, the entropy's variance across steps and windowed rollout
success): the mean difference +- its std, the exact sign-flip p-value (every assignment of signs to the paired
differences; no normal approximation, which would be wrong for a handful of seeds), and how many seeds per arm a
difference of 0.05 would need at the observed rollout spread (two-sided 5%, power 80%, normal approximation); and
plots (PNG): entropy and rollout success over RL steps, and the per-turn entropy of the last window.

The null control ``epo_base_null`` is ``epo_base`` with lambda changed by 1%: its difference from ``epo_base`` shows
the run-to-run noise floor that any claimed effect must clear.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import ROOT, describe  # benchmarks/machine.py (the script's directory is on sys.path)

from epo_lightning.export import export_checkpoint
from epo_lightning.tensorboard_scalars import read_scalars

_NO_SMOOTHING = ["--model.init_args.loss.smoothing=off", "--entropy_history=null", "--phase=null"]
_NO_ENTROPY = ["--model.init_args.entropy_coef=0.0", *_NO_SMOOTHING]
#: arm -> overrides of the quickstart (which is GRPO + EPO)
ARMS = {
    "grpo": _NO_ENTROPY,
    "epo_base": _NO_SMOOTHING,
    "epo_base_null": [*_NO_SMOOTHING, "--model.init_args.entropy_coef=0.00101"],
    "grpo_epo": [],
    "ppo": ["--model.init_args.advantage=gae", *_NO_ENTROPY],
    "ppo_epo": ["--model.init_args.advantage=gae"],
    **{f"grpo_epo_lambda{v:g}": [f"--model.init_args.entropy_coef={v}"] for v in (5e-3, 2e-2, 5e-2)},
    **{f"grpo_epo_alpha{v:g}": [f"--model.init_args.loss.alpha={v}"] for v in (1e-3, 1e-2, 5e-2)},
    # past Assumption A.4 (alpha * beta < 1): above the corridor the penalty outweighs the bonus and pushes entropy down
    "grpo_epo_lambda0.02_alpha2": ["--model.init_args.entropy_coef=0.02", "--model.init_args.loss.alpha=2.0"],
}
#: what an arm is paired with in the report (default: grpo); EPO on top of PPO is compared with PPO as well
BASELINES = {"epo_base_null": ("epo_base",), "ppo_epo": ("ppo", "grpo")}
#: the arms run when --only is not given (the sweep arms are run by name)
MAIN_ARMS = ("grpo", "epo_base", "epo_base_null", "grpo_epo", "ppo", "ppo_epo")
TRACKED = ("rollout/success_rate", "rollout/valid_action_ratio", "entropy/token_mean")
Z_95, Z_POWER_80 = 1.959964, 0.841621


def run_one(arm: str, seed: int, args: argparse.Namespace) -> Path:
    """Train one (arm, seed) in its own ``epo fit`` process unless its result exists; returns the result's path."""
    result = Path(args.out) / arm / f"seed{seed}.json"
    if result.exists():
        return result
    root = tempfile.mkdtemp(prefix=f"epo_learning_{arm}_{seed}_")
    command = [
        sys.executable, "-m", "epo_lightning.cli", "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"),
        f"--seed_everything={seed}", f"--trainer.max_epochs={args.steps}",
        f"--trainer.check_val_every_n_epoch={args.steps}", f"--data.init_args.val_tasks={args.eval_tasks}",
        f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false", *ARMS[arm],
    ]  # fmt: skip
    start = time.perf_counter()
    try:  # the study keeps only the scalars (and with --keep-policies the final policy)
        stderr = train(command)
        if stderr is not None:
            raise RuntimeError(f"{arm} seed {seed} failed:\n{stderr[-3000:]}")
        scalars = read_scalars(root)
        if args.keep_policies:
            export_checkpoint(next(Path(root).rglob("last.ckpt")), result.with_suffix(".policy"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    record = {
        "arm": arm,
        "seed": seed,
        "steps": args.steps,
        "seconds": time.perf_counter() - start,
        "overrides": ARMS[arm],
        "machine": describe(),
        # epoch-level values are logged once per RL step (their TensorBoard step is the optimizer step): keep order
        "curves": {tag: [value for _, value in points] for tag, points in scalars.items()},
    }
    result.parent.mkdir(parents=True, exist_ok=True)
    partial = result.with_suffix(".part")
    partial.write_text(json.dumps(record))
    partial.replace(result)  # a stopped study never leaves a half-written result
    return result


def train(command: list[str]) -> str | None:
    """Run one ``epo fit`` to the end; returns its stderr if it failed, else None.

    A study stopped meanwhile (SIGTERM, Ctrl-C) stops the run too, which ``epo`` does within an RL step: left running
    unseen, it would hold the cores that the study, run again, needs.
    """
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        _, stderr = process.communicate()
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return stderr if process.returncode else None


def summarize(record: dict, window: int) -> dict[str, float]:
    """The fixed final-window values of one run."""
    curves = record["curves"]

    def last(tag: str) -> float:
        return statistics.fmean(curves[tag][-window:])

    entropy = curves["entropy/token_mean"]
    return {
        "IID": curves["val/success_rate"][-1],
        "OOD": curves["val_ood/success_rate"][-1],
        "rollout": last("rollout/success_rate"),
        "valid": last("rollout/valid_action_ratio"),
        "H mean": last("entropy/token_mean"),
        "H var": statistics.pvariance(entropy),
        "H jitter": statistics.fmean((b - a) ** 2 for a, b in itertools.pairwise(entropy)) / 2,
    }


def sign_flip_p(differences: list[float], draws: int = 20_000) -> float:
    """Two-sided p-value of "no difference" for paired differences: the share of sign assignments whose mean is at
    least as far from 0 as the observed one (all 2^n of them up to 16 pairs, ``draws`` random ones beyond)."""
    observed = abs(statistics.fmean(differences)) - 1e-12
    if len(differences) <= 16:
        signs = itertools.product((1.0, -1.0), repeat=len(differences))
    else:
        rng = random.Random(0)
        signs = ([rng.choice((1.0, -1.0)) for _ in differences] for _ in range(draws))
    flips = [abs(statistics.fmean(s * d for s, d in zip(sign, differences, strict=True))) for sign in signs]
    return sum(flip >= observed for flip in flips) / len(flips)


def seeds_needed(spread: float, difference: float = 0.05) -> int:
    """Seeds per arm for a paired two-sided 5% test with power 80% to see ``difference`` at this paired spread."""
    return math.ceil(((Z_95 + Z_POWER_80) * spread / difference) ** 2)


def report(args: argparse.Namespace) -> None:
    """Print the table, the paired comparisons and the power estimate; draw the plots."""
    records: dict[str, dict[int, dict]] = {}
    for path in sorted(Path(args.out).glob("*/seed*.json")):
        record = json.loads(path.read_text())
        records.setdefault(record["arm"], {})[record["seed"]] = record
    if not records:
        raise SystemExit(f"no results under {args.out}: run `python benchmarks/learning.py run` first.")
    steps = {r["steps"] for runs in records.values() for r in runs.values()}
    machine = next(iter(next(iter(records.values())).values()))["machine"]
    print(f"command: python benchmarks/learning.py report --out {args.out} --window {args.window}")
    print(f"machine (of the first run): {machine}")
    print(f"budget: {sorted(steps)} RL steps; windows: last {args.window} RL steps; IID/OOD after the last step\n")
    summaries = {arm: {s: summarize(r, args.window) for s, r in runs.items()} for arm, runs in records.items()}
    keys = ("IID", "OOD", "rollout", "valid", "H mean", "H var", "H jitter")
    print("| arm | seeds | " + " | ".join(keys) + " | minutes per run |\n" + "|---" * (len(keys) + 3) + "|")
    for arm, runs in summaries.items():
        cells = []
        for key in keys:
            values = [summary[key] for summary in runs.values()]
            spread = statistics.stdev(values) if len(values) > 1 else float("nan")
            cells.append(f"{statistics.fmean(values):.3g} +- {spread:.2g}")
        minutes = statistics.fmean(r["seconds"] for r in records[arm].values()) / 60
        print(f"| {arm} | {len(runs)} | " + " | ".join(cells) + f" | {minutes:.1f} |")
    print("\npaired on seeds, arm minus baseline: mean difference +- std (sign-flip p); seeds per arm to see 0.05")
    print("| arm | baseline | pairs | IID | OOD | H var | rollout | seeds for 0.05 (rollout) |\n" + "|---" * 8 + "|")
    for arm, baseline in [(a, b) for a in summaries for b in BASELINES.get(a, ("grpo",))]:
        if arm == baseline or baseline not in summaries:
            continue
        pairs = sorted(set(summaries[arm]) & set(summaries[baseline]))
        if len(pairs) < 2:
            continue
        cells, spread = [], 0.0
        for key in ("IID", "OOD", "H var", "rollout"):  # rollout last: its spread sizes the study
            differences = [summaries[arm][s][key] - summaries[baseline][s][key] for s in pairs]
            mean, spread = statistics.fmean(differences), statistics.stdev(differences)
            digits = ".2e" if key == "H var" else ".3f"  # the entropy's variance across steps is ~1e-4
            cells.append(f"{mean:+{digits}} +- {spread:{digits}} (p = {sign_flip_p(differences):.2f})")
        print(f"| {arm} | {baseline} | {len(pairs)} | {' | '.join(cells)} | {seeds_needed(spread)} |")
    plot(records, Path(args.out), args.window)


def plot(records: dict[str, dict[int, dict]], out: Path, window: int) -> None:
    """Per arm, the seed-mean curves of entropy and rollout success, and the last window's per-turn entropy."""
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError:
        print("\n(no plots: pip install matplotlib, or the extra '.[plots]')")
        return
    figure = Figure(figsize=(15, 4))
    entropy_axes, success_axes, turn_axes = figure.subplots(1, 3)
    for arm, runs in records.items():
        for axes, tag in ((entropy_axes, "entropy/token_mean"), (success_axes, "rollout/success_rate")):
            curves = [r["curves"][tag] for r in runs.values()]
            length = min(len(c) for c in curves)
            axes.plot([statistics.fmean(c[i] for c in curves) for i in range(length)], label=arm)
        turns = []
        for t in range(64):
            tag = f"entropy/turn_{t}"
            values = [statistics.fmean(r["curves"][tag][-window:]) for r in runs.values() if tag in r["curves"]]
            if not values:
                break
            turns.append(statistics.fmean(values))
        turn_axes.plot(turns, marker=".", label=arm)
    entropy_axes.set(xlabel="RL step", ylabel="mean token entropy (nats)", title="entropy, mean over seeds")
    success_axes.set(xlabel="RL step", ylabel="rollout success", title="training success, mean over seeds")
    turn_axes.set(xlabel="turn index", ylabel="mean token entropy", title=f"per-turn entropy, last {window} steps")
    for axes in (entropy_axes, turn_axes):  # an arm whose entropy ran away would flatten the others to one line
        if axes.dataLim.y1 > 10 * axes.dataLim.y0 > 0:
            axes.set_yscale("log")
    turn_axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(out / "learning.png", dpi=100)
    print(f"\nplots: {out / 'learning.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["run", "report"])
    parser.add_argument("--only", choices=sorted(ARMS), default=None, help="one arm (default: the main arms)")
    parser.add_argument("--seed", type=int, default=None, help="one seed (default: 0 .. --seeds - 1)")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60, help="the fixed budget of RL steps, the same for every arm")
    parser.add_argument("--eval-tasks", type=int, default=256, help="held-out tasks per split, evaluated at the end")
    parser.add_argument("--window", type=int, default=10, help="final RL steps averaged for rollout metrics")
    parser.add_argument("--out", default="runs/learning")
    parser.add_argument("--keep-policies", action="store_true", help="export each run's final policy next to it")
    args = parser.parse_args()
    if args.action == "report":
        report(args)
        return
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # unwinds through train()
    arms = [args.only] if args.only else list(MAIN_ARMS)
    seeds = [args.seed] if args.seed is not None else list(range(args.seeds))
    for seed in seeds:  # seeds outermost: a stopped study has every arm at the same seeds
        for arm in arms:
            path = run_one(arm, seed, args)
            print(f"{arm} seed {seed}: {path}", flush=True)


if __name__ == "__main__":
    main()
