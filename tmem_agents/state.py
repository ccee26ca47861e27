"""Zeroing the recurrent state of the envs whose episode starts: the one reset rule of the project."""

from __future__ import annotations

import numpy as np
import torch
from tensordict import TensorDict


def zero_rows(tensor: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """``tensor (B, ...)`` with the rows flagged in ``starts (B,)`` set to zero."""
    keep = 1.0 - starts.to(device=tensor.device, dtype=tensor.dtype)
    return tensor * keep.view(-1, *([1] * (tensor.dim() - 1)))


def reset_state(state: TensorDict, episode_starts: torch.Tensor | np.ndarray) -> TensorDict:
    """Zero every entry of ``state`` (``batch_size=[B]``) for the envs flagged in ``episode_starts (B,)``."""
    starts = torch.as_tensor(np.asarray(episode_starts) if not torch.is_tensor(episode_starts) else episode_starts)
    if tuple(starts.shape) != tuple(state.batch_size):
        raise ValueError(
            f"episode_starts must have shape {tuple(state.batch_size)} (one flag per env), got {tuple(starts.shape)}"
        )
    if state.is_empty():
        return state
    return state.apply(lambda t: zero_rows(t, starts))
