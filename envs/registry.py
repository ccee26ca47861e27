"""The task table and its registration with Gymnasium under the ``tmem/`` namespace."""

from __future__ import annotations

from typing import Any, NamedTuple

import gymnasium as gym


class Task(NamedTuple):
    """A registered task: its id, entry point, time limit (None: the task ends itself) and kwargs."""

    id: str
    entry_point: str
    max_episode_steps: int | None
    kwargs: dict[str, Any] = {}


TASKS: tuple[Task, ...] = (
    Task("tmem/CartPoleOccluded-v0", "tmem_agents.envs.classic:CartPoleOccluded", 500),
    Task("tmem/PendulumOccluded-v0", "tmem_agents.envs.classic:PendulumOccluded", 200),
    Task("tmem/CueRecall-v0", "tmem_agents.envs.cue_recall:CueRecallEnv", None),
    Task("tmem/SpatialRecall-v0", "tmem_agents.envs.spatial_recall:SpatialRecallEnv", None),
    Task("tmem/HalfCheetahOccluded-v0", "tmem_agents.envs.locomotion:HalfCheetahOccluded", 1000),
    Task("tmem/HopperOccluded-v0", "tmem_agents.envs.locomotion:HopperOccluded", 1000),
    Task("tmem/Walker2dOccluded-v0", "tmem_agents.envs.locomotion:Walker2dOccluded", 1000),
    Task("tmem/MemoryReacher-v0", "tmem_agents.envs.memory_reacher:MemoryReacherEnv", 50),
    Task(
        "tmem/MemoryReacherHold-v0",
        "tmem_agents.envs.memory_reacher:MemoryReacherEnv",
        60,
        {"hold_steps": 15, "max_steps": 60},
    ),
    Task("tmem/MultiTargetReacher-v0", "tmem_agents.envs.multi_target_reacher:MultiTargetReacherEnv", 50),
    Task("tmem/PixelReacher-v0", "tmem_agents.envs.pixel_reacher:PixelReacherEnv", 100),
    Task("tmem/PixelMemoryReacher-v0", "tmem_agents.envs.pixel_reacher:PixelMemoryReacherEnv", 60),
)

TASK_IDS: tuple[str, ...] = tuple(task.id for task in TASKS)


def register_envs() -> None:
    """Register every task with Gymnasium; ids already registered are left as they are."""
    for task in TASKS:
        if task.id not in gym.registry:
            gym.register(
                id=task.id,
                entry_point=task.entry_point,
                max_episode_steps=task.max_episode_steps,
                kwargs=dict(task.kwargs),
            )
