"""The paper's ScienceWorld prompt (arXiv 2509.22576 Appendix D), as a ``PromptBuilder``.

Every earlier action is listed, the last ``history_length`` steps are shown with their observations, and the valid
action-object combinations of the current state follow the action templates. The model answers with
``<think>...</think>`` then ``<action>...</action>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from datamodules.prompts import PromptBuilder

ACTION_TEMPLATES = (
    "activate OBJ, close OBJ, deactivate OBJ, dunk OBJ in OBJ, eat OBJ, flush OBJ, focus on OBJ, go OBJ, inventory, "
    "look around, look at OBJ, look in OBJ, mix OBJ, move OBJ to OBJ, open OBJ, pick up OBJ, pour OBJ in OBJ, "
    "put down OBJ, read OBJ, teleport OBJ, use OBJ on OBJ, wait, wait1"
)


@dataclass(frozen=True)
class ScienceWorldPrompt(PromptBuilder):
    """The ScienceWorld agent prompt of the EPO paper (``history_length`` = 2 there)."""

    def render(self, task: str, history: Sequence[tuple[str, str]], observation: str, admissible: Sequence[str]) -> str:
        """Return the prompt text of the current step."""
        lines = [
            "You are an expert agent playing ScienceWorld, a text-based science simulation environment.",
            f"Your task is: {task}",
        ]
        if history:
            actions = ", ".join(action or "(invalid)" for _, action in history)
            lines.append(
                f"Prior to this step, you have taken {len(history)} step(s). Your previous actions: {actions}."
            )
            shown = list(history)[-self.history_length :] if self.history_length else []
            if shown:
                lines.append(f"The last {len(shown)} observations and the actions you took:")
                lines += [f"[Observation: {obs} | Action: {action}]" for obs, action in shown]
        lines.append(f"You are now at step {len(history) + 1} and your current observation is: {observation}")
        lines.append(f"Action templates: {ACTION_TEMPLATES}.")
        if admissible:
            lines.append("Current available actions: " + ", ".join(admissible) + ".")
        lines.append(
            "Now it's your turn to take an action. You should first reason step-by-step about the current situation. "
            "This reasoning process MUST be enclosed within <think> </think> tags. Once you've finished your "
            "reasoning, you should choose an appropriate action for the current step and present it within "
            "<action> </action> tags, e.g. <action>focus on door</action>."
        )
        return "\n".join(lines)
