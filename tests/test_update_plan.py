import pytest

from datamodules.update_plan import UpdatePlan, plan_updates, split_balanced, split_least_padding


def test_plan_counts_updates_over_all_ranks_and_micro_batches_from_the_fullest_rank():
    # 66 rows over two ranks, 48 per update -> 2 updates; rank 0 has 30 rows per update -> 4 micro-batches of <= 8
    assert plan_updates([60, 6], mini_batch_size=48, micro_batch_size=8) == UpdatePlan(2, 4, 8)
    assert plan_updates([60, 6], mini_batch_size=1000, micro_batch_size=64) == UpdatePlan(1, 1, 1)
    assert plan_updates([0, 0], mini_batch_size=8, micro_batch_size=8) == UpdatePlan(1, 1, 1)  # no rows: one update
    assert plan_updates([17], mini_batch_size=8, micro_batch_size=2) == UpdatePlan(3, 3, 9)  # 6 rows -> 3 x 2
    # scoring runs once per distinct row: 30 of rank 0's 60 rows and all 6 of rank 1's -> ceil(30 / 8) on both
    assert plan_updates([60, 6], 48, 8, rank_distinct_rows=[30, 6]) == UpdatePlan(2, 4, 4)


def test_plan_refuses_sizes_below_one():
    with pytest.raises(ValueError, match="must be >= 1"):
        plan_updates([3], mini_batch_size=0, micro_batch_size=1)


def test_split_is_balanced_in_order_and_pads_with_empty_chunks():
    assert split_balanced([1, 2, 3, 4, 5], 3) == [[1, 2], [3, 4], [5]]
    assert split_balanced([1], 3) == [[1], [], []]
    assert split_balanced([], 2) == [[], []]
    chunks = split_balanced(list(range(30)), 4)
    assert [len(c) for c in chunks] == [8, 8, 7, 7] and sum(chunks, []) == list(range(30))


def _padding(chunks: list[list[int]]) -> int:
    return sum(len(c) * max(c) - sum(c) for c in chunks if c)


def test_least_padding_cut_sorts_and_cuts_where_the_fewest_positions_are_padding():
    def identity(x: int) -> int:
        return x

    # balanced: [1, 1, 1] [1, 10, 10] pads 9 positions; the four short rows together pad none
    assert split_least_padding([10, 1, 1, 10, 1, 1], 2, identity) == [[1, 1, 1, 1], [10, 10]]
    # the memory bound: no chunk may hold more than 3 rows x 6 = 18 positions, so [5, 5, 5, 5] (20) is refused
    assert split_least_padding([5, 5, 6, 5, 5, 5], 2, identity) == [[5, 5, 5], [5, 5, 6]]
    assert split_least_padding([3, 2], 3, identity) == [[2], [3], []]  # fewer rows than parts: the balanced cut


def test_least_padding_cut_never_pads_more_than_the_balanced_cut_nor_exceeds_its_memory():
    import random

    rng = random.Random(0)
    for _ in range(100):
        lengths = [rng.choice([30, 40, 60, 90, 300]) + rng.randrange(10) for _ in range(rng.randrange(17, 130))]
        parts = rng.randrange(1, 17)  # many passes of the dynamic programme, always fewer parts than rows
        chunks = split_least_padding(lengths, parts, lambda x: x)
        balanced = split_balanced(sorted(lengths), parts)
        assert len(chunks) == parts and all(chunks) and sorted(sum(chunks, [])) == sorted(lengths)
        assert _padding(chunks) <= _padding(balanced)
        budget = max(len(c) for c in balanced) * max(lengths)
        assert max(len(c) * max(c) for c in chunks) <= budget


def _one_step(tmp_path, cache_dir, group_by_length):
    from lightning.pytorch import seed_everything

    from datamodules.rollout_datamodule import RolloutDataModule
    from epo_lightning.module import EPOModule
    from tests.conftest import EASY_DATA, TEST_PRESET, make_trainer

    seed_everything(0)
    module = EPOModule(tiny=TEST_PRESET, cache_dir=str(cache_dir))
    data = RolloutDataModule(
        **{**EASY_DATA, "micro_batch_size": 8, "mini_batch_size": 32}, group_by_length=group_by_length
    )
    trainer = make_trainer(tmp_path / str(group_by_length), max_epochs=1, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    params = {name: p.detach().clone() for name, p in module.model.named_parameters()}
    return params, float(trainer.callback_metrics["train/padding_frac"]), trainer.global_step


def test_grouping_by_length_cuts_padding_and_leaves_every_update_the_same(tmp_path, cache_dir, tiny_policy_dir):
    import torch

    grouped, grouped_padding, grouped_updates = _one_step(tmp_path, cache_dir, group_by_length=True)
    plain, plain_padding, plain_updates = _one_step(tmp_path, cache_dir, group_by_length=False)
    assert grouped_updates == plain_updates > 1
    assert grouped_padding < plain_padding / 2
    for name, value in plain.items():  # the same rows per update, each weighted over its whole update
        assert torch.allclose(grouped[name], value, atol=1e-5), name


def test_ppo_epochs_run_the_step_s_updates_again_after_the_first_pass(tmp_path, cache_dir, tiny_policy_dir):
    import torch
    from lightning.pytorch import Callback, seed_everything

    from datamodules.rollout_datamodule import RolloutDataModule
    from epo_lightning.module import EPOModule
    from tests.conftest import EASY_DATA, TEST_PRESET, make_trainer

    single, _, updates = _one_step(tmp_path, cache_dir, group_by_length=True)

    class FirstPass(Callback):
        """The weights after the first pass's last update, and every micro-batch in the order it trained."""

        def __init__(self) -> None:
            self.batches: list = []
            self.params: dict = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            # copies: a later pass must see the same values, not only the same (possibly modified) objects
            self.batches.append({k: v.clone() for k, v in vars(batch).items() if isinstance(v, torch.Tensor)})
            if trainer.global_step == updates and not self.params:
                self.params = {name: p.detach().clone() for name, p in pl_module.model.named_parameters()}

    seed_everything(0)
    module = EPOModule(tiny=TEST_PRESET, cache_dir=str(cache_dir))
    data = RolloutDataModule(**{**EASY_DATA, "micro_batch_size": 8, "mini_batch_size": 32}, ppo_epochs=3)
    first_pass = FirstPass()
    trainer = make_trainer(tmp_path / "epochs", max_epochs=1, limit_val_batches=0, callbacks=[first_pass])
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 3 * updates
    passes = len(first_pass.batches) // 3
    for k, batch in enumerate(first_pass.batches):  # the same micro-batches, in the same order, values unchanged
        first = first_pass.batches[k % passes]
        assert batch.keys() == first.keys() and all(torch.equal(batch[f], first[f]) for f in first), k
    for name, value in single.items():  # the first pass is the whole of a one-pass step; the others train on
        assert torch.allclose(first_pass.params[name], value, atol=1e-6), name
    moved = [(module.model.get_parameter(name) - value).abs().max() for name, value in single.items()]
    assert max(moved) > 1e-4


def test_ppo_epochs_below_one_are_refused():
    from datamodules.rollout_datamodule import RolloutDataModule

    with pytest.raises(ValueError, match="data.ppo_epochs must be >= 1"):
        RolloutDataModule(ppo_epochs=0)
