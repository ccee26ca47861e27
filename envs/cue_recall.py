"""Cue recall: one of K cues is shown once, then a delay of blank steps, then the agent must name it."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


def _delay_range(delay: int | tuple[int, int]) -> tuple[int, int]:
    pair = (delay, delay) if isinstance(delay, (int, np.integer)) else tuple(delay)
    if not (
        len(pair) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair)
        and 0 <= pair[0] <= pair[1]
    ):
        raise ValueError(f"delay must be an int >= 0 or a (low, high) pair with 0 <= low <= high, got {delay!r}")
    return int(pair[0]), int(pair[1])


class CueRecallEnv(gym.Env):
    """A cue among ``n_cues`` is shown at reset; after ``delay`` blank steps a query asks for it.

    Observation (n_cues + 1,), float32 in [0, 1]: the one-hot cue (only in the reset observation),
    then a query flag (1 only in the observation where the answer is due). Action: Discrete(n_cues),
    ignored until the query. Reward: +1 for naming the cue at the query, else 0; the episode then
    terminates, ``delay + 2`` steps after reset. ``delay`` may be a (low, high) pair, drawn per
    episode. ``info["is_success"]`` is set at the last step.
    """

    metadata = {"render_modes": []}

    def __init__(self, n_cues: int = 3, delay: int | tuple[int, int] = 16) -> None:
        if not isinstance(n_cues, (int, np.integer)) or n_cues < 2:
            raise ValueError(f"n_cues must be an int >= 2, got {n_cues!r}")
        self.n_cues = int(n_cues)
        self.delay = _delay_range(delay)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(self.n_cues + 1,), dtype=np.float32)
        self.action_space = spaces.Discrete(self.n_cues)
        self._cue = 0
        self._query_step = 0
        self._t = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.n_cues + 1, dtype=np.float32)
        if self._t == 0:
            obs[self._cue] = 1.0
        elif self._t == self._query_step:
            obs[-1] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Draw the cue (and the delay) and show the cue."""
        super().reset(seed=seed)
        self._cue = int(self.np_random.integers(self.n_cues))
        self._query_step = int(self.np_random.integers(self.delay[0], self.delay[1] + 1)) + 1
        self._t = 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Advance one step; at the query, score the action and end the episode."""
        if self._t == self._query_step:
            correct = int(action) == self._cue
            self._t += 1
            blank = np.zeros(self.n_cues + 1, dtype=np.float32)
            return blank, float(correct), True, False, {"is_success": correct}
        self._t += 1
        return self._obs(), 0.0, False, False, {}
