"""Save a trained policy as a plain Hugging Face directory: ``epo export --ckpt_path CKPT --out DIR``.

The directory holds the policy's weights, config, generation config and tokenizer (with its chat template), and
loads with ``AutoModelForCausalLM.from_pretrained(DIR)`` / ``AutoTokenizer.from_pretrained(DIR)`` anywhere, without
this package. A sharded checkpoint (a directory written under ``ModelParallelStrategy``) is consolidated first.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from epo_lightning.module import EPOModule
from epo_lightning.policy import save_policy


def export_policy(module: EPOModule, out: str | Path) -> Path:
    """Write ``module``'s trained policy and tokenizer to ``out`` (created) and return it."""
    if module.model is None:
        raise RuntimeError("the module has no policy yet: export after fit, or from a checkpoint (export_checkpoint).")
    out = Path(out)
    save_policy(module.model, module.tokenizer, out)
    return out


def export_checkpoint(ckpt_path: str | Path, out: str | Path) -> Path:
    """Export the policy of a training checkpoint (a ``.ckpt`` file or a sharded checkpoint directory)."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.exists():
        raise FileNotFoundError(f"--ckpt_path {ckpt_path} does not exist.")
    if ckpt_path.is_dir():
        return _export_sharded(ckpt_path, out)
    module = EPOModule.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=False)
    return export_policy(module, out)


def _export_sharded(folder: Path, out: str | Path) -> Path:
    """Consolidate a distributed checkpoint (``ModelParallelStrategy``'s layout) into one file, then export that."""
    from lightning.fabric.utilities.load import _load_distributed_checkpoint

    checkpoint = _load_distributed_checkpoint(folder)  # the full state dict and the run's metadata, on the CPU
    with tempfile.TemporaryDirectory() as scratch:
        single = Path(scratch) / "consolidated.ckpt"
        torch.save(checkpoint, single)
        return export_checkpoint(single, out)


def main(argv: list[str] | None = None) -> None:
    """``epo export --ckpt_path CKPT --out DIR``."""
    parser = argparse.ArgumentParser(prog="epo export", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by `epo fit` (file or directory)")
    parser.add_argument("--out", required=True, help="the Hugging Face directory to write")
    args = parser.parse_args(argv)
    print(f"exported the policy of {args.ckpt_path} to {export_checkpoint(args.ckpt_path, args.out)}")
