"""How much of one AdamW update survives when the trained weights themselves are bf16 (``bf16-true``), at the paper's
learning rates, against float32 weights (``bf16-mixed``: what the paper configs train).

python benchmarks/bf16_updates.py [--steps 1]

A Qwen2 of 8 layers x 512 (the architecture of the paper's policies, scaled down; weights drawn with Qwen2's
``initializer_range`` 0.02, so of the size a trained model's are) takes ``--steps`` AdamW steps (weight decay 0.01, as
the paper) on a next-token loss, once with bf16 weights and once with float32 weights, from the same start. Reported:
the fraction of weights that the steps changed at all, and the update's size relative to the float32 one
(``||w_after - w_before|| / ||float32 update||``). bf16 keeps 8 bits of mantissa: an update below ~2**-9 of a weight is
rounded away, and one AdamW step at lr 5e-6 moves each weight by about 5e-6.
"""

from __future__ import annotations

import argparse

import torch
from machine import describe  # benchmarks/machine.py (the script's directory is on sys.path)
from transformers import Qwen2Config, Qwen2ForCausalLM

LEARNING_RATES = (1e-6, 3e-6, 5e-6, 1e-5, 1e-4)


def update(dtype: torch.dtype, lr: float, steps: int) -> torch.Tensor:
    """The flattened change of every weight after ``steps`` AdamW steps, computed in float32 from ``dtype`` weights."""
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=4096, hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config).to(dtype)
    before = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(0, config.vocab_size, (4, 128), generator=generator)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return torch.cat([p.detach().float().flatten() for p in model.parameters()]) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()
    print(f"command: python benchmarks/bf16_updates.py --steps {args.steps}")
    print(describe())
    print()
    print("| lr | weights changed, float32 | weights changed, bf16 | bf16 update / float32 update |")
    print("|---|---|---|---|")
    for lr in LEARNING_RATES:
        full, half = update(torch.float32, lr, args.steps), update(torch.bfloat16, lr, args.steps)
        changed = [float((delta != 0).float().mean()) for delta in (full, half)]
        print(f"| {lr:g} | {changed[0]:.3f} | {changed[1]:.3f} | {float(half.norm() / full.norm()):.2f} |")


if __name__ == "__main__":
    main()
