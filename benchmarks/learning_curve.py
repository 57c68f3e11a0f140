"""Run the quickstart (or any config) and print its learning curve as a table.

python benchmarks/learning_curve.py [--config configs/quickstart.yaml] [extra epo fit args...]
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time

from epo_lightning.cli import cli_main
from epo_lightning.tensorboard_scalars import read_scalars

TAGS = (
    "val/success_rate",
    "val_ood/success_rate",
    "rollout/success_rate",
    "rollout/valid_action_ratio",
    "entropy/token_mean",
)


def main(argv: list[str]) -> None:
    args = argv if any(a.startswith("--config") for a in argv) else ["--config", "configs/quickstart.yaml", *argv]
    root = tempfile.mkdtemp(prefix="epo_curve_")
    start = time.perf_counter()
    cli_main(["fit", *args, f"--trainer.default_root_dir={root}"])
    seconds = time.perf_counter() - start
    scalars = read_scalars(root)
    print(f"\ncommand: epo fit {' '.join(args)}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{__import__('torch').get_num_threads()}; wall time {seconds:.0f} s\n"
    )
    for tag in TAGS:
        points = scalars.get(tag, [])
        print(f"| {tag} | " + " ".join(f"{v:.2f}" for _, v in points) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
