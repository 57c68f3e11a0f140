"""The log-prob and entropy of every token a Hugging Face ``generate`` call samples, recorded while it decodes.

With ``model.init_args.old_logprobs: engine`` these are the rollout policy's pi_old(a_t | s_t) of the PPO ratio and
the token entropy H of paper Eq. 2 that ``EntropyHistory`` records, so the trainer need not score the rows again in a
separate forward pass. They are computed by ``logprob_entropy_lse``, as the trainer's scoring computes them, from the
logits the sampler drew from, at the sampling temperature.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import LogitsProcessor

from epo_lightning.logprobs import logprob_entropy_lse


class SampledTokenScores(LogitsProcessor):
    """A logits processor that changes nothing and records ``log softmax(z / T)[sampled]`` and its entropy per step.

    ``generate`` calls it once per new token with the logits of that position, before sampling; the token drawn is
    the last column of the next call's ``input_ids`` (or of the returned sequences, for the last step), so one
    ``[B, V]`` tensor is held at a time.

    Args:
        temperature: the sampling temperature (> 0).
    """

    def __init__(self, temperature: float) -> None:
        if temperature <= 0:
            raise ValueError(f"sampled-token scores need a sampling temperature > 0, got {temperature}.")
        self.temperature = temperature
        self._pending: Tensor | None = None  # the last step's scaled logits, until its token is known
        self._logprobs: list[Tensor] = []
        self._entropy: list[Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Score the token the previous step drew (``input_ids``' last column) and keep this step's logits."""
        self._score_pending(input_ids[:, -1])
        self._pending = scores.float() / self.temperature
        return scores

    def _score_pending(self, sampled: Tensor) -> None:
        if self._pending is not None:
            logprobs, entropy, _ = logprob_entropy_lse(self._pending, sampled)
            self._logprobs.append(logprobs)
            self._entropy.append(entropy)
            self._pending = None

    def per_response(self, responses: list[list[int]]) -> tuple[list[list[float]], list[list[float]]]:
        """The log-probs and entropies of each response's tokens, given the ids ``generate`` returned.

        The responses are cut at their end of turn; one as long as the decoding loop ends with the token its last
        step drew, which no later call saw.
        """
        steps = len(self._logprobs) + (self._pending is not None)
        if self._pending is not None:
            last = [ids[-1] if len(ids) == steps else 0 for ids in responses]  # 0: a finished row, never read
            self._score_pending(torch.tensor(last, device=self._pending.device))
        if not responses or steps == 0:
            return [[] for _ in responses], [[] for _ in responses]
        logprobs, entropy = torch.stack(self._logprobs, dim=1).tolist(), torch.stack(self._entropy, dim=1).tolist()
        return (
            [row[: len(ids)] for row, ids in zip(logprobs, responses, strict=True)],
            [row[: len(ids)] for row, ids in zip(entropy, responses, strict=True)],
        )
