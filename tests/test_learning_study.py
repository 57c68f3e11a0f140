"""``benchmarks/learning.py``: the study's statistics and its resumability, on hand-made results (no training)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import benchmark_script


@pytest.fixture(scope="module")
def study():
    with benchmark_script("learning") as module:
        yield module


def _write(out: Path, arm: str, seed: int, rollout: float, entropy: list[float]) -> None:
    curves = {
        "val/success_rate": [0.1, rollout + 0.1],
        "val_ood/success_rate": [0.0, rollout],
        "rollout/success_rate": [0.0] * 5 + [rollout] * 3,  # the last 3 steps: the window
        "rollout/valid_action_ratio": [1.0] * 8,
        "entropy/token_mean": entropy,
        "entropy/turn_0": entropy,
    }
    record = {"arm": arm, "seed": seed, "steps": 8, "seconds": 60.0, "machine": "test", "curves": curves}
    (out / arm).mkdir(parents=True, exist_ok=True)
    (out / arm / f"seed{seed}.json").write_text(json.dumps(record))


def test_sign_flip_p_value_is_exact_for_a_few_pairs(study):
    assert study.sign_flip_p([0.1, 0.2]) == 0.5  # of ++, +-, -+, --: the two same-sign ones reach 0.15
    assert study.sign_flip_p([0.1, -0.1]) == 1.0
    assert study.sign_flip_p([0.1] * 6) == 2 / 64
    assert study.sign_flip_p([0.1] * 20) < 0.001  # drawn flips beyond 16 pairs


def test_seeds_needed_for_a_difference_of_five_points(study):
    # ((1.96 + 0.84) * 0.1 / 0.05)^2 = 31.4
    assert study.seeds_needed(0.1) == 32
    assert study.seeds_needed(0.02886751) == 3


def test_report_pairs_seeds_and_summarizes_the_final_window(study, tmp_path, capsys):
    for seed, (base, epo) in enumerate([(0.5, 0.55), (0.6, 0.7), (0.4, 0.45)]):
        _write(tmp_path, "grpo", seed, base, [0.2] * 8)
        _write(tmp_path, "grpo_epo", seed, epo, [0.2, 0.4] * 4)
        _write(tmp_path, "ppo", seed, base + 0.1, [0.2] * 8)
        _write(tmp_path, "ppo_epo", seed, epo + 0.1, [0.2] * 8)
    study.report(argparse.Namespace(out=str(tmp_path), window=3))
    printed = capsys.readouterr().out
    assert "| grpo | 3 | 0.6 +- 0.1 | 0.5 +- 0.1 | 0.5 +- 0.1 | 1 +- 0 | 0.2 +- 0 | 0 +- 0 | 0 +- 0 | 1.0 |" in printed
    # entropy 0.2, 0.4, 0.2, ...: variance across steps 0.1^2, jitter 0.2^2 / 2
    assert "| 0.333 +- 0 | 0.01 +- 0 | 0.02 +- 0 | 1.0 |" in printed  # window mean of 0.4, 0.2, 0.4
    # differences 0.05, 0.1, 0.05: mean 0.067, sd 0.029; of the 8 sign flips only all-plus and all-minus reach 0.067
    difference = "+0.067 +- 0.029 (p = 0.25)"  # IID, OOD and rollout alike here
    # the entropy's variance across steps: 0.01 against 0 in every pair; equal between ppo_epo and ppo
    h_var, no_h_var = "+1.00e-02 +- 0.00e+00 (p = 0.25)", "+0.00e+00 +- 0.00e+00 (p = 1.00)"
    assert f"| grpo_epo | grpo | 3 | {difference} | {difference} | {h_var} | {difference} | 3 |" in printed
    assert f"| ppo_epo | ppo | 3 | {difference} | {difference} | {no_h_var} | {difference} | 3 |" in printed
    assert "| ppo_epo | grpo | 3 | +0.167 +- 0.029 (p = 0.25)" in printed
    assert "| ppo | grpo | 3 | +0.100 +- 0.000" in printed
    assert (tmp_path / "learning.png").exists() == (importlib.util.find_spec("matplotlib") is not None)


def test_a_finished_run_is_not_run_again(study, tmp_path, monkeypatch):
    _write(tmp_path, "grpo", 0, 0.5, [0.2] * 8)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished (arm, seed) was trained again")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    args = argparse.Namespace(out=str(tmp_path), steps=8, eval_tasks=8)
    assert study.run_one("grpo", 0, args) == tmp_path / "grpo" / "seed0.json"
    with pytest.raises(AssertionError, match="trained again"):
        study.run_one("grpo", 1, args)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):  # the process ended meanwhile
            continue
        if parent == pid:
            children.append(int(stat.parent.name))
    return children


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the training process through /proc")
def test_a_stopped_study_stops_the_run_it_started_and_leaves_no_run_directory(tmp_path):
    root = Path(__file__).parents[1]
    (tmp_path / "tmp").mkdir()
    # an empty cache: the run starts by building the format prior, so it is still running when the study is stopped
    env = {**os.environ, "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp"), "PYTHONPATH": str(root)}
    command = [sys.executable, "benchmarks/learning.py", "run", "--only", "grpo", "--seed", "0"]
    study = subprocess.Popen([*command, "--out", str(tmp_path / "out")], cwd=root, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (runs := _children(study.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert runs, "the study did not start its epo fit"
        study.send_signal(signal.SIGTERM)
        assert study.wait(timeout=90) == 128 + signal.SIGTERM
    finally:
        study.kill()
    assert not any(Path(f"/proc/{run}").exists() for run in runs)  # before: the run trained on, unseen, for minutes
    assert not list((tmp_path / "tmp").iterdir())  # its run directory (checkpoints, logs) is removed
    assert not (tmp_path / "out" / "grpo" / "seed0.json").exists()
