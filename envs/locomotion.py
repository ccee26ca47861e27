"""MuJoCo locomotion with velocities hidden and runs of occlusion of every remaining sensor."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv

from tmem_agents.envs.wrappers import BlockOcclusion, MaskObservation


class _OccludedLocomotion(gym.Wrapper):
    """A v5 locomotion env: velocities always read 0; the whole observation vanishes in runs of steps."""

    base_env: type[gym.Env]

    def __init__(
        self,
        occlusion_rate: float = 0.05,
        occlusion_length: tuple[int, int] = (5, 15),
        render_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        base = self.base_env(render_mode=render_mode, **kwargs)
        masked = MaskObservation(base, ["velocities"])
        super().__init__(BlockOcclusion(masked, occlusion_rate, occlusion_length))


class HalfCheetahOccluded(_OccludedLocomotion):
    """HalfCheetah-v5 (obs 17: 8 joint positions, 9 velocities set to 0), with occlusion runs."""

    base_env = HalfCheetahEnv


class HopperOccluded(_OccludedLocomotion):
    """Hopper-v5 (obs 11: 5 joint positions, 6 velocities set to 0), with occlusion runs."""

    base_env = HopperEnv


class Walker2dOccluded(_OccludedLocomotion):
    """Walker2d-v5 (obs 17: 8 joint positions, 9 velocities set to 0), with occlusion runs."""

    base_env = Walker2dEnv
