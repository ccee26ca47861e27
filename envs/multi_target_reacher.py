"""Multi-target reacher: K targets are shown, hidden, and later a cue says which one to reach."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco.reacher_v5 import ReacherEnv

from tmem_agents.envs.memory_reacher import SUCCESS_DISTANCE

TARGET_RADIUS = 0.2
MIN_SEPARATION = 0.05


class MultiTargetReacherEnv(ReacherEnv):
    """The Reacher-v5 arm with ``n_targets`` targets, shown then hidden, and a later cue.

    Targets are drawn in the disk of radius 0.2 (at least 0.05 apart) and exist only in the
    observation; the model's single target body marks the cued one for rendering. Timeline: the
    targets are shown in the first ``show_steps`` observations, then nothing for ``delay`` steps,
    then the one-hot cue stays on until the end (``max_steps``, 50).

    Observation (10 + 3 K,): cos and sin of the joint angles (4), joint velocities (2), fingertip
    x and y (2), every target's x and y (2 K, 0 once hidden), the cue (K), and two flags: targets
    shown, cue on. Action as Reacher-v5. Reward: ``-0.1 |a|^2`` at every step, minus the distance
    from the fingertip to the cued target once the cue is on. ``info`` gives ``distance`` (to the
    cued target) and ``is_success`` (distance < ``success_distance``) at every step and
    ``final_distance`` at the last step.
    """

    def __init__(
        self,
        n_targets: int = 3,
        show_steps: int = 5,
        delay: int = 5,
        max_steps: int = 50,
        success_distance: float = SUCCESS_DISTANCE,
        **kwargs: Any,
    ) -> None:
        if not isinstance(n_targets, (int, np.integer)) or not 1 <= n_targets <= 8:
            raise ValueError(f"n_targets must be an int in [1, 8] (they must fit the arena), got {n_targets!r}")
        if not isinstance(show_steps, (int, np.integer)) or show_steps < 1:
            raise ValueError(f"show_steps must be an int >= 1, got {show_steps!r}")
        if not isinstance(delay, (int, np.integer)) or delay < 0:
            raise ValueError(f"delay must be an int >= 0, got {delay!r}")
        if not isinstance(max_steps, (int, np.integer)) or max_steps <= show_steps + delay:
            raise ValueError(f"max_steps must be an int > show_steps + delay ({show_steps + delay}), got {max_steps!r}")
        if not success_distance > 0:
            raise ValueError(f"success_distance must be > 0, got {success_distance!r}")
        self.n_targets, self.show_steps, self.delay = int(n_targets), int(show_steps), int(delay)
        self.max_steps, self.success_distance = int(max_steps), float(success_distance)
        self.targets = np.zeros((self.n_targets, 2))
        self.cue = 0
        self._t = 0
        super().__init__(**kwargs)
        k = self.n_targets
        self.obs_groups = {
            "joint_angles": [0, 1, 2, 3],
            "velocities": [4, 5],
            "fingertip": [6, 7],
            "targets": list(range(8, 8 + 2 * k)),
            "cue": list(range(8 + 2 * k, 8 + 3 * k)),
            "flags": [8 + 3 * k, 9 + 3 * k],
        }
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(10 + 3 * k,), dtype=np.float64)

    @property
    def cue_on(self) -> bool:
        """Whether the cue is shown in the current observation."""
        return self._t >= self.show_steps + self.delay

    def _fingertip(self) -> np.ndarray:
        return self.get_body_com("fingertip")[:2].copy()

    def distance(self) -> float:
        """Distance from the fingertip to the cued target."""
        return float(np.linalg.norm(self._fingertip() - self.targets[self.cue]))

    def _get_obs(self) -> np.ndarray:
        k = self.n_targets
        theta = self.data.qpos[:2]
        obs = np.zeros(10 + 3 * k)
        obs[0:2], obs[2:4] = np.cos(theta), np.sin(theta)
        obs[4:6] = self.data.qvel[:2]
        obs[6:8] = self._fingertip()
        if self._t < self.show_steps:
            obs[8 : 8 + 2 * k] = self.targets.reshape(-1)
            obs[8 + 3 * k] = 1.0
        if self.cue_on:
            obs[8 + 2 * k + self.cue] = 1.0
            obs[9 + 3 * k] = 1.0
        return obs

    def _draw_targets(self) -> np.ndarray:
        while True:
            radius = TARGET_RADIUS * np.sqrt(self.np_random.uniform(size=self.n_targets))
            angle = self.np_random.uniform(0.0, 2 * np.pi, size=self.n_targets)
            targets = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
            gaps = np.linalg.norm(targets[:, None] - targets[None], axis=-1) + np.eye(self.n_targets)
            if np.all(gaps >= MIN_SEPARATION):
                return targets

    def reset_model(self) -> np.ndarray:
        """Arm as in Reacher-v5; new targets and cue."""
        self._t = 0
        qpos = self.init_qpos + self.np_random.uniform(low=-0.1, high=0.1, size=self.model.nq)
        qvel = self.init_qvel + self.np_random.uniform(low=-0.005, high=0.005, size=self.model.nv)
        self.targets = self._draw_targets()
        self.cue = int(self.np_random.integers(self.n_targets))
        qpos[-2:] = self.targets[self.cue]
        qvel[-2:] = 0.0
        self.set_state(qpos, qvel)
        return self._get_obs()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Move the arm; score the reach once the cue is on."""
        action = np.asarray(action, dtype=np.float64)
        self.do_simulation(action, self.frame_skip)
        self._t += 1
        distance = self.distance()
        reward_ctrl = -self._reward_control_weight * float(np.square(action).sum())
        reward_dist = -distance * self._reward_dist_weight if self.cue_on else 0.0
        info: dict[str, Any] = {
            "reward_dist": reward_dist,
            "reward_ctrl": reward_ctrl,
            "distance": distance,
            "is_success": distance < self.success_distance,
        }
        truncated = self._t >= self.max_steps
        if truncated:
            info["final_distance"] = distance
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward_dist + reward_ctrl, False, truncated, info
