"""``HFEngine`` runs a turn's repeated prompts through the model once: the samples and scores of prefilling each."""

from __future__ import annotations

import torch

import epo_lightning.policy as policy_module
from epo_lightning.policy import load_policy, shared_prefix_cache
from epo_lightning.rollout_engine import HFEngine


def _sample(model, tokenizer, prompts):
    torch.manual_seed(3)
    return HFEngine(report_logprobs=True).generate(model, tokenizer, prompts, temperature=1.0, max_new_tokens=6)


def test_repeated_prompts_share_their_prefill_and_sample_what_separate_prefills_would(tiny_policy_dir, monkeypatch):
    model, tokenizer = load_policy(tiny_policy_dir)
    model.eval()
    ids = tokenizer("look around take key go north open door", add_special_tokens=False)["input_ids"]
    a, b, c = ids[:7], ids[2:5], ids[1:8]  # different lengths: left padding in the shared rows
    prompts = [a, b, a, c, b, a, a, c]
    prefix_lengths = []

    def recording(*args):
        cache = shared_prefix_cache(*args)
        prefix_lengths.append(None if cache is None else cache.get_seq_length())
        return cache

    monkeypatch.setattr(policy_module, "shared_prefix_cache", recording)
    shared = _sample(model, tokenizer, prompts)
    assert prefix_lengths == [len(c) - 1]  # one shared prefill: every prompt but its last token, left-padded
    monkeypatch.setattr(policy_module, "shared_prefix_cache", lambda *args: None)
    separate = _sample(model, tokenizer, prompts)

    assert shared.token_ids == separate.token_ids
    assert len(set(map(tuple, shared.token_ids))) > 1
    for mine, theirs in zip(shared.logprobs, separate.logprobs, strict=True):
        torch.testing.assert_close(torch.tensor(mine), torch.tensor(theirs), rtol=0, atol=1e-5)
    for mine, theirs in zip(shared.entropies, separate.entropies, strict=True):
        torch.testing.assert_close(torch.tensor(mine), torch.tensor(theirs), rtol=0, atol=1e-5)


def test_distinct_prompts_and_one_token_prompts_are_prefilled_by_generate_itself(tiny_policy_dir):
    model, tokenizer = load_policy(tiny_policy_dir)
    ids = torch.tensor([[5, 6, 7], [5, 6, 8]])
    assert shared_prefix_cache(model, [[5, 6, 7], [5, 6, 8]], ids, torch.ones_like(ids)) is None
    ids = torch.tensor([[0, 5], [0, 5], [6, 5]])
    mask = torch.tensor([[0, 1], [0, 1], [1, 1]])
    assert shared_prefix_cache(model, [[5], [5], [6, 5]], ids, mask) is None
