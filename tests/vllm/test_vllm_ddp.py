"""VLLMEngine on two gloo ranks (``torchrun``), DDP and FSDP2: each rank samples with its own engine, synced."""

from __future__ import annotations

import pytest
import torch

from tests.distributed.launch import torchrun

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_each_rank_samples_the_trained_weights_with_its_own_engine(tmp_path, strategy):
    """From a policy loaded by hub id (before, FSDP2 saved its copy for the engine from resharded DTensors)."""
    args = ("--steps", "2", "--engine", "vllm", "--strategy", strategy, "--hub_like_source")
    records = torchrun(tmp_path / "out", tmp_path / "cache", *args)
    for record in records:
        # FSDP2: the policy stays sharded while the engine samples (before, a full copy was held beside the engine's)
        assert record["sampled_sharded"] and set(record["sampled_sharded"]) == {strategy == "fsdp"}
        metrics = record["metrics"]
        # step 1's rollout came after step 0's updates: the engines were given the new weights
        assert metrics["rollout/logprob_gap_max"] < 1e-4
        assert [counts["rows"] for counts in record["counts"]] and all(c["env_errors"] == 0 for c in record["counts"])
    first, second = records
    assert [first["engine_local_rank"], second["engine_local_rank"]] == [0, 1]  # on GPUs: cuda:0 and cuda:1
    assert first["counts"][0]["episodes"] == 16 and second["counts"][0]["episodes"] == 2  # the uneven split
    for step in range(2):  # the ranks' (full) policies stayed identical, and they trained
        for name, value in first["params"][step].items():
            assert torch.equal(value, second["params"][step][name]), name
    changed = [not torch.equal(first["initial"][n], v) for n, v in first["params"][-1].items()]
    assert any(changed)
