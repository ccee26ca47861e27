"""Partially observable tasks for memory agents, registered with Gymnasium as ``tmem/<Name>-v0``.

Importing this package registers every task (see :data:`TASK_IDS`). On a Linux machine with no
display, ``MUJOCO_GL`` defaults to ``egl`` so the pixel tasks render offscreen; set it before
importing mujoco to choose another backend.
"""

import os
import sys

if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")

from tmem_agents.envs.registry import TASK_IDS, register_envs  # noqa: E402

register_envs()

__all__ = ["TASK_IDS", "register_envs"]
