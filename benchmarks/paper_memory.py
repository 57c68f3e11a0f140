"""Memory per GPU of each paper config (configs/paper/*.yaml) on 8 x 80 GB, under DDP and under FSDP2.

python benchmarks/paper_memory.py

Arithmetic, not a measurement (these machines have no GPU). The architectures are those of the Qwen2.5 Instruct
checkpoints' config.json, so nothing is downloaded. Counted, in bytes per GPU:

- policy parameters, gradients and AdamW's two states in the weights' precision (``bf16-mixed``: float32 weights,
  4 bytes each, as the released code's FSDP keeps them; ``bf16-true``: 2), activations and the KV cache in the compute
  precision (bf16: 2 bytes). Under DDP, ``bf16-mixed`` is autocast over float32 weights, so the hidden states between
  blocks, which checkpointing keeps, stay float32; FSDP2 gathers the weights in bf16 and computes all in bf16;
- the frozen KL reference (parameters only) when ``kl_coef > 0``;
- the critic (the policy's backbone and a value head, trained: parameters, gradients, AdamW) with ``advantage: gae``;
- training activations of one micro-batch of ``micro_batch_size`` rows of 2048 + 512 tokens, with gradient
  checkpointing of the transformer blocks (the blocks' inputs kept, one block recomputed) and without it, plus the
  chunked vocabulary projection (1024 positions x vocabulary, float32);
- the rollout: the KV cache of the rank's ``tasks_per_step x group_size`` sequences, and under FSDP2 the policy's
  full parameters (in the compute dtype), which every rank gathers for sampling (``epo_lightning.sharding.unsharded``).

Under FSDP2 parameters, gradients and optimizer states are 1/8 per GPU. The peak is the larger of the training phase
and the rollout phase. A config "fits" when its peak stays under 72 GB (10% headroom for the CUDA context, the
allocator's fragmentation and temporary buffers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from machine import describe  # benchmarks/machine.py (the script's directory is on sys.path)

ROOT = Path(__file__).parents[1]
GPUS, GPU_GB, BUDGET_GB = 8, 80, 72
PROMPT, RESPONSE, HEAD_CHUNK = 2048, 512, 1024


@dataclass(frozen=True)
class Arch:
    """A decoder-only transformer's sizes (from its config.json)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool

    def parameters(self, with_head: bool = True) -> int:
        head_dim = self.hidden // self.heads
        kv = self.kv_heads * head_dim
        attention = self.hidden * self.hidden * 2 + self.hidden * kv * 2 + self.hidden + 2 * kv  # q, o, k, v, biases
        block = attention + 3 * self.hidden * self.intermediate + 2 * self.hidden
        embeddings = self.vocab * self.hidden
        head = self.vocab * self.hidden if with_head and not self.tied else 0
        return embeddings + self.layers * block + self.hidden + head


ARCHS = {
    "Qwen/Qwen2.5-3B-Instruct": Arch(2048, 36, 16, 2, 11008, 151936, tied=True),
    "Qwen/Qwen2.5-7B-Instruct": Arch(3584, 28, 28, 4, 18944, 152064, tied=False),
}
#: trainer.precision -> (bytes of a weight, gradient or AdamW state; bytes of an activation or cached key/value)
BYTES = {"bf16-mixed": (4, 2), "bf16-true": (2, 2), "16-true": (2, 2), "32-true": (4, 4)}


def memory(config: dict, sharded: bool, checkpointing: bool) -> dict[str, float]:
    """GB per GPU of each part for one config."""
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    arch, (size, compute) = ARCHS[model["policy"]], BYTES[config["trainer"]["precision"]]
    shards = GPUS if sharded else 1
    policy = arch.parameters()
    critic = arch.parameters(with_head=False) + arch.hidden + 1 if model.get("advantage") == "gae" else 0
    rows, length = data["micro_batch_size"], PROMPT + RESPONSE
    block = rows * length * (10 * arch.hidden + 4 * arch.intermediate) * compute  # one block's forward working set
    stream = compute if sharded else size  # the residual stream: float32 under autocast over float32 weights
    saved = rows * length * arch.hidden * stream * arch.layers if checkpointing else block * arch.layers
    head = HEAD_CHUNK * arch.vocab * 4 * 3
    kv = 2 * arch.layers * arch.kv_heads * (arch.hidden // arch.heads) * length * compute
    rollout_rows = data["tasks_per_step"] * data["group_size"]
    gb = 1e-9
    parts = {
        "params": policy * size / shards * gb,
        "grads": policy * size / shards * gb,
        "adam": 2 * policy * size / shards * gb,
        "reference": (policy * size / shards if model.get("loss", {}).get("kl_coef", 0) > 0 else 0) * gb,
        "critic": 4 * critic * size / shards * gb,
        "activations": (saved + block + head) * (2 if critic else 1) * gb,
        "rollout": (kv * rollout_rows + (policy * compute if sharded else 0)) * gb,  # FSDP2 gathers in compute dtype
    }
    resident = parts["params"] + parts["adam"] + parts["reference"] + parts["critic"] * 3 / 4  # no grads at rollout
    parts["peak"] = max(sum(v for k, v in parts.items() if k != "rollout"), resident + parts["rollout"])
    return parts


def main() -> None:
    print("command: python benchmarks/paper_memory.py")
    print(f"{describe()}; arithmetic for {GPUS} x {GPU_GB} GB GPUs, fits = peak < {BUDGET_GB} GB\n")
    columns = ["params", "grads", "adam", "reference", "critic", "activations", "rollout", "peak"]
    print("GB per GPU with gradient checkpointing; the last column is the peak without it.\n")
    print("| config | strategy | " + " | ".join(columns) + " | fits | peak, no checkpointing |")
    print("|---|---|" + "---|" * (len(columns) + 2))
    for path in sorted(ROOT.joinpath("configs", "paper").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        for sharded in (False, True):
            parts = memory(config, sharded, checkpointing=True)
            cells = " | ".join(f"{parts[c]:.1f}" for c in columns)
            fits = "yes" if parts["peak"] < BUDGET_GB else "no"
            plain = memory(config, sharded, checkpointing=False)["peak"]
            print(f"| {path.stem} | {'FSDP2' if sharded else 'DDP'} | {cells} | {fits} | {plain:.0f} |")


if __name__ == "__main__":
    main()
