"""Two-rank FSDP2 (``ModelParallelStrategy`` over gloo on CPU): trains like DDP, in bf16-mixed too, resumes;
and, under both strategies, ranks whose rollouts end at different turns."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from epo_lightning.export import export_checkpoint
from tests.distributed.launch import torchrun


@pytest.fixture(scope="module")
def fsdp_run(ddp_run, tmp_path_factory) -> list[dict]:
    _, cache = ddp_run  # the tiny policy the DDP run built
    return torchrun(tmp_path_factory.mktemp("fsdp") / "out", cache, "--steps", "2", "--strategy", "fsdp")


def test_sharded_fit_matches_ddp(fsdp_run, ddp_run):
    (fsdp0, fsdp1), ((ddp0, _), _) = fsdp_run, ddp_run
    for step in range(2):
        for name, value in ddp0["params"][step].items():
            assert torch.equal(fsdp0["params"][step][name], fsdp1["params"][step][name])  # gathered: one model
            torch.testing.assert_close(fsdp0["params"][step][name], value, rtol=1e-5, atol=1e-6)
    assert [c["rows"] for c in fsdp0["counts"]] == [c["rows"] for c in ddp0["counts"][:2]]  # same rollouts
    # the reference scored every step and was freed after: before, its root stayed gathered (no backward frees it)
    assert fsdp0["reference_sharded"] == fsdp1["reference_sharded"] == [True, True]
    # HFEngine samples with the policy itself: gathered once per collection, every call saw full weights
    assert fsdp0["sampled_sharded"] and set(fsdp0["sampled_sharded"]) == set(fsdp1["sampled_sharded"]) == {False}
    assert fsdp0["history"] == pytest.approx(ddp0["history"][:2], rel=1e-5)
    assert fsdp0["metrics"]["val/success_rate"] == pytest.approx(
        float(torch.cat([v["success"] for r in fsdp_run for v in r["val"] if v["split"] == "val_iid"]).mean())
    )


def test_bf16_mixed_trains_float32_weights_sharded(fsdp_run, ddp_run, tmp_path):
    """The paper configs' precision under FSDP2: float32 master weights that train, bf16 compute, ranks one model."""
    _, cache = ddp_run
    first, second = torchrun(tmp_path / "out", cache, "--steps", "2", "--strategy", "fsdp", "--precision", "bf16-mixed")
    # FSDP2 gathers the float32 shards in bf16 (as the released code's FSDP): the policy sampled in bf16
    assert first["sampled_dtypes"] == second["sampled_dtypes"] == {torch.bfloat16}
    for step in range(2):
        for name, value in first["params"][step].items():
            assert value.dtype == torch.float32 and torch.equal(value, second["params"][step][name]), name
    moved = [not torch.equal(first["initial"][n], v) for n, v in first["params"][-1].items()]
    assert all(moved)  # every weight took the updates
    # bf16 compute, not float32: close to the float32 run, not equal to it
    gaps = [float((v - fsdp_run[0]["params"][-1][n]).abs().max()) for n, v in first["params"][-1].items()]
    assert 0 < max(gaps) < 0.05, max(gaps)  # 2.1e-3 after two SGD steps at lr 0.05


def test_stopped_sharded_run_resumes_exactly(fsdp_run, ddp_run, tmp_path):
    _, cache = ddp_run
    checkpoint, exported = tmp_path / "step1.ckpt", tmp_path / "policy"
    first, _ = torchrun(
        tmp_path / "first", cache, "--steps", "1", "--strategy", "fsdp", "--save_checkpoint", str(checkpoint),
        "--export", str(exported),
    )  # fmt: skip
    assert checkpoint.is_dir() and len(list(checkpoint.glob("*.distcp"))) == 2  # one shard file per rank
    # the trained policy leaves as a plain Hugging Face directory: from the run (ExportPolicy) and from the checkpoint
    for directory in (exported, export_checkpoint(checkpoint, tmp_path / "from_checkpoint")):
        weights = AutoModelForCausalLM.from_pretrained(directory).state_dict()
        for name, value in first["params"][-1].items():
            assert torch.equal(weights[name], value), name
    resumed, _ = torchrun(
        tmp_path / "resumed", cache, "--steps", "2", "--strategy", "fsdp", "--ckpt_path", str(checkpoint)
    )
    assert resumed["history"] == fsdp_run[0]["history"]
    for name, value in fsdp_run[0]["params"][1].items():
        assert torch.equal(resumed["params"][-1][name], value), name


def test_a_sharded_checkpoint_killed_while_saving_leaves_the_previous_one_whole(fsdp_run, ddp_run, tmp_path):
    _, cache = ddp_run
    checkpoints = tmp_path / "checkpoints"
    common = ("--strategy", "fsdp", "--checkpoint_dir", str(checkpoints))
    # a step's saves: the top-1 checkpoint, then last.ckpt; the job dies in step 1's last.ckpt, after the shards
    torchrun(tmp_path / "killed", cache, "--steps", "2", *common, "--break_save", "4", fails=True)
    assert (checkpoints / "last.ckpt.partial").is_dir()
    # before: step 1's shards were written over step 0's in place, with step 0's meta.pt, so the resumed run
    # trained step 1 again on weights that had already learned from it
    resumed, _ = torchrun(
        tmp_path / "resumed", cache, "--steps", "2", *common, "--ckpt_path", str(checkpoints / "last.ckpt")
    )
    assert resumed["history"] == fsdp_run[0]["history"]
    for name, value in fsdp_run[0]["params"][1].items():
        assert torch.equal(resumed["params"][-1][name], value), name
    assert not (checkpoints / "last.ckpt.partial").exists()  # the next save cleared it


def test_a_sharded_lora_policy_exports_with_its_adapters_merged(ddp_run, tmp_path):
    _, cache = ddp_run
    checkpoint, exported = tmp_path / "step1.ckpt", tmp_path / "policy"
    first, second = torchrun(
        tmp_path / "lora", cache, "--steps", "1", "--strategy", "fsdp", "--lora", "--save_checkpoint", str(checkpoint),
        "--export", str(exported),
    )  # fmt: skip
    trained = first["params"][-1]  # PEFT's names: base_model.model.<HF name>, with .base_layer. where adapted
    for name, value in trained.items():
        assert torch.equal(second["params"][-1][name], value), name
    assert all(torch.count_nonzero(trained[name]) > 0 for name in trained if ".lora_B." in name)  # trained from 0
    expected = {}  # merged by hand: W + (alpha / r) B A
    for name, value in trained.items():
        if ".lora_" in name:
            continue
        layer, _, leaf = name.rpartition(".base_layer.")
        if layer and leaf == "weight":
            value = value + 2.0 * trained[f"{layer}.lora_B.default.weight"] @ trained[f"{layer}.lora_A.default.weight"]
        expected[name.removeprefix("base_model.model.").replace(".base_layer.", ".")] = value
    assert any(".base_layer." in name for name in trained)
    # before: ExportPolicy rebuilt PEFT's wrapper from a config (a TypeError on rank 0, rank 1 left in the barrier)
    for directory in (exported, export_checkpoint(checkpoint, tmp_path / "from_checkpoint")):
        weights = AutoModelForCausalLM.from_pretrained(directory).state_dict()
        for name, value in expected.items():
            torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_ppo_with_a_critic_trains_the_same_sharded_and_replicated(ddp_run, tmp_path):
    _, cache = ddp_run
    runs = {
        strategy: torchrun(tmp_path / strategy, cache, "--steps", "1", "--strategy", strategy, "--advantage", "gae")[0]
        for strategy in ("ddp", "fsdp")
    }
    for name, value in runs["ddp"]["params"][0].items():
        torch.testing.assert_close(runs["fsdp"]["params"][0][name], value, rtol=1e-5, atol=1e-6)
    for key in ("critic/value_loss", "grad_norm/critic", "grad_norm/policy"):
        assert runs["fsdp"]["metrics"][key] == pytest.approx(runs["ddp"]["metrics"][key], rel=1e-4), key


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_ranks_whose_rollouts_take_different_numbers_of_turns_train_in_step(ddp_run, tmp_path, strategy):
    """No collective may run inside a rollout: a rank whose episodes all ended stops sampling before the other."""
    _, cache = ddp_run
    rank0, rank1 = torchrun(
        tmp_path / "out", cache, "--steps", "2", "--strategy", strategy, "--short_rank1", "--val_tasks", "1"
    )
    # rank 0 played all 6 turns (some episodes ran out of them), rank 1 at most 5: its 2 episodes took <= 6 turns
    assert rank0["counts"][0]["truncated"] > 0 and rank1["counts"][0]["turns"] <= 6
    # and evaluated no task (1 per split): its empty splits still join the metrics' sync (before: the validation hung)
    assert [len(v["success"]) for v in rank1["val"]] == [0, 0]
    for split, prefix in (("val_iid", "val"), ("val_ood", "val_ood")):
        (played,) = [v["success"] for v in rank0["val"] if v["split"] == split]
        assert rank0["metrics"][f"{prefix}/success_rate"] == float(played[0])
    for step in range(2):  # before (FSDP2): the policy was gathered at every turn, and rank 1's gloo aborted
        for name, value in rank0["params"][step].items():
            assert torch.equal(value, rank1["params"][step][name]), (step, name)
    assert any(not torch.equal(v, rank0["initial"][k]) for k, v in rank0["params"][-1].items())
