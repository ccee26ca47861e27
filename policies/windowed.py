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


def _sb3_stacks_first(frame: spaces.Box) -> bool:
    """Whether ``VecFrameStack(channels_order=None)`` stacks frames of ``frame`` on their first axis: a
    channels-first image by SB3's rule (the smallest axis first); everything else goes on the last."""
    return is_image_space(frame, check_channels=False) and is_image_space_channels_first(frame)


def _frame(observation_space: spaces.Box, n_stack: int, axis: int) -> spaces.Box:
    """The newest of the ``n_stack`` frames stacked on ``axis``."""
    index = [slice(None)] * len(observation_space.shape)
    index[axis] = slice(observation_space.shape[axis] // n_stack * (n_stack - 1), None)
    low, high = observation_space.low[tuple(index)], observation_space.high[tuple(index)]
    return spaces.Box(low, high, dtype=observation_space.dtype)


def stack_axis(observation_space: gym.Space, n_stack: int, channels_order: str | None = None) -> int:
    """The axis on which ``VecFrameStack(n_stack, channels_order)`` stacked the frames of a window.

    ``channels_order`` is ``VecFrameStack``'s: ``"first"`` or ``"last"``, or ``None`` for its own choice, which
    depends on one frame's shape: channels-first images ``(C, H, W)`` are stacked on their first axis
    ``(n_stack * C, H, W)``, every other Box on its last (``(n_stack * d,)``, ``(H, W, n_stack * C)``). With
    ``None`` the axis is the one whose frame that choice would stack there; a window that two frame shapes
    could give (``(12, 8, 8)``: four ``(3, 8, 8)`` or four ``(12, 8, 2)``) needs ``channels_order``.
    """
    if isinstance(n_stack, bool) or not isinstance(n_stack, int) or n_stack < 1:
        raise ValueError(f"n_stack must be an int >= 1 (the VecFrameStack window), got {n_stack!r}")
    if channels_order not in (None, "first", "last"):
        raise ValueError(f"channels_order must be 'first', 'last' or None, as VecFrameStack's; got {channels_order!r}")
    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) not in (1, 3):
        raise TypeError(
            f"the windowed Tensor Memory takes a VecFrameStack of Box vectors or images, got {observation_space}; "
            "use MemoryPPO with TensorMemoryExtractor for other spaces"
        )
    shape = observation_space.shape
    last = len(shape) - 1
    if channels_order is not None or last == 0:
        axis = 0 if channels_order == "first" else last
        if shape[axis] % n_stack:
            raise ValueError(
                f"observation axis {axis} has {shape[axis]} entries, not a multiple of n_stack={n_stack}; pass the "
                "n_stack (and channels_order) given to VecFrameStack"
            )
        return axis
    axes = [
        axis
        for axis in (0, last)
        if shape[axis] % n_stack == 0 and _sb3_stacks_first(_frame(observation_space, n_stack, axis)) == (axis == 0)
    ]
    if not axes:
        raise ValueError(
            f"no frame of a window {shape} is stacked {n_stack} times the way VecFrameStack stacks it; pass the "
            "n_stack (and channels_order) given to VecFrameStack"
        )
    if len(axes) == 2:
        raise ValueError(
            f"a window {shape} of {n_stack} frames may be stacked on axis 0 or {last} (frames of "
            f"{_frame(observation_space, n_stack, 0).shape} or {_frame(observation_space, n_stack, last).shape}); "
            "pass channels_order='first' or 'last' as VecFrameStack was given, or the order it chose"
        )
    return axes[0]


def frame_space(observation_space: gym.Space, n_stack: int, channels_order: str | None = None) -> spaces.Box:
    """The space of one frame (the newest) of a ``VecFrameStack`` window of ``n_stack`` frames, in the window's
    layout (stacked on :func:`stack_axis`)."""
    return _frame(observation_space, n_stack, stack_axis(observation_space, n_stack, channels_order))


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
        channels_order: the ``VecFrameStack``'s ``channels_order`` (``None``: :func:`stack_axis` works out the
            axis it chose).
        extractor_kwargs: further :class:`TensorMemoryExtractor` arguments (``token_dim``, ``memory``, ...).
    """

    def __init__(
        self,
        observation_space: gym.Space,
        n_stack: int,
        features_dim: int = 64,
        channels_order: str | None = None,
        **extractor_kwargs: Any,
    ) -> None:
        axis = stack_axis(observation_space, n_stack, channels_order)
        single = _frame(observation_space, n_stack, axis)
        super().__init__(observation_space, features_dim)
        self.n_stack = n_stack
        self.stacked_last = axis == 2
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
