import math

import torch

from epo_lightning.turn_entropy import TurnEntropy


def test_token_mean_per_turn_index_with_late_turns_pooled_in_the_last_slot():
    metric = TurnEntropy(num_turns=3)
    entropy = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 0.0], [4.0, 4.0, 7.0], [9.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    metric.update(entropy, mask, torch.tensor([0, 0, 2, 5]))  # turn 5 shares slot 2 with turn 2
    values = metric.compute()
    assert values[0] == 2.0  # (1 + 3 + 2) / 3 tokens
    assert math.isnan(values[1])  # no turn 1 seen
    assert values[2] == 6.0  # (4 + 4 + 7 + 9) / 4 tokens
