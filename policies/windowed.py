"""Tensor Memory for stock SB3 algorithms: the state rebuilt from zero over a ``VecFrameStack`` window."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from tmem_agents.policies.tensor_memory_extractor import TensorMemoryExtractor


def stack_axis(observation_space: gym.Space, n_stack: int) -> int:
    """The axis on which ``VecFrameStack`` stacks ``n_stack`` frames of ``observation_space``.

    Vectors are stacked on their only axis ``(n_stack * d,)``, channels-first images on their first
    ``(n_stack * C, H, W)``, every other rank-3 Box (channels-last images, and arrays SB3 does not take as
    images) on its last ``(H, W, n_stack * C)``.
    """
    if isinstance(n_stack, bool) or not isinstance(n_stack, int) or n_stack < 1:
        raise ValueError(f"n_stack must be an int >= 1 (the VecFrameStack window), got {n_stack!r}")
    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) not in (1, 3):
        raise TypeError(
            f"the windowed Tensor Memory takes a VecFrameStack of Box vectors or images, got {observation_space}; "
            "use MemoryPPO with TensorMemoryExtractor for other spaces"
        )
    shape = observation_space.shape
    image = is_image_space(observation_space, check_channels=False)
    axis = 0 if len(shape) == 1 or (image and is_image_space_channels_first(observation_space)) else len(shape) - 1
    if shape[axis] % n_stack:
        raise ValueError(
            f"observation axis {axis} has {shape[axis]} entries, not a multiple of n_stack={n_stack}; pass the "
            "n_stack given to VecFrameStack"
        )
    return axis


def frame_space(observation_space: gym.Space, n_stack: int) -> spaces.Box:
    """The space of one frame (the newest) of a ``VecFrameStack`` window of ``n_stack`` frames, in the window's
    layout (stacked on :func:`stack_axis`)."""
    axis = stack_axis(observation_space, n_stack)
    shape = observation_space.shape
    index = [slice(None)] * len(shape)
    index[axis] = slice(shape[axis] // n_stack * (n_stack - 1), None)
    low, high = observation_space.low[tuple(index)], observation_space.high[tuple(index)]
    return spaces.Box(low, high, dtype=observation_space.dtype)


class WindowedTensorMemoryExtractor(BaseFeaturesExtractor):
    """A stateless SB3 feature extractor over ``VecFrameStack`` windows, for any SB3 algorithm (PPO, A2C, SAC, ...).

    Each call splits the window ``(B, n_stack * frame)`` into its ``n_stack`` frames, runs a
    :class:`~tmem_agents.policies.TensorMemoryExtractor` over them from the zero state, and returns the features of
    the newest frame ``(B, features_dim)``. Nothing is carried between calls, so the memory reaches back
    ``n_stack`` steps only, and each call costs ``n_stack`` memory steps; ``MemoryPPO`` carries the state instead.
    Frames before an episode start are zeros (``VecFrameStack`` fills them so).

    Args:
        n_stack: the ``n_stack`` of the ``VecFrameStack``.
        features_dim: output features.
        extractor_kwargs: further :class:`TensorMemoryExtractor` arguments (``token_dim``, ``memory``, ...).
    """

    def __init__(
        self, observation_space: gym.Space, n_stack: int, features_dim: int = 64, **extractor_kwargs: Any
    ) -> None:
        single = frame_space(observation_space, n_stack)
        super().__init__(observation_space, features_dim)
        self.n_stack = n_stack
        self.stacked_last = stack_axis(observation_space, n_stack) == 2
        if self.stacked_last:  # each frame is split off channels-first, its stacked axis moved to the front
            single = spaces.Box(np.moveaxis(single.low, -1, 0), np.moveaxis(single.high, -1, 0), dtype=single.dtype)
        self.extractor = TensorMemoryExtractor(single, features_dim, **extractor_kwargs)

    def frames(self, observations: torch.Tensor) -> torch.Tensor:
        """``(B, ...)`` windows -> ``(n_stack, B, *frame)`` frames, oldest first, the stacked axis first."""
        if self.stacked_last:
            observations = observations.movedim(-1, 1)
        batch = observations.shape[0]
        return observations.reshape(batch, self.n_stack, -1, *observations.shape[2:]).transpose(0, 1)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        frames = self.frames(observations)
        batch = frames.shape[1]
        state = self.extractor.initial_state(batch, observations.device)
        starts = torch.zeros(self.n_stack, batch, device=observations.device)
        features, _ = self.extractor.sequence(frames, state, starts)
        return features[-1]
