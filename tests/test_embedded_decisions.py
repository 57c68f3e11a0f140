"""``benchmarks/embedded_decisions.py``: exact action probabilities, and what the format prior does at each decision."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import benchmark_script


@pytest.fixture(scope="module")
def script():
    with benchmark_script("embedded_decisions") as module:
        yield module


def test_action_probabilities_are_the_model_s_own_one_row_at_a_time(script, tiny_policy_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datamodules.envs.embedded import EmbeddedTextEnv
    from datamodules.prompts import PromptBuilder
    from epo_lightning.tiny_preset import response_ids

    model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_policy_dir)
    obs, info = EmbeddedTextEnv(difficulty="easy").reset(seed=3, options={"split": "val_iid"})
    actions = info["admissible_actions"]
    prompt = PromptBuilder(history_length=1).render(info["task"], [], obs, actions)
    got = script.action_probabilities(model, tokenizer, prompt, actions, temperature=0.7)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    for action, probability in zip(actions, got, strict=True):
        response = response_ids(tokenizer, action)
        with torch.no_grad():  # no padding, no batching: the plain forward of this one row
            logits = model(input_ids=torch.tensor([prompt_ids + response])).logits[0] / 0.7
        steps = logits[len(prompt_ids) - 1 : -1].log_softmax(-1)
        expected = steps.gather(-1, torch.tensor(response)[:, None]).sum().exp()
        assert probability == pytest.approx(float(expected), rel=1e-4)
    assert len(actions) > 1 and 0.0 < sum(got) <= 1.0


def test_the_format_prior_walks_back_as_often_as_the_uniform_policy(script, tiny_policy_dir):
    result = script.decisions(tiny_policy_dir, tasks=6, temperature=1.0)
    assert result["walk-back turns"] > 5 and result["goal turns"] > 5
    assert result["walk back"] == pytest.approx(result["uniform"], abs=0.1)  # the prior ignores its history
    assert 0.0 < result["valid mass"] <= 1.0  # lower than a quickstart prior's: the test preset fits the easy suite
