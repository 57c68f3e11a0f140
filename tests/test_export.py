"""A trained policy leaves the framework: checkpoints reload, and exports load with plain transformers."""

from __future__ import annotations

import subprocess
import sys

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForCausalLM, AutoTokenizer

from callbacks import ExportPolicy
from datamodules.rollout_datamodule import RolloutDataModule
from epo_lightning.module import EPOModule
from tests.conftest import EASY_DATA, TEST_PRESET, make_trainer


def _fit(tmp_path, cache_dir, **kwargs):
    module = EPOModule(tiny=TEST_PRESET, cache_dir=str(cache_dir), loss={"kl_coef": 0.01}, **kwargs)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    export = ExportPolicy(str(tmp_path / "exported"))
    trainer = make_trainer(
        tmp_path, max_epochs=1, limit_val_batches=0, enable_checkpointing=True, callbacks=[checkpoint, export]
    )
    trainer.fit(module, datamodule=RolloutDataModule(**EASY_DATA))
    return module, tmp_path / "ckpt" / "last.ckpt", export.exported


def _greedy(model, tokenizer, text):
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    return model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)[0].tolist()


def test_checkpoint_reloads_without_a_trainer_and_leaves_out_the_frozen_reference(cache_dir, tiny_policy_dir, tmp_path):
    module, ckpt, _ = _fit(tmp_path, cache_dir)
    state = torch.load(ckpt, weights_only=False, map_location="cpu")
    assert not any(key.startswith("reference.") for key in state["state_dict"])  # rebuilt from the initial policy
    policy_bytes = sum(v.numel() * v.element_size() for k, v in state["state_dict"].items() if k.startswith("actor."))
    assert ckpt.stat().st_size < 3.3 * policy_bytes  # trained weights + AdamW's two states, not a third copy
    reloaded = EPOModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False)
    for (name, value), loaded in zip(
        module.model.state_dict().items(), reloaded.model.state_dict().values(), strict=True
    ):
        assert torch.equal(value, loaded), name
    initial = EPOModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False).reference.lm
    assert any(not torch.equal(a, b) for a, b in zip(initial.parameters(), reloaded.model.parameters(), strict=True))


def test_exported_policy_loads_with_transformers_and_generates_like_the_trained_one(
    cache_dir, tiny_policy_dir, tmp_path
):
    module, ckpt, exported = _fit(tmp_path, cache_dir)
    model = AutoModelForCausalLM.from_pretrained(exported).eval()
    tokenizer = AutoTokenizer.from_pretrained(exported)
    for name, value in module.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    prompt = "goal : open the box .\nnow : you see a box .\nactions : open box ; look .\n"
    assert _greedy(model, tokenizer, prompt) == _greedy(module.model.eval(), module.tokenizer, prompt)

    out = tmp_path / "from_checkpoint"
    done = subprocess.run(
        [sys.executable, "-c", "from epo_lightning.cli import main; main()", "export", "--ckpt_path", str(ckpt),
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    from_checkpoint = AutoModelForCausalLM.from_pretrained(out)
    for name, value in model.state_dict().items():
        assert torch.equal(from_checkpoint.state_dict()[name], value), name
