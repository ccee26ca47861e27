"""Memory reacher: Reacher-v5 whose target is shown for the first few steps only."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco.reacher_v5 import ReacherEnv

SUCCESS_DISTANCE = 0.02


def check_hold_schedule(visible_steps: int, hold_steps: int, max_steps: int) -> None:
    """Raise ValueError unless the target is shown for ``visible_steps`` >= 0 steps, the arm is held for
    ``hold_steps`` >= 0 and the episode lasts ``max_steps`` > ``hold_steps``."""
    if not isinstance(visible_steps, (int, np.integer)) or visible_steps < 0:
        raise ValueError(f"visible_steps must be an int >= 0, got {visible_steps!r}")
    if not isinstance(hold_steps, (int, np.integer)) or hold_steps < 0:
        raise ValueError(f"hold_steps must be an int >= 0, got {hold_steps!r}")
    if not isinstance(max_steps, (int, np.integer)) or max_steps <= hold_steps:
        raise ValueError(f"max_steps must be an int > hold_steps ({hold_steps}), got {max_steps!r}")


class MemoryReacherEnv(ReacherEnv):
    """Reacher-v5 with the target visible in the first ``visible_steps`` observations, then hidden.

    Observation (12,): Reacher-v5's ten entries (cos and sin of the two joint angles, target x and
    y, joint velocities, fingertip-minus-target x and y), a flag that is 1 while the target is
    shown and a flag that is 1 once the arm may move; once hidden, the target and
    fingertip-minus-target entries read 0. With ``hold_steps`` > 0 the arm is held (zero torque,
    whatever the action) for the first ``hold_steps`` steps, so it cannot simply park on the target
    while it is shown. Action and reward as Reacher-v5 (the reward counts the torque applied);
    the episode is truncated after ``max_steps`` steps (50). ``info`` gives
    ``distance`` (fingertip to target) and ``is_success`` (distance < ``success_distance``, 0.02)
    at every step, and ``final_distance`` at the last step.
    """

    obs_groups = {
        "joint_angles": [0, 1, 2, 3],
        "target": [4, 5],
        "velocities": [6, 7],
        "fingertip_to_target": [8, 9],
        "target_shown": [10],
        "arm_free": [11],
    }

    def __init__(
        self,
        visible_steps: int = 5,
        hold_steps: int = 0,
        max_steps: int = 50,
        success_distance: float = SUCCESS_DISTANCE,
        **kwargs: Any,
    ) -> None:
        check_hold_schedule(visible_steps, hold_steps, max_steps)
        if not success_distance > 0:
            raise ValueError(f"success_distance must be > 0, got {success_distance!r}")
        super().__init__(**kwargs)
        self.visible_steps, self.hold_steps, self.max_steps = int(visible_steps), int(hold_steps), int(max_steps)
        self.success_distance = float(success_distance)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(12,), dtype=np.float64)
        self._t = 0

    def _get_obs(self) -> np.ndarray:
        obs = np.append(super()._get_obs(), [1.0, float(self._t >= self.hold_steps)])
        if self._t >= self.visible_steps:
            obs[[4, 5, 8, 9, 10]] = 0.0
        return obs

    def distance(self) -> float:
        """Distance from the fingertip to the target in the plane."""
        return float(np.linalg.norm((self.get_body_com("fingertip") - self.get_body_com("target"))[:2]))

    def reset_model(self) -> np.ndarray:
        """Reset the arm and target as Reacher-v5 does and show the target again."""
        self._t = 0
        return super().reset_model()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Step Reacher-v5 (arm held during the first ``hold_steps``), hide the target, report distance."""
        if self._t < self.hold_steps:
            action = np.zeros(self.action_space.shape, dtype=self.action_space.dtype)
        self._t += 1
        obs, reward, terminated, _, info = super().step(action)
        distance = self.distance()
        info["distance"] = distance
        info["is_success"] = distance < self.success_distance
        truncated = self._t >= self.max_steps
        if truncated:
            info["final_distance"] = distance
        return obs, reward, terminated, truncated, info
