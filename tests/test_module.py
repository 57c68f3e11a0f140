import json
import shutil
import warnings
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig

from callbacks import EntropyHistory, PhaseScheduler
from datamodules.rollout_datamodule import RolloutDataModule
from epo_lightning.errors import ConfigurationError
from epo_lightning.module import EPOModule
from epo_lightning.policy import context_length
from tests.conftest import EASY_DATA, TEST_PRESET, make_trainer


class RecordingModule(EPOModule):
    """Records, per training step, the log-ratio to the rollout policy and the H_ref / beta it trained with."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.first_log_ratios: list[torch.Tensor] = []
        self.seen: list[tuple[int, float | None, float]] = []

    def training_step(self, batch, batch_idx):
        if batch_idx == 0:
            logprobs, _ = self._logprobs(self.actor, batch)
            self.first_log_ratios.append(((logprobs - batch.old_logprobs) * batch.response_mask).detach())
        self.seen.append((self.current_epoch, self.entropy_reference, self.beta))
        return super().training_step(batch, batch_idx)


def _module(cache_dir, **kwargs) -> RecordingModule:
    settings = dict(tiny=TEST_PRESET, cache_dir=str(cache_dir), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    settings.update(kwargs)
    return RecordingModule(**settings)


def test_ppo_ratio_is_one_on_the_first_minibatch_and_parameters_move(cache_dir, tiny_policy_dir, tmp_path):
    module = _module(cache_dir, loss={"kl_coef": 0.01})
    trainer = make_trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    trainer.fit(module, datamodule=RolloutDataModule(**EASY_DATA))
    assert len(module.first_log_ratios) == 2
    for log_ratio in module.first_log_ratios:  # scored and trained in differently composed micro-batches: rounding
        assert log_ratio.abs().max() < 1e-5
    initial = EPOModule(tiny=TEST_PRESET, cache_dir=str(cache_dir))
    initial.trainer = trainer  # reuse the built datamodule to load the same initial weights from the cache
    initial.configure_model()
    changed = [
        not torch.equal(p, q) for p, q in zip(module.model.parameters(), initial.model.parameters(), strict=True)
    ]
    assert all(changed)
    frozen = [torch.equal(p, q) for p, q in zip(module.reference.parameters(), initial.model.parameters(), strict=True)]
    assert all(frozen)
    metrics = trainer.callback_metrics
    for key in (
        "loss/total",
        "loss/pg",
        "loss/kl",
        "ppo/clip_frac",
        "entropy/token_mean",
        "rollout/success_rate",
        "rollout/valid_action_ratio",
        "rollout/tokens_per_s",
        "time/rollout_s",
        "time/train_s",
        "entropy/turn_0",
    ):
        assert key in metrics, key
    assert metrics["loss/kl"] > 0


def test_under_bf16_mixed_weights_stay_float32_and_the_ratio_starts_at_one(cache_dir, tiny_policy_dir, tmp_path):
    """bf16-mixed: float32 weights, bf16 compute in sampling, scoring and the update alike. Before, sampling and
    scoring ran outside Lightning's autocast, in float32, and the first micro-batch's log-ratio reached 0.017."""
    module = _module(cache_dir)
    trainer = make_trainer(tmp_path, max_epochs=1, limit_val_batches=0, precision="bf16-mixed")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, datamodule=RolloutDataModule(**EASY_DATA))
    assert not [w for w in caught if "weights: an optimizer update" in str(w.message)]
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    assert 0 < module.first_log_ratios[0].abs().max() < 1e-3  # bf16 rounding of batches of other shapes only


def test_training_bf16_weights_is_warned_about(cache_dir, tiny_policy_dir, tmp_path):
    """bf16 weights lose most updates at the paper's learning rates to rounding (8% of a bf16 Qwen2's weights changed
    in one AdamW step at lr 5e-6): the paper configs once trained them so, and nothing said it."""
    module = _module(cache_dir)
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0, precision="bf16-true")
    with pytest.warns(UserWarning, match="trains bfloat16 weights.*trainer.precision: bf16-mixed"):
        trainer.fit(module, datamodule=RolloutDataModule(**EASY_DATA))
    assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    # metric states keep their dtype (before, bf16-true made them bf16: TurnEntropy's float64 sums crashed the step)
    dtypes = (module.train_entropy.mean_value.dtype, module.train_turn_entropy.tokens.dtype)
    assert dtypes == (torch.float32, torch.float64)
    assert 0 < trainer.callback_metrics["entropy/token_mean"] < 5


def test_without_callbacks_beta_is_one_and_there_is_no_smoothing(cache_dir, tiny_policy_dir, tmp_path):
    module = _module(cache_dir)
    trainer = make_trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    trainer.fit(module, datamodule=RolloutDataModule(**EASY_DATA))
    assert {(ref, beta) for _, ref, beta in module.seen} == {(None, 1.0)}
    assert trainer.callback_metrics["loss/smooth"] == 0


def test_callbacks_feed_the_reference_and_beta_into_training(cache_dir, tiny_policy_dir, tmp_path):
    module = _module(cache_dir)
    history = EntropyHistory()
    trainer = make_trainer(tmp_path, max_epochs=3, limit_val_batches=0, callbacks=[history, PhaseScheduler()])
    trainer.fit(module, datamodule=RolloutDataModule(**EASY_DATA))
    by_epoch = {epoch: (ref, beta) for epoch, ref, beta in module.seen}
    assert by_epoch[0] == (None, 2.0)
    assert by_epoch[1][0] == pytest.approx(history.history[0])
    assert by_epoch[2][0] == pytest.approx((history.history[0] + history.history[1]) / 2)
    assert by_epoch[1][1] == pytest.approx(1 + torch.exp(torch.tensor(-3.0 * 1 / 1)).item())
    assert len(history.history) == 3 and all(0 < h < 10 for h in history.history)


def test_validation_logs_success_rates_for_both_splits(cache_dir, tiny_policy_dir, tmp_path):
    module = _module(cache_dir)
    trainer = make_trainer(tmp_path)
    (metrics,) = trainer.validate(module, datamodule=RolloutDataModule(**EASY_DATA))
    assert set(metrics) >= {"val/success_rate", "val_ood/success_rate", "val/episode_len"}
    assert 0.0 <= metrics["val/success_rate"] <= 1.0
    assert 1.0 <= metrics["val/episode_len"] <= EASY_DATA["max_turns"]
    assert 0.5 < metrics["val/valid_action_ratio"] <= 1.0  # the format prior makes most actions valid


def test_tiny_policy_without_a_rollout_datamodule_says_what_to_change(cache_dir, tmp_path):
    module = _module(cache_dir)
    module.trainer = make_trainer(tmp_path)
    with pytest.raises(RuntimeError, match="RolloutDataModule"):
        module.setup("fit")


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="temperature"):
        EPOModule(temperature=0.0)
    with pytest.raises(ValueError, match="logprob_chunk_size"):
        EPOModule(logprob_chunk_size=0)
    with pytest.raises(ValueError, match="group_size"):
        RolloutDataModule(group_size=0)
    with pytest.raises(ValueError, match="unknown env"):
        RolloutDataModule(env="nethack")


def test_transcripts_histograms_and_hparams_reach_the_loggers(cache_dir, tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module = EPOModule(tiny=TEST_PRESET, cache_dir=str(cache_dir))
    loggers = [TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")]
    trainer = make_trainer(tmp_path, max_epochs=1, logger=loggers)
    trainer.fit(module, datamodule=RolloutDataModule(**EASY_DATA, num_transcripts=2))
    files = sorted(p.name for p in (tmp_path / "csv" / "version_0" / "transcripts").iterdir())
    # training episodes of RL step 0; evaluation after 1 RL step
    assert files == ["train_step0000.md", "val_ood_step0001.md", "val_step0001.md"]
    text = (tmp_path / "csv" / "version_0" / "transcripts" / "val_step0001.md").read_text()
    assert text.count("**task** val_iid:") == 2 and "---" in text
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"tensors": 0, "histograms": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    assert {"transcripts/train_0/text_summary", "transcripts/val_1/text_summary"} <= tags
    histograms = set(events.Tags()["histograms"])
    assert {"hist/token_entropy", "hist/advantage", "hist/response_length"} <= histograms
    lengths = events.Histograms("hist/response_length")[0].histogram_value
    assert 1 <= lengths.min and lengths.max <= module.hparams.max_new_tokens and lengths.num > 0
    logged = loggers[0].hparams  # the module's settings and the data's, in TensorBoard's HParams
    assert (
        logged["entropy_coef"] == 0.001 and logged["group_size"] == 4 and logged["env_kwargs"] == {"difficulty": "easy"}
    )


def _short_context_module(
    tiny_policy_dir, tmp_path, positions: int, engine_len: int | None = None, rope: dict | None = None
):
    """The tiny policy, stating a context of ``positions`` tokens (scaled by ``rope`` settings; its engine, optionally,
    a shorter one), and the prompts its engine is asked to sample from."""
    policy = tmp_path / "policy"
    shutil.copytree(tiny_policy_dir, policy)
    config = json.loads((policy / "config.json").read_text())
    config["max_position_embeddings"] = positions
    if rope is not None:
        config["rope_scaling"] = rope  # transformers 5 reads it into rope_parameters
    (policy / "config.json").write_text(json.dumps(config))
    module = EPOModule(policy=str(policy), max_new_tokens=8)
    engine, prompts = module.rollout_engine, []
    engine.max_model_len = engine_len
    generate = engine.generate

    def recording(policy, tokenizer, batch, *args):
        prompts.extend(list(p) for p in batch)
        return generate(policy, tokenizer, batch, *args)

    engine.generate = recording
    return module, prompts


@pytest.mark.parametrize(  # prompts here: 30-136 tokens
    ("positions", "engine_len", "rope", "context"),
    [
        (64, None, None, 64),
        (128, 72, None, 72),
        (32, None, {"rope_type": "yarn", "factor": 2.0}, 64),  # YaRN: factor x original_max_position_embeddings
    ],
    ids=["policy", "engine", "yarn"],
)
def test_prompts_are_bounded_by_what_the_context_leaves_for_a_response(
    tiny_policy_dir, tmp_path, positions, engine_len, rope, context
):
    module, prompts = _short_context_module(tiny_policy_dir, tmp_path, positions, engine_len, rope)
    with pytest.warns(UserWarning, match="lose their middle"):
        make_trainer(tmp_path).validate(module, datamodule=RolloutDataModule(**EASY_DATA))
    limit = context - 8
    assert max(len(p) for p in prompts) == limit  # the longer prompts cut to the limit, the others whole
    assert min(len(p) for p in prompts) < limit


def test_the_context_length_reads_rotary_scaling_as_each_kind_states_it():
    llama31 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}  # fmt: skip
    deepseek = {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096}
    cases = [
        (LlamaConfig(max_position_embeddings=4096), 4096),
        (LlamaConfig(max_position_embeddings=4096, rope_parameters={"rope_type": "yarn", "factor": 4.0}), 16384),
        # DeepSeek-V3 style: max_position_embeddings is already the extended length (40 x 4096)
        (LlamaConfig(max_position_embeddings=163840, rope_parameters=deepseek), 163840),
        (LlamaConfig(max_position_embeddings=2048, rope_scaling={"type": "linear", "factor": 2.0}), 4096),
        (LlamaConfig(max_position_embeddings=2048, rope_scaling={"type": "dynamic", "factor": 2.0}), 4096),
        # Llama 3.1 states the extended length itself (8 x 8192 would be half of it)
        (LlamaConfig(max_position_embeddings=131072, rope_parameters=llama31),
         131072),
        (SimpleNamespace(max_position_embeddings=2048, rope_scaling={"type": "yarn", "factor": 2.0}), 4096),  # 4.x
        # Gemma 3 under transformers 4.x: a flat linear factor 8 next to the 131k context it already states
        (SimpleNamespace(model_type="gemma3_text", max_position_embeddings=131072,
                         rope_scaling={"rope_type": "linear", "factor": 8.0}), 131072),
        (SimpleNamespace(), None),  # nothing stated
    ]  # fmt: skip
    assert [context_length(config) for config, _ in cases] == [expected for _, expected in cases]


def test_a_prompt_bound_the_context_cannot_hold_is_refused_before_the_first_episode(tiny_policy_dir, tmp_path):
    module, prompts = _short_context_module(tiny_policy_dir, tmp_path, 40)
    data = RolloutDataModule(**EASY_DATA, max_prompt_tokens=100)
    with pytest.raises(ConfigurationError, match="max_prompt_tokens is 100.*at most 32"):
        make_trainer(tmp_path).validate(module, datamodule=data)
    assert prompts == []


class FrozenProbeModule(RecordingModule):
    """A user's module with a frozen part of its own, kept in eval mode as EPOModule keeps its reference."""

    def train(self, mode: bool = True) -> "FrozenProbeModule":
        super().train(mode)
        self.probe.eval()
        return self


def test_the_frozen_reference_is_expected_in_eval_mode_and_a_user_s_eval_module_is_still_warned_about(
    cache_dir, tiny_policy_dir, tmp_path
):
    said = {}
    for extra in (False, True):
        settings = dict(tiny=TEST_PRESET, cache_dir=str(cache_dir), loss={"kl_coef": 0.01})
        module = FrozenProbeModule(**settings) if extra else RecordingModule(**settings)
        if extra:
            module.probe = torch.nn.Linear(2, 2)
        trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(module, datamodule=RolloutDataModule(**EASY_DATA))
        said[extra] = [str(w.message) for w in caught if "in eval mode at the start of training" in str(w.message)]
        frozen = sum(1 for _ in module.reference.modules())
    assert frozen > 10 and said[False] == []  # before: "Found 21 module(s) in eval mode ... unexpected behavior"
    assert len(said[True]) == 1 and said[True][0].startswith(f"Found {frozen + 1} module(s)")
