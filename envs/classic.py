"""Classic control with hidden velocities and runs of block occlusion: CartPole and Pendulum."""

from __future__ import annotations

import gymnasium as gym
from gymnasium.envs.classic_control import CartPoleEnv, PendulumEnv

from tmem_agents.envs.wrappers import BlockOcclusion, MaskObservation


class CartPoleOccluded(gym.Wrapper):
    """CartPole-v1 whose velocities always read 0 and whose positions vanish in runs of 5-15 steps.

    Observation (4,): cart position, 0, pole angle, 0. A run of occlusion starts with probability
    ``occlusion_rate`` at each visible step. Action and reward as CartPole-v1 (500 steps).
    """

    def __init__(
        self,
        occlusion_rate: float = 0.05,
        occlusion_length: tuple[int, int] = (5, 15),
        render_mode: str | None = None,
    ) -> None:
        base = CartPoleEnv(render_mode=render_mode)
        masked = MaskObservation(base, ["velocities"])
        super().__init__(BlockOcclusion(masked, occlusion_rate, occlusion_length, entries=["positions"]))


class PendulumOccluded(gym.Wrapper):
    """Pendulum-v1 whose angular velocity always reads 0 and whose angle vanishes in runs of 5-15 steps.

    Observation (3,): cos(theta), sin(theta), 0. Action and reward as Pendulum-v1 (200 steps).
    """

    def __init__(
        self,
        occlusion_rate: float = 0.05,
        occlusion_length: tuple[int, int] = (5, 15),
        render_mode: str | None = None,
    ) -> None:
        base = PendulumEnv(render_mode=render_mode)
        masked = MaskObservation(base, ["velocities"])
        super().__init__(BlockOcclusion(masked, occlusion_rate, occlusion_length, entries=["positions"]))
