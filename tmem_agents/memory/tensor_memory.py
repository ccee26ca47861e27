"""The Tensor Memory: a fixed-size 3-D grid of features per env, read and written by tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import nn

from tmem_agents.memory.config import TensorMemoryConfig
from tmem_agents.memory.update import FactorizedGateConv
from tmem_agents.ops import memory_step

SIGMA_FLOOR = 1e-4


class TensorMemory(nn.Module):
    """Tensor Memory over token sequences ``(B, N, d)``, with state ``{"h", "c"}`` each ``(B, C, D, H, W)``.

    Tokens are grouped in chunks of ``chunk_size``; each chunk is one memory step. Its first token is the
    read input ``x_r``, a learned projection of all its tokens the write input ``x_w``. One coordinate
    head serves both, ``p = tanh(W_coord x)`` in ``[-1, 1]^3`` as ``(x, y, z)`` indexing ``(W, H, D)``, so a
    token that wrote at ``p`` reads from ``p`` when seen again. The write carries ``v = W_v x_w`` with
    spread ``sigma = sigma_scale * (softplus(w_s x_w) + 1e-4)``. Each step reads ``h`` at ``p_r``, then
    writes and updates (:func:`tmem_agents.ops.memory_step`). The chunk's read vector is projected back
    to ``d`` (``out_proj``) and broadcast to its tokens. The state's size never depends on the horizon.
    """

    def __init__(self, config: TensorMemoryConfig, token_dim: int) -> None:
        super().__init__()
        if not isinstance(config, TensorMemoryConfig):
            raise TypeError(f"config must be a TensorMemoryConfig, got {type(config).__name__}")
        if isinstance(token_dim, bool) or not isinstance(token_dim, int) or token_dim < 1:
            raise ValueError(f"token_dim must be an int >= 1, got {token_dim!r}")
        self.config = config
        self.token_dim = token_dim
        channels = config.channels
        self.write_proj = nn.Linear(config.chunk_size * token_dim, token_dim)
        self.coord = nn.Linear(token_dim, 3)
        self.content = nn.Linear(token_dim, channels)
        # the spread's bias is its own parameter so that weight initialisers that zero Linear biases
        # (SB3's orthogonal init) keep writes starting with a non-zero spread
        self.spread = nn.Linear(token_dim, 1, bias=False)
        self.spread_bias = nn.Parameter(torch.tensor(float(config.sigma_bias_init)))
        self.update = FactorizedGateConv(channels)
        self.out_proj = nn.Linear(channels, token_dim)

    @property
    def state_shape(self) -> tuple[int, int, int, int]:
        """``(C, D, H, W)`` of each of ``h`` and ``c``."""
        return (self.config.channels, *self.config.grid)

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> TensorDict:
        """Zero state for ``batch_size`` envs: ``TensorDict(batch_size=[B])`` with ``h`` and ``c``."""
        dtype = dtype or self.out_proj.weight.dtype
        device = device if device is not None else self.out_proj.weight.device
        zeros = torch.zeros(batch_size, *self.state_shape, device=device, dtype=dtype)
        return TensorDict({"h": zeros, "c": zeros.clone()}, batch_size=[batch_size], device=device)

    @staticmethod
    def reset(state: TensorDict, episode_starts: torch.Tensor) -> TensorDict:
        """Zero the state of the envs flagged in ``episode_starts`` ``(B,)``; the others are untouched."""
        keep = (~episode_starts.to(torch.bool, copy=False)).to(state["h"].dtype)
        if keep.shape != tuple(state.batch_size):
            raise ValueError(f"episode_starts must have shape {tuple(state.batch_size)}, got {tuple(keep.shape)}")
        return state.apply(lambda t: t * keep.view(-1, *([1] * (t.dim() - 1))))

    def coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """Shared coordinate head: ``(..., d)`` -> ``(..., 3)`` in ``[-1, 1]``."""
        return torch.tanh(self.coord(x))

    def write_terms(self, x_write: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Content ``(..., C)``, location ``(..., 3)`` and spread ``(...)`` of a write input ``(..., d)``."""
        sigma = self.config.sigma_scale * (
            F.softplus(self.spread(x_write).squeeze(-1) + self.spread_bias) + SIGMA_FLOOR
        )
        return self.content(x_write), self.coordinates(x_write), sigma

    def _check(self, tokens: torch.Tensor, state: TensorDict) -> None:
        if tokens.dim() != 3 or tokens.shape[-1] != self.token_dim:
            raise ValueError(f"tokens must have shape (B, N, {self.token_dim}), got {tuple(tokens.shape)}")
        expected = (tokens.shape[0], *self.state_shape)
        for key in ("h", "c"):
            if key not in state.keys():
                raise ValueError(f"state must hold 'h' and 'c' (from init_state), got keys {sorted(state.keys())}")
            if tuple(state[key].shape) != expected:
                raise ValueError(
                    f"state['{key}'] must have shape {expected} for {tokens.shape[0]} sequences, "
                    f"got {tuple(state[key].shape)}; build it with init_state(batch_size)"
                )
        if self.config.check_inputs and not torch.isfinite(tokens).all():
            raise ValueError("tokens contain NaN or infinite values; check the observations fed to the memory")

    def forward(self, tokens: torch.Tensor, state: TensorDict) -> tuple[torch.Tensor, TensorDict]:
        """Tokens ``(B, N, d)`` and state -> (memory output ``(B, N, d)``, new state)."""
        self._check(tokens, state)
        batch, num, dim = tokens.shape
        chunk = self.config.chunk_size
        pad = (-num) % chunk
        grouped = F.pad(tokens, (0, 0, 0, pad)).view(batch, -1, chunk, dim)
        read_loc = self.coordinates(grouped[:, :, 0])
        values, write_loc, sigma = self.write_terms(self.write_proj(grouped.flatten(2)))
        weights = self.update.weights()
        h, c = state["h"], state["c"]
        reads = []
        for step in range(grouped.shape[1]):
            read, h, c = memory_step(
                h,
                c,
                read_loc[:, step : step + 1],
                values[:, step : step + 1],
                write_loc[:, step : step + 1],
                sigma[:, step : step + 1],
                weights,
                radius=self.config.write_radius,
                padding_mode=self.config.padding_mode,
                backend=self.config.backend,
            )
            reads.append(read)
        out = self.out_proj(torch.cat(reads, dim=1)).repeat_interleave(chunk, dim=1)[:, :num]
        return out, TensorDict({"h": h, "c": c}, batch_size=state.batch_size, device=state.device)
