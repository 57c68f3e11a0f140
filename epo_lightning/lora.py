"""LoRA adapters on the policy through PEFT (``model.lora: {r, alpha, dropout, target_modules}``).

Only the adapters train; the base weights stay frozen. The KL reference is the same model with its adapters
disabled (``disable_adapter``), so it costs no second copy of the weights, and checkpoints hold only what trains
(the adapters, the critic and the optimizer state; ``EPOModule.on_save_checkpoint``). A PPO critic is not shared
with the policy: it is a full, trained copy of the backbone, built before the adapters are added.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LoraSettings:
    """A LoRA configuration (PEFT ``LoraConfig``).

    Args:
        r: rank of the adapters.
        alpha: scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapters' input.
        target_modules: module names to adapt, or ``"all-linear"`` (every linear layer but the output head).
        seed: seed of the adapters' random initialization (a run is reproducible from its config).
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(
                f"model.lora needs r >= 1, alpha > 0 and 0 <= dropout < 1; got {self.r}, {self.alpha}, {self.dropout}."
            )

    def apply(self, model: nn.Module) -> nn.Module:
        """``model`` wrapped with fresh adapters (PEFT freezes everything else)."""
        try:
            from peft import LoraConfig, get_peft_model
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError("model.lora needs PEFT: pip install peft (or the extra '.[lora]').") from error
        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        config = LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets, task_type="CAUSAL_LM"
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return get_peft_model(model, config)


def adapters_disabled(model: nn.Module) -> AbstractContextManager:
    """The base model's behaviour while inside (no-op for a model without adapters)."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()


def base_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model under PEFT's wrapper (the model itself without one)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@torch.no_grad()
def merged_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights under Hugging Face names, with any LoRA update merged in: ``W + (alpha / r) B A``.

    This is what an inference engine that knows nothing of adapters must hold (``VLLMEngine.load_weights``). Nothing
    is modified or copied but the merged matrices. Tied weights are listed under each of their names.
    """
    base = base_model(model)
    for name, param in base.named_parameters(remove_duplicate=False):
        if ".lora_" in name:
            continue
        weight = param.detach()
        if ".base_layer." in name:  # a PEFT-wrapped layer: its frozen weight plus the active adapters' update
            layer_name, _, leaf = name.rpartition(".base_layer.")
            layer = base.get_submodule(layer_name)
            if leaf == "weight":
                weight = weight + sum(layer.get_delta_weight(adapter) for adapter in layer.active_adapters)
            name = f"{layer_name}.{leaf}"
        yield name, weight
