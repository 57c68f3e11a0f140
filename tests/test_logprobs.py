"""Chunked response log-probs and entropy against a naive full-logits implementation on a tiny random Llama."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

import epo_lightning.logprobs as logprobs_module
from epo_lightning.logprobs import ResponseScorer, response_logprobs_and_entropy
from epo_lightning.policy import enable_gradient_checkpointing

VOCAB, PAD = 50, 0


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def gpt2() -> GPT2LMHeadModel:
    """Learned absolute positions: unlike RoPE, a wrong position id for left padding changes its outputs."""
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
    )
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(params=["llama", "gpt2"])
def any_model(request) -> PreTrainedModel:
    return request.getfixturevalue("model" if request.param == "llama" else "gpt2")


@pytest.fixture()
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three rows of width 10: left padded, unpadded, left and right padded. ``(input_ids, attention, response)``."""
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, VOCAB, (3, 10), generator=gen)
    attention = torch.ones(3, 10, dtype=torch.long)
    response = torch.zeros(3, 10, dtype=torch.long)
    attention[0, :3] = 0  # 3 pads, prompt 4, response 3
    response[0, 7:] = 1
    response[1, 5:] = 1  # prompt 5, response 5
    attention[2, :2] = 0  # 2 pads, prompt 3, response 3, 2 right pads
    attention[2, 8:] = 0
    response[2, 5:8] = 1
    input_ids[attention == 0] = PAD
    return input_ids, attention, response


def naive(model, input_ids, attention, response, temperature):
    position_ids = (attention.cumsum(-1) - 1).clamp_min(0)
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids).logits.float()
    log_probs = torch.log_softmax(logits / temperature, dim=-1)
    logp, entropy = torch.zeros(input_ids.shape), torch.zeros(input_ids.shape)
    for b in range(input_ids.shape[0]):
        for t in range(input_ids.shape[1]):
            if response[b, t]:
                logp[b, t] = log_probs[b, t - 1, input_ids[b, t]]
                entropy[b, t] = -(log_probs[b, t - 1].exp() * log_probs[b, t - 1]).sum()
    return logp, entropy


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_size", [3, 1024])
def test_matches_naive_full_logits(model, batch, temperature, chunk_size):
    with torch.no_grad():
        logp, entropy = response_logprobs_and_entropy(model, *batch, temperature=temperature, chunk_size=chunk_size)
        ref_logp, ref_entropy = naive(model, *batch, temperature)
    assert logp.dtype == entropy.dtype == torch.float32 and logp.shape == batch[0].shape
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, ref_entropy, atol=1e-5, rtol=1e-5)
    response = batch[2].bool()
    assert (logp[~response] == 0).all() and (entropy[~response] == 0).all()
    assert (logp[response] < 0).all() and (entropy[response] > 0).all()
    assert (entropy[response] <= math.log(VOCAB) + 1e-5).all()


def test_temperature_changes_the_distribution(model, batch):
    with torch.no_grad():
        hot = response_logprobs_and_entropy(model, *batch, temperature=2.0)[1]
        cold = response_logprobs_and_entropy(model, *batch, temperature=0.5)[1]
    response = batch[2].bool()
    assert (hot[response] > cold[response]).all()


def test_position_ids_follow_left_padding(any_model):
    """A left-padded row scores exactly like the same row without padding (as ``generate`` samples it)."""
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, VOCAB, (1, 6), generator=gen)
    response = torch.tensor([[0, 0, 0, 1, 1, 1]])
    padded_ids = torch.cat([torch.full((1, 4), PAD), ids], dim=1)
    padded_attention = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 6, dtype=torch.long)], dim=1)
    padded_response = torch.cat([torch.zeros(1, 4, dtype=torch.long), response], dim=1)
    with torch.no_grad():
        plain = response_logprobs_and_entropy(any_model, ids, torch.ones_like(ids), response)
        padded = response_logprobs_and_entropy(any_model, padded_ids, padded_attention, padded_response)
    torch.testing.assert_close(padded[0][:, 4:], plain[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded[1][:, 4:], plain[1], atol=1e-5, rtol=1e-5)


def test_matches_generate_scores(any_model, batch):
    """Greedy ``generate`` on a left-padded batch: its step logits give the same log-probs as the training forward."""
    prompt_ids, prompt_attention = batch[0][:2, :5].clone(), batch[1][:2, :5].clone()
    with torch.no_grad():
        out = any_model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_attention,
            max_new_tokens=4,
            min_new_tokens=4,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=PAD,
        )
        generated = out.sequences
        attention = torch.cat([prompt_attention, torch.ones(2, 4, dtype=torch.long)], dim=1)
        response = torch.zeros_like(generated)
        response[:, 5:] = 1
        logp, _ = response_logprobs_and_entropy(any_model, generated, attention, response)
    step_logp = torch.stack([torch.log_softmax(s.float(), -1) for s in out.logits], dim=1)  # [2, 4, V]
    expected = step_logp.gather(-1, generated[:, 5:, None]).squeeze(-1)
    torch.testing.assert_close(logp[:, 5:], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", ["linear", "biased"])
def test_gradients_match_naive_by_written_out_gradient_or_checkpointed_chunks(model, batch, monkeypatch, head):
    """A bias-free linear head takes the written-out gradient; any other head autograd through checkpointed chunks."""
    if head == "biased":
        model = copy.deepcopy(model)
        biased = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
        with torch.no_grad():
            biased.weight.copy_(model.lm_head.weight)
            biased.bias.normal_()
        model.lm_head = biased
    calls = []

    def counting_checkpoint(*args, **kwargs):
        calls.append(kwargs)
        return torch.utils.checkpoint.checkpoint(*args, **kwargs)

    monkeypatch.setattr(logprobs_module, "checkpoint", counting_checkpoint)
    gen = torch.Generator().manual_seed(3)
    w_logp, w_entropy = torch.randn(3, 10, generator=gen), torch.randn(3, 10, generator=gen)
    grads = []
    for compute in (
        lambda: response_logprobs_and_entropy(model, *batch, temperature=0.8, chunk_size=3),
        lambda: naive(model, *batch, 0.8),
    ):
        model.zero_grad()
        logp, entropy = compute()
        ((logp * w_logp).sum() + (entropy * w_entropy).sum()).backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    expected_calls = math.ceil(11 / 3) if head == "biased" else 0  # 11 response tokens, chunks of 3
    assert len(calls) == expected_calls and all(call == {"use_reentrant": False} for call in calls)
    for name, grad in grads[0].items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, grads[1][name], atol=1e-5, rtol=1e-4, msg=name)
    model.zero_grad()


def test_no_checkpoint_without_grad(model, batch, monkeypatch):
    monkeypatch.setattr(logprobs_module, "checkpoint", lambda *a, **k: pytest.fail("checkpoint under no_grad"))
    with torch.no_grad():
        response_logprobs_and_entropy(model, *batch, chunk_size=3)


def test_empty_response_mask_gives_zeros(model, batch):
    input_ids, attention, response = batch
    logp, entropy = response_logprobs_and_entropy(model, input_ids, attention, torch.zeros_like(response))
    assert logp.shape == entropy.shape == input_ids.shape
    assert (logp == 0).all() and (entropy == 0).all()


def test_argument_errors(model, batch):
    input_ids, attention, response = batch
    with pytest.raises(ValueError, match="temperature"):
        response_logprobs_and_entropy(model, input_ids, attention, response, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        response_logprobs_and_entropy(model, input_ids, attention, response, chunk_size=0)
    bad = response.clone()
    bad[1, 0] = 1
    with pytest.raises(ValueError, match="position 0"):
        response_logprobs_and_entropy(model, input_ids, attention, bad)


def test_a_micro_batch_without_response_tokens_still_gives_every_parameter_a_zero_gradient(model, batch):
    input_ids, attention, response = batch
    model.zero_grad(set_to_none=True)
    logp, entropy = response_logprobs_and_entropy(model, input_ids, attention, torch.zeros_like(response))
    (logp.sum() + entropy.sum()).backward()  # what DDP needs: every rank reduces the same parameters
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() == 0, name
    model.zero_grad(set_to_none=True)


def test_gradient_checkpointing_of_the_blocks_gives_the_same_gradients(model, batch):
    checkpointed = copy.deepcopy(model).train()
    enable_gradient_checkpointing(checkpointed)
    assert checkpointed.is_gradient_checkpointing
    grads, block_calls = [], []
    for candidate in (copy.deepcopy(model).train(), checkpointed):
        calls = []
        candidate.get_decoder().layers[0].self_attn.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        logp, entropy = ResponseScorer(candidate)(*batch, temperature=1.0, chunk_size=4)
        (logp.sum() - 0.1 * entropy.sum()).backward()
        grads.append({name: p.grad for name, p in candidate.named_parameters()})
        block_calls.append(len(calls))
    assert block_calls == [1, 2]  # the checkpointed block is recomputed in the backward
    for name, grad in grads[0].items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_the_written_out_gradient_under_bf16_autocast_spans_chunks_wherever_backward_runs(model, batch):
    """Lightning's bf16-mixed over float32 weights: the weight gradient of several chunks sums in the dtype of the
    autocast product, and a backward run after leaving autocast recomputes the logits as the forward computed them."""
    grads = {}
    for name, chunk_size, backward_inside in (("one chunk", 1024, True), ("chunks", 3, True), ("outside", 3, False)):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logp, entropy = response_logprobs_and_entropy(model, *batch, chunk_size=chunk_size)  # 11 tokens: 4 chunks
            loss = logp.sum() + 0.1 * entropy.sum()
            if backward_inside:
                loss.backward()
        if not backward_inside:
            loss.backward()
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for name, grad in grads["chunks"].items():
        assert grad.dtype == torch.float32 and grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, grads["one chunk"][name], rtol=2e-2, atol=2e-3, msg=name)  # bf16 sums
        torch.testing.assert_close(grads["outside"][name], grad, rtol=0, atol=0, msg=name)  # the same computation
