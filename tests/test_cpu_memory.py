"""The CPU allocator setting: a process that keeps freed memory stops page-faulting through every rollout."""

import subprocess
import sys

import pytest

from epo_lightning.cpu_memory import keep_freed_memory

#: Train a tiny Llama on micro-batches of 16 rows, then sample batched responses, as an RL step does; print the page
#: faults taken while sampling.
ROLLOUT_AFTER_TRAINING = """
import resource, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
from epo_lightning.cpu_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.manual_seed(0)
torch.set_num_threads(2)
config = LlamaConfig(vocab_size=65, hidden_size=128, intermediate_size=320, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)
model = LlamaForCausalLM(config)
optimizer = torch.optim.AdamW(model.parameters())
faults = 0
for step in range(2):
    for _ in range(4):
        model(input_ids=torch.randint(3, 65, (16, 90))).logits.logsumexp(-1).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with torch.no_grad():
        for _ in range(3):
            prompts = torch.randint(3, 65, (64, 120))
            model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                           max_new_tokens=8, pad_token_id=0)
    faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(faults)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keeping_freed_memory_ends_the_page_faults_of_sampling_after_training():
    faults = {
        mode: int(subprocess.run([sys.executable, "-c", ROLLOUT_AFTER_TRAINING, mode], capture_output=True, text=True,
                                 check=True).stdout.split()[-1])
        for mode in ("default", "keep")
    }  # fmt: skip
    assert faults["keep"] < faults["default"] / 4, faults  # ~130,000 -> ~21,000 here


def test_the_cli_keeps_freed_memory_unless_told_not_to(monkeypatch) -> None:
    import epo_lightning.cli as cli
    from tests.test_cli import FAST

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True) or keep_freed_memory())
    cli.cli_main(FAST, run=False)
    assert calls == [True]
    cli.cli_main([*FAST, "--keep_freed_memory", "false"], run=False)
    assert calls == [True]
