"""A scripted policy that replays a fixed action sequence, for the integration tests of the real environments."""

from collections.abc import Sequence

from epo_lightning.tiny_preset import build_word_tokenizer, response_ids


class ReplayPolicy:
    """Answers every prompt of turn t with ``<action> actions[t] </action>`` (a group playing one task).

    Its tokenizer knows only the words of the actions: prompts encode to mostly unknown tokens, which a replay
    does not read.
    """

    def __init__(self, actions: Sequence[str]) -> None:
        self.actions = list(actions)
        self.tokenizer = build_word_tokenizer(sorted({word for action in actions for word in action.split()}))
        self.turn = 0

    def generate(self, prompts, evaluation=False):
        action = self.actions[min(self.turn, len(self.actions) - 1)]
        self.turn += 1
        return [response_ids(self.tokenizer, action) for _ in prompts]
