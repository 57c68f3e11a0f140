import pytest
import torch

from epo_lightning.losses import aggregate
from epo_lightning.types import TurnBatch
from epo_lightning.update_weights import update_token_weights


def _batch(mask_rows, trajs):
    width = max(len(r) for r in mask_rows)
    mask = torch.tensor([r + [0.0] * (width - len(r)) for r in mask_rows])
    rows = len(mask_rows)
    zeros = torch.zeros(rows, dtype=torch.long)
    return TurnBatch(
        input_ids=torch.zeros(mask.shape, dtype=torch.long),
        attention_mask=torch.ones(mask.shape, dtype=torch.long),
        response_mask=mask,
        turn_index=zeros,
        traj_index=torch.tensor(trajs),
        group_index=zeros,
        anchor_index=zeros,
        scores=torch.zeros(rows),
        step_rewards=torch.zeros(rows),
    )


# trajectory 0 has two turns (2 and 1 tokens) in different micro-batches, trajectory 1 one turn of 3 tokens
FIRST = _batch([[0, 1, 1, 0], [0, 1, 1, 1]], [0, 1])
SECOND = _batch([[0, 0, 1], [0, 0, 0]], [0, -1])  # the second row is a padding row without response tokens


def test_nested_mean_weights_span_the_micro_batches_of_the_update():
    ((first, second),) = update_token_weights([[FIRST, SECOND]], "turn_traj_mean")
    # 2 trajectories; trajectory 0: 2 turns -> 1/2 * 1/2 * 1/tokens; trajectory 1: 1/2 * 1 * 1/3
    torch.testing.assert_close(first, torch.tensor([[0, 1 / 8, 1 / 8, 0], [0, 1 / 6, 1 / 6, 1 / 6]]))
    torch.testing.assert_close(second, torch.tensor([[0, 0, 1 / 4], [0, 0, 0]]))
    ((first, second),) = update_token_weights([[FIRST, SECOND]], "token_mean")
    torch.testing.assert_close(first, torch.tensor([[0, 1 / 6, 1 / 6, 0], [0, 1 / 6, 1 / 6, 1 / 6]]))
    assert float(second.sum()) == pytest.approx(1 / 6)


@pytest.mark.parametrize("agg", ["token_mean", "turn_traj_mean"])
def test_weighted_sums_of_the_micro_batches_equal_aggregating_the_update_as_one_batch(agg):
    torch.manual_seed(0)
    batches = [
        _batch([[0] + [1] * n + [0] * (6 - n) for n in lens], trajs)
        for lens, trajs in (([3, 1, 5], [0, 1, 0]), ([2, 6], [2, 1]), ([4], [0]))
    ]
    values = [torch.randn(b.response_mask.shape) for b in batches]
    weights = update_token_weights([batches], agg)[0]
    split_sum = sum(float((w * v).sum()) for w, v in zip(weights, values, strict=True))
    whole = aggregate(
        torch.cat(values),
        torch.cat([b.response_mask for b in batches]),
        agg,
        torch.cat([b.traj_index for b in batches]),
    )
    assert split_sum == pytest.approx(float(whole), rel=1e-6)


def test_totals_are_summed_over_ranks():
    other_rank = torch.tensor([[6.0, 3.0]], dtype=torch.float64)  # another rank holds 6 tokens of 3 trajectories
    ((first, _),) = update_token_weights([[FIRST, SECOND]], "token_mean", lambda totals: totals + other_rank)
    assert float(first[0, 1]) == pytest.approx(1 / 12)
    ((first, _),) = update_token_weights([[FIRST, SECOND]], "turn_traj_mean", lambda totals: totals + other_rank)
    assert float(first[1, 1]) == pytest.approx(1 / 3 / 5)  # trajectory 1: one turn of 3 tokens, 5 trajectories
