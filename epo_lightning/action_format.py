"""The tags that wrap an agent's action: what the rollout's parser reads and the tiny preset learns to answer in.

Prompts (``datamodules.prompts``) ask for them and the action parser reads them; the tiny preset's format prior
(``epo_lightning.tiny_preset``) builds its canonical responses from them. Both planes share them from here, so the
learning plane does not import the data plane (docs/architecture.md).
"""

ACTION_OPEN = "<action>"
ACTION_CLOSE = "</action>"
