"""Turn a model response into an environment action (the released code's ``<action>`` tags).

The action is the text between the first ``<action>`` and the next ``</action>``. A response without the tags, with
an empty action, with CJK characters, or (when required) without ``<think> </think>`` is invalid: the rollout sends
nothing to the environment, counts the turn as invalid and applies the invalid-action penalty. Garbage never raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from epo_lightning.action_format import ACTION_CLOSE, ACTION_OPEN

_ACTION = re.compile(re.escape(ACTION_OPEN) + r"(.*?)" + re.escape(ACTION_CLOSE), re.DOTALL)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


@dataclass(frozen=True)
class ParsedAction:
    """The outcome of parsing: ``action`` is what the environment receives ("" when ``ok`` is False)."""

    action: str
    ok: bool


def parse_action(response: str, require_think: bool = False, lowercase: bool = True) -> ParsedAction:
    """Extract the action from a response.

    Args:
        response: decoded model output.
        require_think: also require a ``<think>...</think>`` block (the released code's rule for chat models).
        lowercase: lowercase the action (ALFWorld and the embedded suite are lowercase).

    Returns:
        The parsed action; ``ok`` is False for any malformed response.
    """
    match = _ACTION.search(response)
    if (
        match is None
        or _CJK.search(response)
        or (require_think and not re.search(r"<think>.*?</think>", response, re.S))
    ):
        return ParsedAction("", False)
    action = " ".join(match.group(1).split())
    if lowercase:
        action = action.lower()
    return ParsedAction(action, bool(action))
