"""Sharding the policy, its reference and the critic with FSDP2 (``torch.distributed.fsdp.fully_shard``).

Lightning's ``ModelParallelStrategy`` creates the device mesh and calls ``EPOModule.configure_model``, which builds the
models and shards them here: every transformer block is its own unit (its parameters are gathered just before it runs
and freed after), and the wrapping module (``ResponseScorer`` or ``ValueModel``) is the root unit holding the
embeddings, final norm and heads. Parameters, gradients and optimizer states are then 1/world per rank.

Generation cannot run sharded: ranks sample responses of different lengths, so they would call the blocks a different
number of times and their parameter all-gathers would pair up wrongly (a hang). ``unsharded`` gathers the whole model
once before a rollout and frees it after, at the memory cost of one full copy of the policy's parameters per rank for
the duration of the rollout (an engine with its own weights, such as vLLM, needs it only while it copies them).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from epo_lightning.lora import base_model, merged_weights


def shard(
    root: nn.Module,
    blocks: Iterable[nn.Module],
    mesh: DeviceMesh,
    frozen: bool = False,
    compute_dtype: torch.dtype | None = None,
) -> None:
    """``fully_shard`` each of ``blocks``, then ``root`` (which holds what the blocks do not), over ``mesh``.

    FSDP2 keeps a root unit gathered after its forward, for the backward that follows. A ``frozen`` model (the
    reference) has no backward: its root frees its embeddings and heads after every forward instead of keeping them
    gathered for the rest of the run. With a ``compute_dtype`` (bf16 under ``trainer.precision: bf16-mixed``) the
    float32 shards are gathered in it and gradients reduced in float32, as the released code's FSDP does: the
    forward, the hidden states and a gathered policy then take half the memory of float32 ones.
    """
    mixed = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    options = {"mp_policy": mixed} if compute_dtype is not None else {}
    for block in blocks:
        fully_shard(block, mesh=mesh, **options)
    fully_shard(root, mesh=mesh, **options, **({"reshard_after_forward": True} if frozen else {}))


@contextmanager
def unsharded(module: nn.Module) -> Iterator[None]:
    """Hold every FSDP2 unit of ``module`` gathered (a no-op for a module that is not sharded).

    The blocks must not reshard after their forward while held (the next decoding step would gather them again, a
    collective the other ranks may not make); the root keeps FSDP's own setting, as its forward is not called. A hold
    inside a hold of the same module does nothing: the outer one gathers and frees.
    """
    if getattr(module, "_held_unsharded", False):  # inside an enclosing hold: nothing to gather, nothing to free
        yield
        return
    units = [unit for unit in module.modules() if isinstance(unit, FSDPModule)]
    blocks = [unit for unit in units if unit is not module]
    for unit in units:
        unit.unshard()
    for block in blocks:
        block.set_reshard_after_forward(False)
    module._held_unsharded = True
    try:
        yield
    finally:
        module._held_unsharded = False
        for block in blocks:
            block.set_reshard_after_forward(True)
        for unit in units:
            unit.reshard()


def is_sharded(module: nn.Module) -> bool:
    """``module`` holds FSDP2 units."""
    return any(isinstance(unit, FSDPModule) for unit in module.modules())


def full_copy(scorer: nn.Module, rank: int) -> nn.Module | None:
    """The language model of ``scorer`` with its full weights on the CPU of rank 0 (None on other ranks).

    Not sharded: ``scorer.lm`` itself. Sharded: every rank must call this. Every rank gathers the model, as for a
    rollout (``unsharded``), and rank 0 copies its weights, LoRA adapters merged in (``merged_weights``), into a fresh
    Hugging Face model of the same architecture on its CPU (the whole model must fit in rank 0's CPU memory).
    """
    if not is_sharded(scorer):
        return scorer.lm
    base = base_model(scorer.lm)
    weights: dict[str, torch.Tensor] = {}
    with unsharded(scorer):  # a collective: every rank takes part
        if rank == 0:
            weights = {name: weight.to("cpu", copy=True) for name, weight in merged_weights(scorer.lm)}
            buffers = dict(base.named_buffers())  # not sharded: the same on every rank
    if rank != 0:
        return None
    with torch.device("meta"):
        copy = type(base)(base.config)
    weights |= {name: buffers[name].to("cpu", copy=True) for name in copy.state_dict() if name not in weights}
    copy.load_state_dict(weights, strict=True, assign=True)
    copy.tie_weights()
    copy.generation_config = base.generation_config
    return copy
