"""Spatial recall: objects are shown at random 2-D positions, hidden, then the agent must point to one."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class SpatialRecallEnv(gym.Env):
    """``n_objects`` objects at uniform positions in [-1, 1]^2, shown for ``show_steps`` observations.

    Observation (3 * n_objects + 2,), float32: the (x, y) of every object (0 once hidden), the
    one-hot query naming one object (only at the query), and two flags: objects shown, query.
    After the objects vanish come ``delay`` blank observations, then the query. Action: Box [-1, 1]^2,
    the guessed position, ignored until the query. Reward at the query: ``1 - distance`` between the
    guess and the named object; the episode then terminates, ``show_steps + delay + 1`` steps after
    reset. ``info`` gives ``distance`` and ``is_success`` (distance < ``success_distance``).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        n_objects: int = 3,
        show_steps: int = 3,
        delay: int = 10,
        success_distance: float = 0.1,
    ) -> None:
        if not isinstance(n_objects, (int, np.integer)) or n_objects < 1:
            raise ValueError(f"n_objects must be an int >= 1, got {n_objects!r}")
        if not isinstance(show_steps, (int, np.integer)) or show_steps < 1:
            raise ValueError(f"show_steps must be an int >= 1, got {show_steps!r}")
        if not isinstance(delay, (int, np.integer)) or delay < 0:
            raise ValueError(f"delay must be an int >= 0, got {delay!r}")
        if not success_distance > 0:
            raise ValueError(f"success_distance must be > 0, got {success_distance!r}")
        self.n_objects, self.show_steps, self.delay = int(n_objects), int(show_steps), int(delay)
        self.success_distance = float(success_distance)
        n = self.n_objects
        low = np.concatenate([-np.ones(2 * n), np.zeros(n + 2)]).astype(np.float32)
        self.observation_space = spaces.Box(low, np.ones(3 * n + 2, dtype=np.float32), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.positions = np.zeros((n, 2))
        self.query = 0
        self._query_step = self.show_steps + self.delay
        self._t = 0

    def _obs(self) -> np.ndarray:
        n = self.n_objects
        obs = np.zeros(3 * n + 2, dtype=np.float32)
        if self._t < self.show_steps:
            obs[: 2 * n] = self.positions.reshape(-1)
            obs[-2] = 1.0
        elif self._t == self._query_step:
            obs[2 * n + self.query] = 1.0
            obs[-1] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Draw the positions and the object to ask about; show the objects."""
        super().reset(seed=seed)
        self.positions = self.np_random.uniform(-1.0, 1.0, size=(self.n_objects, 2))
        self.query = int(self.np_random.integers(self.n_objects))
        self._t = 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Advance one step; at the query, score the guess and end the episode."""
        if self._t == self._query_step:
            guess = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
            distance = float(np.linalg.norm(guess - self.positions[self.query]))
            self._t += 1
            info = {"distance": distance, "is_success": distance < self.success_distance}
            return np.zeros_like(self._obs()), 1.0 - distance, True, False, info
        self._t += 1
        return self._obs(), 0.0, False, False, {}
