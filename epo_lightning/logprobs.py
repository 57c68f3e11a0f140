"""Response-token log-probs and full-vocabulary entropy from a Hugging Face causal LM, chunked over the vocabulary.

The entropy is the H_{j,t,i} of paper Eq. 2: ``-sum_v p(v | w_<i) log p(v | w_<i)`` over the
whole vocabulary, of the same temperature-scaled distribution the rollout sampled from (verl divides the logits by
the rollout temperature before ``entropy_from_logits``). Only the positions that predict response tokens are
projected onto the vocabulary, ``chunk_size`` rows at a time, and the backward recomputes each chunk's logits (for a
plain linear head with its gradient written out, in two ``[chunk_size, V]`` buffers and one ``[V, H]`` weight
gradient): a 150k vocabulary never materializes a float32 ``[B, T, V]`` tensor, in the forward or in the saved
activations (docs/results/loss_head_memory.md).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def _chunk_logprob_entropy(
    hidden: Tensor, targets: Tensor, head: nn.Module, temperature: float
) -> tuple[Tensor, Tensor]:
    """Log-prob of ``targets`` and entropy for ``[N, H]`` hidden states: ``lse - logit`` and ``lse - E_p[logit]``."""
    logprobs, entropy, _ = logprob_entropy_lse(head(hidden).float() / temperature, targets)
    return logprobs, entropy


def logprob_entropy_lse(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Log-prob of ``targets``, entropy and log-sum-exp of ``[N, V]`` (temperature-scaled) logits.

    Without autograd recording, ``p * z`` is formed in the softmax's buffer: two ``[N, V]`` tensors at once, not three.
    """
    lse = torch.logsumexp(logits, dim=-1)
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    probs = torch.softmax(logits, dim=-1)
    weighted = probs * logits if torch.is_grad_enabled() else probs.mul_(logits)  # softmax's backward reads probs
    entropy = lse - weighted.sum(dim=-1)
    return logprobs, entropy, lse


class _LinearLogprobEntropy(torch.autograd.Function):
    """``_chunk_logprob_entropy`` of a bias-free linear head, ``chunk_size`` positions at a time, gradient written out.

    Autograd through the chunk (even recomputed under checkpointing) keeps the logits, the softmax, the log-sum-exp
    input and a gradient for each of its three uses, about six ``[N, V]`` float32 tensors at once. Here the backward
    recomputes each chunk's logits ``z`` and forms ``dL/dz`` in two buffers: with ``p = softmax(z)``,
    ``log p = z - lse`` and ``H = -sum p log p``,

        d log p_t / dz = onehot(t) - p,        dH / dz = -p * (log p + H),

    then ``dL/dh = dL/dz @ W / T`` and ``dL/dW = (dL/dz)^T h / T``. One function spans every chunk so that ``dL/dW``
    is summed in one ``[V, H]`` buffer: with a function per chunk, autograd held each chunk's ``[V, H]`` gradient
    until all of them were there (3.16 GB instead of 2.18 for a 152k vocabulary, docs/results/loss_head_memory.md).
    """

    @staticmethod
    def forward(
        ctx, hidden: Tensor, targets: Tensor, weight: Tensor, temperature: float, chunk_size: int
    ) -> tuple[Tensor, Tensor]:
        pieces = [
            logprob_entropy_lse(_logits(hidden[rows], weight, temperature), targets[rows])
            for rows in _chunks(len(targets), chunk_size)
        ]
        logprobs, entropy, lse = (torch.cat(parts) for parts in zip(*pieces, strict=True))
        ctx.save_for_backward(hidden, targets, weight, lse, entropy)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        device = hidden.device.type  # the backward recomputes the logits as this forward computed them
        ctx.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        return logprobs, entropy

    @staticmethod
    def backward(
        ctx, grad_logprobs: Tensor, grad_entropy: Tensor
    ) -> tuple[Tensor | None, None, Tensor | None, None, None]:
        device, dtype, enabled = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            return _LinearLogprobEntropy._backward(ctx, grad_logprobs, grad_entropy)

    @staticmethod
    def _backward(
        ctx, grad_logprobs: Tensor, grad_entropy: Tensor
    ) -> tuple[Tensor | None, None, Tensor | None, None, None]:
        hidden, targets, weight, lse, entropy = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = None
        for rows in _chunks(len(targets), ctx.chunk_size):
            log_p = _logits(hidden[rows], weight, ctx.temperature).sub_(lse[rows].unsqueeze(-1))  # buffer 1: log p
            p = log_p.exp()  # buffer 2
            grad = log_p.add_(entropy[rows].unsqueeze(-1)).mul_(p).mul_(-grad_entropy[rows].unsqueeze(-1))  # dH part
            grad.sub_(p.mul_(grad_logprobs[rows].unsqueeze(-1)))  # - g_lp * p
            grad.scatter_add_(-1, targets[rows].unsqueeze(-1), grad_logprobs[rows].unsqueeze(-1))  # + g_lp * onehot(t)
            del p
            grad = grad.div_(ctx.temperature).to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[rows] = grad @ weight
            if ctx.needs_input_grad[2]:
                if grad_weight is None:  # in the dtype autocast gives the product, as autograd's own would be
                    grad_weight = grad.transpose(0, 1) @ hidden[rows].to(weight.dtype)
                else:  # in place: autocast leaves it alone, so the operands take the first product's dtype
                    grad_weight.addmm_(grad.transpose(0, 1).to(grad_weight.dtype), hidden[rows].to(grad_weight.dtype))
            del log_p, grad  # before the next chunk's two buffers
        return grad_hidden, None, grad_weight, None, None


def _chunks(n: int, chunk_size: int) -> list[slice]:
    """Consecutive slices of ``chunk_size`` positions (the last one shorter) covering ``n``."""
    return [slice(start, start + chunk_size) for start in range(0, n, chunk_size)]


def _logits(hidden: Tensor, weight: Tensor, temperature: float) -> Tensor:
    logits = (hidden @ weight.transpose(0, 1)).float()
    return logits.div_(temperature) if temperature != 1.0 else logits


def response_logprobs_and_entropy(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_mask: Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Per-token log-prob of each response token and the entropy of the distribution it was sampled from.

    ``logprobs[b, t] = log softmax(logits(input_ids[b, :t]) / temperature)[input_ids[b, t]]`` and ``entropy[b, t]``
    is the entropy of that same distribution, for every ``t`` with ``response_mask[b, t] == 1``.

    The backbone (``model.get_decoder()``) runs once over the whole batch, with position ids that follow the
    attention mask (``cumsum(attention_mask) - 1``, 0 on padding), exactly as ``generate`` builds them, so left-
    (and right-) padded rows are scored as they were sampled. Then only the hidden states at ``t - 1`` of the
    response positions ``t`` go through the output embedding (``model.get_output_embeddings()``), in chunks of
    ``chunk_size`` rows, cast to float32; the backward recomputes each chunk's ``[chunk_size, V]`` logits instead of
    storing them (``head_logprobs_and_entropy``). Assumes the model's logits are plain ``lm_head(hidden)`` (no
    soft-capping or logit scaling, as in Llama, Qwen2 and SmolLM).

    Args:
        model: a Hugging Face causal LM (e.g. ``LlamaForCausalLM``), possibly PEFT-wrapped.
        input_ids: ``[B, T]`` prompt and response ids.
        attention_mask: ``[B, T]`` 1 on real tokens.
        response_mask: ``[B, T]`` 1 on the response tokens to score; must be 0 at position 0 (no prefix).
        temperature: the sampling temperature (logits are divided by it).
        chunk_size: response positions per vocabulary projection.

    Returns:
        ``(logprobs, entropy)``, each ``[B, T]`` float32, 0 where ``response_mask == 0``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (logits are divided by it), got {temperature}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    response = response_mask.bool()
    if response[:, 0].any():
        raise ValueError("response_mask is 1 at position 0: a response token needs at least one token before it.")
    position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    hidden = model.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    rows, cols = response.nonzero(as_tuple=True)
    predicting = hidden[rows, cols - 1]
    targets = input_ids[rows, cols]
    head = model.get_output_embeddings()
    shape = input_ids.shape
    logprobs = torch.zeros(shape, dtype=torch.float32, device=input_ids.device)
    entropy = torch.zeros(shape, dtype=torch.float32, device=input_ids.device)
    if targets.numel():
        scored, spread = head_logprobs_and_entropy(predicting, targets, head, temperature, chunk_size)
        logprobs = logprobs.index_put((rows, cols), scored)
        entropy = entropy.index_put((rows, cols), spread)
    elif torch.is_grad_enabled():
        logprobs = keep_in_graph(logprobs, head, hidden)
    return logprobs, entropy


def head_logprobs_and_entropy(
    hidden: Tensor, targets: Tensor, head: nn.Module, temperature: float, chunk_size: int
) -> tuple[Tensor, Tensor]:
    """Log-probs of ``targets`` ``[N]`` and entropies ``[N]`` of hidden states ``[N, H]``, ``chunk_size`` at a time.

    A bias-free ``nn.Linear`` head (Llama, Qwen2, SmolLM, GPT-2) takes ``_LinearLogprobEntropy``, whose backward
    holds two ``[chunk_size, V]`` buffers; any other head goes through autograd, each chunk checkpointed when grad is
    enabled.
    """
    if isinstance(head, nn.Linear) and head.bias is None and type(head.weight) is nn.Parameter:
        return _LinearLogprobEntropy.apply(hidden, targets, head.weight, temperature, chunk_size)
    pieces = []
    for rows in _chunks(targets.numel(), chunk_size):
        chunk = (hidden[rows], targets[rows], head, temperature)
        if torch.is_grad_enabled():
            pieces.append(checkpoint(_chunk_logprob_entropy, *chunk, use_reentrant=False))
        else:
            pieces.append(_chunk_logprob_entropy(*chunk))
    return torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces])


def keep_in_graph(output: Tensor, head: nn.Module, hidden: Tensor) -> Tensor:
    """``output`` plus an exact zero that depends on every parameter of the backbone and of ``head``.

    A micro-batch without response tokens (the padding micro-batch of a rank with few rows) would otherwise leave
    the output head out of the autograd graph, and DDP's gradient all-reduce would then wait for a gradient that
    this rank never produces. The zero gives every parameter a (zero) gradient, so every rank reduces the same ones.
    """
    return output + 0.0 * head(hidden[:1, :1]).float().sum()


class ResponseScorer(nn.Module):
    """A causal LM whose ``forward`` is ``response_logprobs_and_entropy``: the module that training calls.

    Scoring runs the backbone and the output head separately (only response positions are projected), so it cannot go
    through the language model's own ``forward``. Wrapping it in one module keeps it a single forward call, which is
    what DDP and FSDP2 hook: under ``fully_shard`` this wrapper is the root unit that gathers the embeddings, final
    norm and output head, and reduces their gradients.

    Args:
        lm: a Hugging Face causal LM (``get_decoder()`` and ``get_output_embeddings()``), kept as ``self.lm``.
    """

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor, temperature: float, chunk_size: int
    ) -> tuple[Tensor, Tensor]:
        """``(logprobs, entropy)`` ``[B, T]`` at the response positions (see ``response_logprobs_and_entropy``)."""
        return response_logprobs_and_entropy(self.lm, input_ids, attention_mask, response_mask, temperature, chunk_size)
