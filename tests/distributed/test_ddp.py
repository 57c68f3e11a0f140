"""Two-rank DDP on CPU (gloo, launched with torchrun): it finishes with uneven rollouts, keeps the ranks identical,
equals one process trained on both ranks' rows, and logs values computed over both ranks' data."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from lightning.pytorch import LightningDataModule
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from datamodules.rollout_datamodule import Batches
from epo_lightning.module import EPOModule
from epo_lightning.types import TurnBatch
from epo_lightning.update_weights import update_token_weights
from tests.conftest import make_trainer
from tests.distributed.launch import ENV, ROOT, free_port, torchrun


def test_uneven_ranks_run_the_same_micro_batches_train_every_row_once_and_stay_identical(ddp_run):
    (rank0, rank1), cache = ddp_run
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1  # built once, by one rank
    rows0, rows1 = rank0["counts"][0]["rows"], rank1["counts"][0]["rows"]
    assert rows0 >= 4 * rows1  # far more rows on rank 0
    assert rank0["micro_batches"] == rank1["micro_batches"]  # every step, whatever the row counts
    assert any(float(b["response_mask"].sum()) == 0 for b in rank1["batches"])  # rank 1 ran out: padding batches
    for record in (rank0, rank1):
        trained = sum(int((b["response_mask"].sum(dim=1) > 0).sum()) for b in record["batches"])
        assert trained == record["counts"][0]["rows"]  # every row of the rank's rollout, once
    for step in range(3):
        for name, value in rank0["params"][step].items():
            assert torch.equal(value, rank1["params"][step][name]), (step, name)
    assert any(not torch.equal(v, rank0["initial"][k]) for k, v in rank0["params"][-1].items())


def test_training_on_the_engines_recorded_scores_matches_recomputed_ones_on_two_ranks(ddp_run, tmp_path):
    (rank0, _), cache = ddp_run
    scored = torchrun(tmp_path / "out", cache, "--steps", "3", "--engine", "hf_scored")
    assert any(float(b["response_mask"].sum()) == 0 for b in scored[1]["batches"])  # filler batches: no engine values
    for record in scored:  # pi_old is what the engine recorded for one copy of the row (scored once), 0 for fillers
        recorded = {}
        for batch, b, row in _rows(record["batches"]):
            if row[1]:  # not a filler
                recorded.setdefault(row, []).append(batch["rollout_logprobs"][b, : len(row[0])])
        for batch, b, row in _rows(record["batches"]):
            old = batch["old_logprobs"][b]
            assert not old[len(row[0]) :].any()
            copies = recorded[row] if row[1] else [torch.zeros(len(row[0]))]
            assert any(torch.equal(old[: len(row[0])], copy) for copy in copies)
    for step in range(3):
        for name, value in scored[0]["params"][step].items():
            assert torch.equal(value, scored[1]["params"][step][name]), (step, name)
            torch.testing.assert_close(value, rank0["params"][step][name], rtol=0, atol=1e-5)


def test_ppo_epochs_run_the_same_micro_batches_again_on_both_ranks(ddp_run, tmp_path):
    (rank0, _), cache = ddp_run
    repeated = torchrun(tmp_path / "out", cache, "--steps", "1", "--ppo_epochs", "2")
    for record in repeated:  # step 0's rollout depends only on the initial weights: the one-pass run's rows, twice
        assert record["micro_batches"] == [2 * rank0["micro_batches"][0]]
        batches = record["batches"]
        for first, again in zip(batches[: len(batches) // 2], batches[len(batches) // 2 :], strict=True):
            assert torch.equal(first["input_ids"], again["input_ids"]) and torch.equal(
                first["advantages"], again["advantages"]
            )
    for name, value in repeated[0]["params"][0].items():
        assert torch.equal(value, repeated[1]["params"][0][name]), name
    moved = [float((v - rank0["params"][0][k]).abs().max()) for k, v in repeated[0]["params"][0].items()]
    assert max(moved) > 1e-4  # the second pass trained on after the one-pass step's weights


def _rows(batches: list[dict]):
    """``(batch, index, (token ids, response length))`` of every row of recorded micro-batches."""
    for batch in batches:
        for b, mask in enumerate(batch["attention_mask"].bool()):
            yield batch, b, (tuple(batch["input_ids"][b][mask].tolist()), int(batch["response_mask"][b].sum()))


def _pool(first: dict, second: dict, pad_id: int) -> TurnBatch:
    """One micro-batch holding both ranks' rows (right-padded to one width; rank 1's trajectory ids moved apart)."""
    width = max(first["input_ids"].shape[1], second["input_ids"].shape[1])
    fields = {}
    for name, value in first.items():
        if not isinstance(value, torch.Tensor) or name.startswith("distinct_"):
            continue  # the pooled batch runs every row: sharing identical rows' forward changes no result
        other = second[name]
        if name == "traj_index":
            other = torch.where(other >= 0, other + 10_000, other - 10_000)
        if value.dim() == 2:
            fill = pad_id if name == "input_ids" else 0
            value, other = (torch.nn.functional.pad(v, (0, width - v.shape[1]), value=fill) for v in (value, other))
        fields[name] = torch.cat([value, other])
    return TurnBatch(**fields, update_end=first["update_end"])


class PooledData(LightningDataModule):
    def __init__(self, batches: list[TurnBatch]) -> None:
        super().__init__()
        self.batches = batches

    def train_dataloader(self) -> Batches[TurnBatch]:
        return Batches(self.batches)


def _assert_one_process_matches(cache, batches: list[TurnBatch], record: dict, tmp_path) -> None:
    """One process with the worker's settings, trained on ``batches``, ends with the rank's parameters after step 0."""
    policy_dir = next(p for p in cache.iterdir() if p.is_dir())
    module = EPOModule(
        policy=str(policy_dir),
        loss={"kl_coef": 0.01, "agg": "turn_traj_mean"},
        entropy_coef=0.01,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
    )
    make_trainer(tmp_path, max_epochs=1).fit(module, datamodule=PooledData(batches))
    moved = 0.0
    for name, param in module.model.named_parameters():
        torch.testing.assert_close(param.detach(), record["params"][0][name], rtol=1e-5, atol=1e-6)
        moved = max(moved, float((param.detach() - record["initial"][name]).abs().max()))
    assert moved > 1e-3  # the update is far larger than the tolerance


def test_ddp_update_equals_one_process_on_the_pooled_rows(ddp_run, tmp_path):
    (rank0, rank1), cache = ddp_run
    pooled = [_pool(a, b, pad_id=0) for a, b in zip(rank0["batches"], rank1["batches"], strict=True)]
    updates, current = [], []
    for batch in pooled:
        current.append(batch)
        if batch.update_end:
            updates.append(current)
            current = []
    assert len(updates) >= 2 and len(pooled) > len(updates)  # several updates of several micro-batches
    # the weights each rank computed over its update are the one-process weights of the pooled update (Eq. 2)
    expected = [w for update in update_token_weights(updates, "turn_traj_mean") for w in update]
    for batch, weights in zip(pooled, expected, strict=True):
        torch.testing.assert_close(batch.loss_weights, weights, rtol=1e-6, atol=1e-9)
    assert sum(float(w.sum()) for w in expected) == pytest.approx(len(updates))  # each update's weights sum to 1

    _assert_one_process_matches(cache, pooled, rank0, tmp_path)


def test_micro_batches_handed_in_without_weights_are_aggregated_over_both_ranks(ddp_run, tmp_path):
    """A user's own DataModule sets no ``loss_weights``: the update is still the pooled rows' agg, not world x it."""
    (rank0, rank1), cache = ddp_run
    first = [record["batches"][0] for record in (rank0, rank1)]  # each rank's first micro-batch of step 0
    assert all(float(batch["response_mask"].sum()) > 0 for batch in first)
    torch.save([[batch] for batch in first], tmp_path / "batches.pt")  # one micro-batch per rank
    trained = torchrun(tmp_path / "out", cache, "--steps", "1", "--batches", str(tmp_path / "batches.pt"))
    pooled = _pool(*first, pad_id=0)
    pooled.loss_weights, pooled.update_end = None, True

    for name, value in trained[0]["params"][0].items():
        assert torch.equal(value, trained[1]["params"][0][name]), name
    _assert_one_process_matches(cache, [pooled], trained[0], tmp_path)


def test_early_stopping_on_a_collapse_metric_stops_both_ranks_after_the_step_that_crossed_it(ddp_run, tmp_path):
    (rank0, rank1), cache = ddp_run
    first = [record["counts"][0] for record in (rank0, rank1)]  # step 0 is the same in every run from this cache
    assert 0.0 < sum(c["valid_turns"] for c in first) / sum(c["turns"] for c in first) < 1.0
    stopped = torchrun(tmp_path / "out", cache, "--steps", "3", "--stop_on_valid_ratio", "1.0")
    assert [len(record["params"]) for record in stopped] == [1, 1]  # under 1.0 after step 0: no step 1 on either
    kept = torchrun(tmp_path / "kept", cache, "--steps", "3", "--stop_on_valid_ratio", "0.0")
    assert [len(record["params"]) for record in kept] == [3, 3]


def test_a_prompt_bound_the_context_cannot_hold_stops_both_ranks_before_the_first_episode(ddp_run, tmp_path):
    _, cache = ddp_run  # the test preset's context: 512 positions, less 8 new tokens
    saying = "data.max_prompt_tokens is 600, but the policy's context leaves 504 tokens"
    torchrun(tmp_path / "out", cache, "--max_prompt_tokens", "600", timeout=300, fails=True, saying=saying)


def test_logged_values_pool_both_ranks(ddp_run):
    (rank0, rank1), _ = ddp_run
    metrics = rank0["metrics"]
    last0, last1 = rank0["counts"][-1], rank1["counts"][-1]
    pooled = {key: last0[key] + last1[key] for key in last0}
    assert metrics["rollout/success_rate"] == pytest.approx(pooled["successes"] / pooled["episodes"])
    assert metrics["rollout/valid_action_ratio"] == pytest.approx(pooled["valid_turns"] / pooled["turns"])
    assert metrics["rollout/episode_len"] == pytest.approx(pooled["turns"] / pooled["episodes"])
    assert metrics["rollout/response_len"] == pytest.approx(pooled["response_tokens"] / pooled["turns"])
    for record in (rank0, rank1):  # the generated tokens of the turns trained on, as the trained rows count them
        trained = sum(float(batch["response_mask"].sum()) for batch in record["batches"])
        assert record["counts"][0]["response_tokens"] == trained > 0
    assert metrics["rollout/turn_samples"] == pooled["rows"]
    assert metrics["rollout/env_errors"] == pooled["env_errors"]
    rate = last0["generated_tokens"] / last0["seconds"] + last1["generated_tokens"] / last1["seconds"]
    assert metrics["rollout/tokens_per_s"] == pytest.approx(rate, rel=1e-5)
    assert metrics["time/rollout_s"] == pytest.approx(max(last0["seconds"], last1["seconds"]))
    # H̄_k, what EntropyHistory records: the token-weighted mean over both ranks' response tokens
    for k, ((sum0, tokens0), (sum1, tokens1)) in enumerate(zip(rank0["entropy"], rank1["entropy"], strict=True)):
        assert rank0["history"][k] == pytest.approx((sum0 + sum1) / (tokens0 + tokens1), rel=1e-5)
    assert rank0["history"] == rank1["history"]
    assert metrics["entropy/reference"] == pytest.approx(sum(rank0["history"][:2]) / 2, rel=1e-5)
    assert metrics["entropy/token_mean"] == pytest.approx(rank0["history"][-1], rel=1e-5)
    assert "entropy/turn_0" in metrics
    for split, name in (("val_iid", "val/success_rate"), ("val_ood", "val_ood/success_rate")):
        successes = torch.cat([v["success"] for r in (rank0, rank1) for v in r["val"] if v["split"] == split])
        assert successes.numel() == 5  # every validation task exactly once
        assert metrics[name.replace("success_rate", "env_errors")] == 0.0  # summed over both ranks
        assert metrics[name] == pytest.approx(float(successes.mean()))


def test_only_the_global_zero_rank_draws_and_the_pictures_hold_both_ranks_entropy(ddp_run):
    (rank0, rank1), cache = ddp_run
    if not rank0["plots"]:
        pytest.skip("needs matplotlib (the extra 'plots')")
    for key in ("turns", "means", "references"):  # every rank computed the same all-reduced values; rank 0 drew them
        torch.testing.assert_close(torch.tensor(rank0["plots"][key]), torch.tensor(rank1["plots"][key]), equal_nan=True)
    assert rank0["plots"]["means"] == pytest.approx(rank0["history"], rel=1e-6)  # H̄_k over both ranks' tokens
    runs = list((cache.parent / "out" / "tb").glob("version_*"))
    assert len(runs) == 1 and len(list(runs[0].glob("events.out.tfevents.*"))) == 1  # one writer: rank 0
    events = EventAccumulator(str(runs[0]), size_guidance={"images": 0, "histograms": 0, "tensors": 0})
    events.Reload()
    for tag in ("entropy/turn_by_step", "entropy/corridor"):
        assert [image.step for image in events.Images(tag)] == [1, 2]  # after steps 2 and 3 (the last)
    assert [event.step for event in events.Histograms("hist/token_entropy")] == [0, 1, 2]
    assert "transcripts/train_0/text_summary" in events.Tags()["tensors"]


@pytest.mark.parametrize("rank1", ["playing", "done"])
def test_sigterm_stops_both_ranks_at_their_next_turn_of_a_rollout(tiny_policy_dir, tmp_path, rank1):
    """Also when rank 1's episodes have all ended and it waits for rank 0 (before: Lightning's handler broadcast
    inside the signal handler met that wait, and both ranks hung until torchrun killed them)."""
    shutil.copytree(tiny_policy_dir, tmp_path / "cache" / tiny_policy_dir.name)  # the test preset, already built
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
        "tests/envs/slow_fit.py", str(tmp_path), *(["short_rank1"] if rank1 == "done" else []),
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **ENV}, stdout=subprocess.PIPE, text=True)
    try:
        before: list[str] = []
        while line := process.stdout.readline():
            before.append(line.strip())
            if "step 1" in before and before[before.index("step 1") :].count("step 0") >= (6 if rank1 == "done" else 1):
                break  # "done": rank 0 has played 3 more turns since rank 1's only one, so rank 1 waits for it
        process.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks, as SLURM's srun would
        after = process.stdout.read().split("\n")
        process.wait(timeout=120)
    finally:
        process.kill()
    assert {"step 0", "step 1"} <= set(before)
    for rank in (0, 1):  # each ends the turn in progress (at most its 2 environments' steps); before: 40 steps
        assert after.count(f"step {rank}") <= 2
        assert f"stopped {rank}" in after  # shut down by the run itself, not killed by torchrun


def test_sigterm_to_one_rank_while_the_ranks_train_stops_both_after_the_same_micro_batch(tiny_policy_dir, tmp_path):
    """Before, the signalled rank stopped after its batch while the other trained on and waited for it."""
    shutil.copytree(tiny_policy_dir, tmp_path / "cache" / tiny_policy_dir.name)  # the test preset, already built
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
        "tests/envs/slow_fit.py", str(tmp_path), "slow_batches",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **ENV}, stdout=subprocess.PIPE, text=True)
    try:
        pids, before = {}, []
        while line := process.stdout.readline():
            words = line.split()
            if words[0] == "pid":
                pids[words[1]] = int(words[2])
            before.append(line.strip())
            if before.count("batch 1") == 2:  # both ranks are in the first RL step's micro-batches
                break
        os.kill(pids["1"], signal.SIGTERM)  # rank 1 only, as `kill` of one process would
        after = process.stdout.read().split("\n")
        process.wait(timeout=120)
    finally:
        process.kill()
    assert "stopped 0" in after and "stopped 1" in after  # both shut down by the run itself
    batches = [(before + after).count(f"batch {rank}") for rank in (0, 1)]
    assert batches[0] == batches[1]  # after the same micro-batch


def test_each_rank_samples_its_rollouts_and_its_evaluation_with_its_own_stream(ddp_run):
    (rank0, rank1), _ = ddp_run
    streams = [{seed % 2**32 for seed in r["sampling_seeds"]} for r in (rank0, rank1)]  # torch uses the low 32 bits
    assert len(streams[0]) == len(streams[1]) == 5  # 3 rollouts and 2 validation splits (each evaluated alike)
    # before: both ranks evaluated with the same stream, so row i of rank 0 and of rank 1 drew the same numbers
    assert streams[0].isdisjoint(streams[1]), streams


def test_ranks_that_picked_their_own_seeds_play_rank_0_s(ddp_run, tmp_path):
    """torchrun starts each rank on its own: without a pinned seed_everything, each picks its own random seed."""
    _, cache = ddp_run
    rank0, rank1 = torchrun(tmp_path / "out", cache, "--steps", "1", "--seed_per_rank")
    # before: 100 and 101. The checkpoint holds rank 0's seed, which every rank takes when it resumes, so rank 1
    # would then have drawn other tasks and samples than in the interrupted run
    assert rank0["root_seed"] == rank1["root_seed"] == 100


def test_an_rl_step_without_episodes_on_any_rank_changes_nothing_on_both(ddp_run, tmp_path):
    _, cache = ddp_run
    rank0, rank1 = torchrun(tmp_path / "out", cache, "--steps", "2", "--empty_first_step", "--val_tasks", "0")
    for record in (rank0, rank1):
        assert [c["rows"] for c in record["counts"]][0] == 0  # step 0: every reset failed
        for name, value in record["initial"].items():
            assert torch.equal(record["params"][0][name], value), name  # before: AdamW/SGD stepped on nothing
        assert any(not torch.equal(record["params"][1][n], v) for n, v in record["initial"].items())  # step 1 trains
        assert len(record["history"]) == 1  # step 0 has no entropy (before: "training diverged" at step 0)


def test_a_stopped_ddp_run_resumes_exactly(ddp_run, tmp_path):
    """Stopped after step 0 and resumed on two ranks, the run ends where the uninterrupted three-step run ended."""
    wholes, cache = ddp_run
    checkpoint = tmp_path / "step1.ckpt"
    torchrun(tmp_path / "first", cache, "--steps", "1", "--save_checkpoint", str(checkpoint))
    resumed = torchrun(tmp_path / "resumed", cache, "--steps", "3", "--ckpt_path", str(checkpoint))
    for record, whole in zip(resumed, wholes, strict=True):  # each rank against itself uninterrupted
        assert record["history"] == whole["history"]
        assert [c["rows"] for c in record["counts"]] == [c["rows"] for c in whole["counts"][1:]]  # the same rollouts
        for name, value in whole["params"][-1].items():
            assert torch.equal(record["params"][-1][name], value), name


def test_an_error_in_one_rank_s_rollout_fails_the_job_naming_it(ddp_run, tmp_path):
    """Rank 1 raises in its first training rollout while rank 0 collects: the job fails with rank 1's error.

    Nothing swallows it (a rank that went on would leave the other waiting in the next collective). Under torchrun
    rank 0 then stops at once, its collective failing or torchrun ending it (9 s in all here); the two-minute timeout
    catches a job that would hang.
    """
    _, cache = ddp_run
    torchrun(tmp_path / "out", cache, "--steps", "2", "--rank1_raises", fails=True, saying="rank 1 ran out of memory",
             timeout=120)  # fmt: skip


def test_the_critic_s_explained_variance_is_computed_over_both_ranks_tokens(ddp_run, tmp_path):
    """At step 1 the critic has been trained once, so its old values explain part of the returns; the logged value is
    that of every response token of the step on both ranks, pooled (not an average of per-rank values)."""
    _, cache = ddp_run
    ranks = torchrun(tmp_path / "out", cache, "--steps", "2", "--advantage", "gae")

    def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
        return float(1 - (returns - values).var() / returns.var())

    values, returns = [], []
    for record in ranks:
        last_step = record["last_step_batches"]  # ppo_epochs 1: each micro-batch trained once
        tokens = [b["response_mask"].bool() for b in last_step]
        values.append(torch.cat([b["old_values"][t] for b, t in zip(last_step, tokens, strict=True)]).double())
        returns.append(torch.cat([b["returns"][t] for b, t in zip(last_step, tokens, strict=True)]).double())
    per_rank = [explained_variance(v, r) for v, r in zip(values, returns, strict=True)]
    pooled = explained_variance(torch.cat(values), torch.cat(returns))
    assert abs(pooled) > 0.01 and abs(pooled - sum(per_rank) / 2) > 1e-3  # pooling is what this tests
    for record in ranks:
        assert record["metrics"]["critic/explained_variance"] == pytest.approx(pooled, rel=1e-4, abs=1e-5)
