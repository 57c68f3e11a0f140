"""Peak memory of the loss head: log-probs and entropy at the response positions, forward and backward, in chunks of
positions with a written-out gradient (``logprobs.head_logprobs_and_entropy``) versus a naive full ``log_softmax``.

python benchmarks/loss_head_memory.py [--positions 2048] [--chunk 1024]

Only the head is measured: hidden states ``[positions, H]`` (with grad) and an output projection ``H -> V``, then
``logprobs - 0.01 * entropy`` summed and back-propagated, as the loss does. Each variant runs in a fresh process;
its peak is the high-water mark of resident memory minus the resident memory just before the computation (inputs,
weights and their gradient buffers already allocated). The floor of a chunked computation is the float32 logits and
probabilities of one chunk plus the chunk's weight gradient before it is added to ``.grad``: ``(2 x chunk x V + V x H)
x 4`` bytes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from machine import ROOT, describe  # benchmarks/machine.py (the script's directory is on sys.path)

#: (name, hidden size, vocabulary): SmolLM2-135M and Qwen2.5-1.5B's output heads.
HEADS = [("SmolLM2 (49k vocab)", 576, 49152), ("Qwen2.5 (152k vocab)", 1536, 151936)]


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def child(variant: str, hidden_size: int, vocab: int, positions: int, chunk: int) -> dict[str, float]:
    import torch

    from epo_lightning.logprobs import head_logprobs_and_entropy

    torch.manual_seed(0)
    head = torch.nn.Linear(hidden_size, vocab, bias=False)
    hidden = torch.randn(positions, hidden_size, requires_grad=True)
    targets = torch.randint(vocab, (positions,))
    head.weight.grad = torch.zeros_like(head.weight)  # the gradient buffers exist in training anyway
    hidden.grad = torch.zeros_like(hidden)
    before = resident_bytes()
    if variant == "naive":
        logits = head(hidden).float()
        logp = torch.log_softmax(logits, dim=-1)
        logprobs = logp.gather(-1, targets[:, None])[:, 0]
        entropy = -(logp.exp() * logp).sum(-1)
    else:
        logprobs, entropy = head_logprobs_and_entropy(hidden, targets, head, 1.0, chunk)
    (logprobs - 0.01 * entropy).sum().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"extra_GB": (peak - before) / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--positions", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        variant, hidden_size, vocab = args.child[0], int(args.child[1]), int(args.child[2])
        print(json.dumps(child(variant, hidden_size, vocab, args.positions, args.chunk)))
        return
    print(f"command: python benchmarks/loss_head_memory.py --positions {args.positions} --chunk {args.chunk}")
    print(f"machine: {describe()}\n")
    print("| head | chunked, GB | floor, GB | chunked / floor | naive, GB | naive / chunked |")
    print("|---|---|---|---|---|---|")
    for name, hidden_size, vocab in HEADS:
        extra = {}
        for variant in ("chunked", "naive"):
            command = [sys.executable, __file__, "--child", variant, str(hidden_size), str(vocab)]
            command += ["--positions", str(args.positions), "--chunk", str(args.chunk)]
            out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
            extra[variant] = json.loads(out.stdout.strip().splitlines()[-1])["extra_GB"]
        floor = (2 * min(args.chunk, args.positions) * vocab + vocab * hidden_size) * 4 / 1e9
        print(
            f"| {name} | {extra['chunked']:.2f} | {floor:.2f} | {extra['chunked'] / floor:.2f}x | "
            f"{extra['naive']:.2f} | {extra['naive'] / extra['chunked']:.1f}x |"
        )


if __name__ == "__main__":
    main()
