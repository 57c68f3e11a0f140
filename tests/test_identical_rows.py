"""Identical turn rows run through the model once: the same loss, gradient and update as running every row."""

import torch

from datamodules.turn_rows import TurnRow, collate_rows, group_identical
from epo_lightning.logprobs import ResponseScorer
from epo_lightning.losses import EPOLossConfig, epo_loss
from epo_lightning.policy import load_policy


def _row(prompt, response, score=0.0, traj=0):
    return TurnRow(list(prompt), list(response), score, 0, traj, 0, 0.0, 0)


def test_collation_marks_identical_rows_and_only_those():
    a, b, c = _row([5, 6, 7], [8, 9]), _row([5, 6], [7, 8, 9]), _row([5, 6, 7], [8, 10])  # b: a's ids, cut elsewhere
    batch = collate_rows([a, b, _row([5, 6, 7], [8, 9], score=1.0), c, _row([5, 6], [7, 8, 9])], pad_id=0)
    assert batch.distinct_rows.tolist() == [0, 1, 3]
    assert batch.distinct_index.tolist() == [0, 1, 0, 2, 1]
    ids, attention, response = batch.distinct_inputs()
    assert torch.equal(ids, batch.input_ids[[0, 1, 3]]) and torch.equal(response, batch.response_mask[[0, 1, 3]])
    assert torch.equal(batch.to_rows(ids), batch.input_ids)
    assert collate_rows([a, b, c], pad_id=0).distinct_rows is None
    assert [len(same) for same in group_identical([a, b, a, c, b, a])] == [3, 2, 1]


def test_running_identical_rows_once_gives_the_loss_and_gradient_of_running_every_row(tiny_policy_dir):
    model, _ = load_policy(tiny_policy_dir)
    scorer = ResponseScorer(model)
    prompts = [[4, 5, 6, 7], [4, 5, 8], [4, 5, 6, 7], [9, 5, 6, 7, 4], [4, 5, 6, 7]]
    responses = [[10, 11], [12], [10, 11], [10, 13, 3], [10, 11]]
    rows = [_row(p, r, traj=t) for t, (p, r) in enumerate(zip(prompts, responses, strict=True))]
    deduplicated = collate_rows(rows, pad_id=0)
    assert len(deduplicated.distinct_rows) == 3
    every_row = collate_rows(rows, pad_id=0)
    every_row.distinct_rows = every_row.distinct_index = None
    advantages = torch.tensor([1.0, -0.5, -2.0, 0.7, 0.3])  # the copies differ: they come from different episodes
    config = EPOLossConfig(kl_coef=0.0, smoothing="hinge", kappa_r=2.0, alpha=0.1, agg="token_mean")
    results = []
    for batch in (deduplicated, every_row):
        model.zero_grad()
        logprobs, entropy = scorer(*batch.distinct_inputs(), 1.0, 64)
        logprobs, entropy = batch.to_rows(logprobs), batch.to_rows(entropy)
        old = (logprobs.detach() + 0.3 * batch.response_mask * torch.linspace(-1, 1, logprobs.shape[1])).detach()
        loss, _ = epo_loss(
            logprobs, old, entropy, advantages, batch.response_mask, batch.traj_index, config,
            entropy_coef=0.05, h_ref=0.1, beta=1.0,
        )  # fmt: skip
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_once, grads_once), (loss_each, grads_each) = results
    assert loss_once.abs() > 1e-3
    assert torch.allclose(loss_once, loss_each, atol=1e-6)
    for name, grad in grads_each.items():
        assert grad.abs().max() > 0, name
        assert torch.allclose(grads_once[name], grad, atol=1e-6, rtol=1e-5), name


def _one_step(tmp_path, cache_dir, monkeypatch, deduplicate: bool):
    from lightning.pytorch import seed_everything

    import datamodules.rollout_datamodule as rollout_datamodule
    from datamodules.rollout_datamodule import RolloutDataModule
    from epo_lightning.module import EPOModule
    from tests.conftest import EASY_DATA, TEST_PRESET, make_trainer

    if not deduplicate:  # every row its own group and its own forward: the framework before identical rows were shared

        def collate_every_row(rows, pad_id):
            batch = collate_rows(rows, pad_id)
            batch.distinct_rows = batch.distinct_index = None
            return batch

        monkeypatch.setattr(rollout_datamodule, "group_identical", lambda rows: [[row] for row in rows])
        monkeypatch.setattr(rollout_datamodule, "collate_rows", collate_every_row)
    seed_everything(0)
    module = EPOModule(tiny=TEST_PRESET, cache_dir=str(cache_dir), loss={"kl_coef": 0.01})
    data = RolloutDataModule(**{**EASY_DATA, "group_size": 8, "micro_batch_size": 8, "mini_batch_size": 64})
    scored_rows = []  # rows of every scoring forward (pi_old, the KL reference)
    score_logprobs = module.score_logprobs
    module.score_logprobs = lambda batch: scored_rows.append(len(batch)) or score_logprobs(batch)
    trainer = make_trainer(tmp_path / str(deduplicate), max_epochs=1, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    params = {name: p.detach().clone() for name, p in module.model.named_parameters()}
    return params, trainer.callback_metrics, sum(scored_rows)


def test_sharing_identical_rows_leaves_the_training_the_same(tmp_path, cache_dir, tiny_policy_dir, monkeypatch):
    shared, shared_metrics, shared_scored = _one_step(tmp_path, cache_dir, monkeypatch, deduplicate=True)
    each, each_metrics, each_scored = _one_step(tmp_path, cache_dir, monkeypatch, deduplicate=False)
    assert each_scored == int(each_metrics["rollout/turn_samples"])  # every row scored once
    assert shared_scored < 0.8 * each_scored  # each distinct row of the step once: 140 of 181 here
    assert 0.5 < float(shared_metrics["train/distinct_row_frac"]) < 0.95  # 0.90 here
    assert float(each_metrics["train/distinct_row_frac"]) == 1.0
    assert float(shared_metrics["rollout/success_rate"]) == float(each_metrics["rollout/success_rate"])
    for name, value in each.items():
        assert torch.allclose(shared[name], value, atol=1e-5), name
