"""The paper's ALFWorld prompt (arXiv 2509.22576 Appendix D), as a ``PromptBuilder``.

The first turn shows the observation and the admissible actions; later turns add the task, the step count and the last
``history_length`` (observation, action) pairs. The model answers with ``<think>...</think>`` then
``<action>...</action>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from datamodules.prompts import PromptBuilder

INSTRUCTION = (
    "Now it's your turn to take an action. You should first reason step-by-step about the current situation. This "
    "reasoning process MUST be enclosed within <think> </think> tags. Once you've finished your reasoning, you should "
    "choose an admissible action for current step and present it within <action> </action> tags."
)


@dataclass(frozen=True)
class AlfWorldPrompt(PromptBuilder):
    """The ALFWorld agent prompt of the EPO paper (``history_length`` = 2 there)."""

    def render(self, task: str, history: Sequence[tuple[str, str]], observation: str, admissible: Sequence[str]) -> str:
        """Return the prompt text of the current step."""
        actions = "[" + ", ".join(f"'{action}'" for action in admissible) + "]"
        if not history:
            return (
                "You are an expert agent operating in the ALFRED Embodied Environment.\n"
                f"Your current observation is: {observation} Your task is to: {task}\n"
                f"Your admissible actions of the current situation are: {actions}.\n{INSTRUCTION}"
            )
        shown = list(history)[-self.history_length :] if self.history_length else []
        recent = " ".join(
            f"[Observation {len(history) - len(shown) + i + 1}: '{obs}', Action: '{action}']"
            for i, (obs, action) in enumerate(shown)
        )
        return (
            "You are an expert agent operating in the ALFRED Embodied Environment. Your task is to: "
            f"{task}\nPrior to this step, you have already taken {len(history)} step(s). Below are the most recent "
            f"{len(shown)} observations and the corresponding actions you took: {recent}\n"
            f"You are now at step {len(history) + 1} and your current observation is: {observation}\n"
            f"Your admissible actions of the current situation are: {actions}.\n{INSTRUCTION}"
        )
