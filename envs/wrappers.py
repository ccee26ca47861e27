"""Observation wrappers that hide parts of a Box observation: masks, occlusion runs, flicker, dropout.

Every wrapper draws its randomness from the wrapped env's ``np_random``, so ``reset(seed=...)``
reproduces a run exactly. Hidden entries are set to 0, so 0 must lie inside their bounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from tmem_agents.envs.obs_groups import resolve_entries
from tmem_agents.envs.occluders import MovingOccluders

Entries = Sequence[int | str] | None


def _box_space(env: gym.Env, wrapper: str) -> spaces.Box:
    space = env.observation_space
    if not isinstance(space, spaces.Box):
        raise ValueError(
            f"{wrapper} needs a Box observation space, got {type(space).__name__}; "
            "flatten the observation first (gymnasium.wrappers.FlattenObservation)"
        )
    return space


def _probability(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}; it is a probability per step")
    return float(value)


def _selected(env: gym.Env, space: spaces.Box, entries: Entries, wrapper: str) -> np.ndarray | None:
    """Flat indices chosen by ``entries`` (None: the whole observation); checks 0 is within bounds."""
    if entries is None:
        low, high = space.low.reshape(-1), space.high.reshape(-1)
        idx = None
    else:
        if len(space.shape) != 1:
            raise ValueError(
                f"{wrapper}: entries can only be chosen in a 1-D observation, this one has shape "
                f"{space.shape}; pass entries=None to hide the whole observation"
            )
        idx = resolve_entries(env, entries, space.shape[0])
        low, high = space.low[idx], space.high[idx]
    if np.any(low > 0) or np.any(high < 0):
        raise ValueError(
            f"{wrapper} sets hidden entries to 0, but 0 is outside the bounds of some of them "
            f"(low {np.min(low)}, high {np.max(high)}); shift or rescale the observation first"
        )
    return idx


def _blank(obs: np.ndarray, idx: np.ndarray | None) -> np.ndarray:
    out = np.array(obs, copy=True)
    if idx is None:
        out[...] = 0
    else:
        out[idx] = 0
    return out


class MaskObservation(gym.ObservationWrapper):
    """Sets chosen entries of a 1-D observation to 0 at every step.

    ``hide`` holds indices and/or group names (e.g. ``"velocities"``, see
    :func:`tmem_agents.envs.obs_groups.observation_groups`).
    """

    def __init__(self, env: gym.Env, hide: Sequence[int | str]) -> None:
        super().__init__(env)
        space = _box_space(env, "MaskObservation")
        if hide is None:
            raise ValueError("MaskObservation needs `hide`: indices or group names to set to 0")
        self.hidden = _selected(env, space, hide, "MaskObservation")

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """The observation with the hidden entries set to 0."""
        return _blank(observation, self.hidden)


class BlockOcclusion(gym.Wrapper):
    """Runs of occlusion: the observation (or ``entries``) reads 0 for ``k`` consecutive steps.

    At each step that follows a visible observation, a run starts with probability ``rate``; its
    length ``k`` is drawn uniformly from ``length`` (both ends included), and the run covers that
    step and the next ``k - 1``. Runs are thus separated by at least one visible observation, and
    the reset observation is always visible. The fraction of
    occluded steps is about ``rate * mean(k) / (1 + rate * mean(k))``. ``info["occluded"]`` tells
    whether the step's observation was hidden.
    """

    def __init__(
        self,
        env: gym.Env,
        rate: float = 0.05,
        length: tuple[int, int] = (5, 15),
        entries: Entries = None,
    ) -> None:
        super().__init__(env)
        space = _box_space(env, "BlockOcclusion")
        self.rate = _probability(rate, "rate")
        if (
            len(length) != 2
            or not all(isinstance(v, (int, np.integer)) for v in length)
            or not 1 <= length[0] <= length[1]
        ):
            raise ValueError(f"length must be two ints (low, high) with 1 <= low <= high, got {length!r}")
        self.length = (int(length[0]), int(length[1]))
        self.hidden = _selected(env, space, entries, "BlockOcclusion")
        self._remaining = 0
        self._was_occluded = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset the env and end any occlusion run."""
        obs, info = self.env.reset(seed=seed, options=options)
        self._remaining = 0
        self._was_occluded = False
        info["occluded"] = False
        return obs, info

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the env; hide the observation while a run lasts."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        rng = self.np_random
        if not self._was_occluded and rng.random() < self.rate:
            self._remaining = int(rng.integers(self.length[0], self.length[1] + 1))
        occluded = self._remaining > 0
        if occluded:
            self._remaining -= 1
            obs = _blank(obs, self.hidden)
        self._was_occluded = occluded
        info["occluded"] = occluded
        return obs, reward, terminated, truncated, info


class Flicker(gym.Wrapper):
    """Blanks the whole observation (all 0) with probability ``p`` at each step.

    The reset observation is always visible; ``info["blanked"]`` tells whether a step's was hidden.
    """

    def __init__(self, env: gym.Env, p: float = 0.5) -> None:
        super().__init__(env)
        _selected(env, _box_space(env, "Flicker"), None, "Flicker")
        self.p = _probability(p, "p")

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset the env."""
        obs, info = self.env.reset(seed=seed, options=options)
        info["blanked"] = False
        return obs, info

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the env; blank the observation with probability ``p``."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        blanked = bool(self.np_random.random() < self.p)
        if blanked:
            obs = _blank(obs, None)
        info["blanked"] = blanked
        return obs, reward, terminated, truncated, info


class SensorDropout(gym.ObservationWrapper):
    """Each entry of a 1-D observation reads 0 with probability ``p``, independently, every step.

    With ``expose_mask=True`` a 0/1 vector (1 = entry observed) is appended to the observation, so
    a policy can tell a dropped sensor from a true 0.
    """

    def __init__(self, env: gym.Env, p: float = 0.1, expose_mask: bool = False) -> None:
        super().__init__(env)
        space = _box_space(env, "SensorDropout")
        if len(space.shape) != 1:
            raise ValueError(
                f"SensorDropout needs a 1-D observation, got shape {space.shape}; "
                "flatten it first (gymnasium.wrappers.FlattenObservation)"
            )
        _selected(env, space, None, "SensorDropout")
        self.p = _probability(p, "p")
        self.expose_mask = bool(expose_mask)
        self.kept = np.ones(space.shape, dtype=bool)
        if self.expose_mask:
            n = space.shape[0]
            self.observation_space = spaces.Box(
                low=np.concatenate([space.low, np.zeros(n, dtype=space.dtype)]),
                high=np.concatenate([space.high, np.ones(n, dtype=space.dtype)]),
                dtype=space.dtype,
            )

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """The observation with dropped entries set to 0 (and the kept-mask appended if exposed)."""
        self.kept = self.np_random.random(observation.shape) >= self.p
        out = np.where(self.kept, observation, 0).astype(observation.dtype)
        if self.expose_mask:
            out = np.concatenate([out, self.kept.astype(observation.dtype)])
        return out


class PixelOccluder(gym.Wrapper):
    """Draws moving shapes over uint8 image observations (height, width, channels).

    ``n`` shapes (``"rect"``, ``"disc"``, or a full-height ``"bar"``) of ``size`` pixels move at a
    speed drawn from ``speed`` (pixels per step) and bounce off the borders; covered pixels take
    ``color``. Positions are redrawn at each reset.
    """

    def __init__(
        self,
        env: gym.Env,
        n: int = 1,
        size: tuple[int, int] = (20, 20),
        speed: tuple[float, float] = (1.0, 3.0),
        shape: str = "rect",
        color: Sequence[int] | int = 0,
    ) -> None:
        super().__init__(env)
        space = _box_space(env, "PixelOccluder")
        if space.dtype != np.uint8 or len(space.shape) != 3:
            raise ValueError(
                f"PixelOccluder needs uint8 images of shape (height, width, channels), got dtype "
                f"{space.dtype} and shape {space.shape}; render pixels first (e.g. AddRenderObservation)"
            )
        height, width, channels = space.shape
        color_arr = np.asarray(color)
        if color_arr.ndim == 0:
            color_arr = np.full(channels, color_arr)
        if color_arr.shape != (channels,) or np.any(color_arr < 0) or np.any(color_arr > 255):
            raise ValueError(f"color must be one int or {channels} ints in [0, 255] (one per channel), got {color!r}")
        self.color = color_arr.astype(np.uint8)
        self.occluders = MovingOccluders(height, width, n=n, size=size, speed=speed, shape=shape)
        self.covered = np.zeros((height, width), dtype=bool)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset the env and redraw the occluders."""
        obs, info = self.env.reset(seed=seed, options=options)
        self.occluders.reset(self.np_random)
        return self._draw(obs), info

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the env and move the occluders."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.occluders.step()
        return self._draw(obs), reward, terminated, truncated, info

    def _draw(self, frame: np.ndarray) -> np.ndarray:
        self.covered = self.occluders.mask()
        out = np.array(frame, copy=True)
        out[self.covered] = self.color
        return out
