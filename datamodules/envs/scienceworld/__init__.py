"""ScienceWorld (PyPI ``scienceworld``, its bundled jar, Java 17) behind the suite interface."""

from datamodules.envs.scienceworld.env import OOD_TASK_IDS, ScienceWorldTextEnv
from datamodules.envs.scienceworld.prompt import ScienceWorldPrompt

__all__ = ["OOD_TASK_IDS", "ScienceWorldPrompt", "ScienceWorldTextEnv"]
