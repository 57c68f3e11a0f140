import pytest

from datamodules.update_plan import UpdatePlan, plan_updates, split_balanced


def test_plan_counts_updates_over_all_ranks_and_micro_batches_from_the_fullest_rank():
    # 66 rows over two ranks, 48 per update -> 2 updates; rank 0 has 30 rows per update -> 4 micro-batches of <= 8
    assert plan_updates([60, 6], mini_batch_size=48, micro_batch_size=8) == UpdatePlan(2, 4)
    assert plan_updates([60, 6], mini_batch_size=1000, micro_batch_size=64) == UpdatePlan(1, 1)
    assert plan_updates([0, 0], mini_batch_size=8, micro_batch_size=8) == UpdatePlan(1, 1)  # nothing: one empty update
    assert plan_updates([17], mini_batch_size=8, micro_batch_size=2) == UpdatePlan(3, 3)  # 6 rows -> 3 x 2


def test_plan_refuses_sizes_below_one():
    with pytest.raises(ValueError, match="must be >= 1"):
        plan_updates([3], mini_batch_size=0, micro_batch_size=1)


def test_split_is_balanced_in_order_and_pads_with_empty_chunks():
    assert split_balanced([1, 2, 3, 4, 5], 3) == [[1, 2], [3, 4], [5]]
    assert split_balanced([1], 3) == [[1], [], []]
    assert split_balanced([], 2) == [[], []]
    chunks = split_balanced(list(range(30)), 4)
    assert [len(c) for c in chunks] == [8, 8, 7, 7] and sum(chunks, []) == list(range(30))
