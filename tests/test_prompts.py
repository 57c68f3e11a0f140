import pytest

from datamodules.prompts import PromptBuilder
from epo_lightning.tiny_preset import build_word_tokenizer


def test_prompt_shows_only_the_last_k_pairs_and_the_admissible_actions() -> None:
    history = [("obs one", "go north"), ("obs two", "take key"), ("obs three", "go east")]
    text = PromptBuilder(history_length=2).render("get the gem", history, "obs four", ["look", "go west"])
    assert text == (
        "goal : get the gem .\n"
        "before : obs two you did : take key .\n"
        "before : obs three you did : go east .\n"
        "now : obs four\n"
        "actions : look ; go west ."
    )
    assert "obs one" not in PromptBuilder(history_length=0).render("g", history, "o", ["a"])


def test_plain_encoding_has_no_special_tokens() -> None:
    tokenizer = build_word_tokenizer(["goal", ":", "look", "."])
    ids = PromptBuilder().encode(tokenizer, "goal : look .")
    assert tokenizer.convert_ids_to_tokens(ids) == ["goal", ":", "look", "."]


def test_negative_history_is_rejected_with_a_hint() -> None:
    with pytest.raises(ValueError, match="history_length must be >= 0"):
        PromptBuilder(history_length=-1)
