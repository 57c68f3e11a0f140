"""ALFWorld (PyPI ``alfworld`` with ``textworld[pddl]``) behind the suite interface."""

from datamodules.envs.alfworld.env import TASK_TYPES, AlfWorldTextEnv
from datamodules.envs.alfworld.prompt import AlfWorldPrompt

__all__ = ["TASK_TYPES", "AlfWorldPrompt", "AlfWorldTextEnv"]
