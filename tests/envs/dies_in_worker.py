"""An environment module that cannot be imported in a worker process (as a missing dependency would).

The test sets ``EPO_TEST_TRAINING_PID`` to its own process id; any other process importing this module fails.
"""

import os

from tests.envs.faulty import FaultyEnv

if os.environ.get("EPO_TEST_TRAINING_PID", str(os.getpid())) != str(os.getpid()):
    raise ImportError("this worker lacks a dependency")


class WorkerlessEnv(FaultyEnv):
    """Works in the training process only."""
