"""The Tensor Memory: a fixed-size 3-D grid of features per env, read and written by tokens."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import nn

from tmem_agents.memory.config import TensorMemoryConfig
from tmem_agents.memory.update import FactorizedGateConv
from tmem_agents.ops import cpu_kernel, memory_step, splat_write, trilinear_read, write_mass
from tmem_agents.ops.recurrence import recurrence
from tmem_agents.running_standardize import RunningStandardize
from tmem_agents.state import reset_state, zero_rows

SIGMA_FLOOR = 1e-4


class TensorMemory(nn.Module):
    """Tensor Memory over token sequences ``(B, N, d)``, with state ``{"h", "c"}`` each ``(B, C, D, H, W)``.

    Tokens are grouped in chunks of ``chunk_size``; each chunk is one memory step. Its first token is the read input
    ``x_r``, a learned projection of all its tokens (or of the same chunk of ``write_tokens``) the write input
    ``x_w``. One coordinate head serves both, ``p = tanh(W_coord x)`` in ``[-1, 1]^3`` as ``(x, y, z)`` indexing
    ``(W, H, D)``, so a token that wrote at ``p`` reads from ``p`` when seen again. The write carries ``v = W_v
    x_w`` with spread ``sigma = sigma_scale * (softplus(w_s x_w + b_s) + 1e-4)`` (and, with ``input_gates``,
    ``W_gate x_w`` added to every cell's gates). Each step reads ``h`` at ``p_r`` (or at
    the 8 corners of a cube around it, ``read_cube``; or reads every cell, ``read_grid``), then writes and updates
    (:func:`tmem_agents.ops.memory_step`); with ``read_after_write`` it reads the state after its write instead.
    The chunk's read vector is projected back to ``d`` (``out_proj``) and broadcast to its tokens. With
    ``per_token`` every token of the chunk is a read input and (projected on its own) a write input, and receives
    its own read. The state's size never depends on the horizon.

    ``places`` ``(chunk_size, 3)`` (with ``per_token``) ties the tokens to places in the grid: token ``n`` reads
    and writes at ``p = tanh(W_coord x + atanh(place_n))``, so it starts at its place (an image cell's centre,
    :func:`~tmem_agents.policies.tokenizers.token_places`) and the coordinate head learns offsets from there; a
    NaN place leaves that token's coordinates to the head alone. With ``inner_places`` the places are first laid
    over the grid's inner cells (:class:`TensorMemoryConfig`).
    """

    def __init__(self, config: TensorMemoryConfig, token_dim: int, places: torch.Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(config, TensorMemoryConfig):
            raise TypeError(f"config must be a TensorMemoryConfig, got {type(config).__name__}")
        if isinstance(token_dim, bool) or not isinstance(token_dim, int) or token_dim < 1:
            raise ValueError(f"token_dim must be an int >= 1, got {token_dim!r}")
        self.config = config
        self.token_dim = token_dim
        channels = config.channels
        # read and write inputs per chunk: the chunk (its first token reads, all its tokens write), or each token
        self.inputs_per_chunk = config.chunk_size if config.per_token else 1
        self.write_proj = nn.Linear(config.chunk_size // self.inputs_per_chunk * token_dim, token_dim)
        self.coord = nn.Linear(token_dim, 3)
        self.content = nn.Linear(token_dim, channels)
        # the spread's bias is its own parameter so that weight initialisers that zero Linear biases
        # (SB3's orthogonal init) keep writes starting with a non-zero spread
        self.spread = nn.Linear(token_dim, 1, bias=False)
        self.spread_bias = nn.Parameter(torch.tensor(float(config.sigma_bias_init)))
        self.strength = self.strength_bias = None
        if config.local_update:
            self.strength = nn.Linear(token_dim, 1, bias=False)
            self.strength_bias = nn.Parameter(torch.tensor(float(config.strength_bias_init)))
        self.gate_proj = nn.Linear(token_dim, 4 * channels, bias=False) if config.input_gates else None
        self._zero_write_heads()
        self.update = FactorizedGateConv(channels, config.forget_bias_init, config.forget_timescale_max)
        corners = torch.tensor([[x, y, z] for z in (-1.0, 1.0) for y in (-1.0, 1.0) for x in (-1.0, 1.0)])
        offsets = config.read_cube * corners if config.read_cube > 0 else torch.zeros(1, 3)
        self.register_buffer("read_offsets", offsets, persistent=False)
        read_width = channels * (math.prod(config.grid) if config.read_grid else len(offsets))
        self.read_norm = nn.Identity()
        if config.read_norm:
            self.read_norm = nn.LayerNorm(read_width)
        elif config.read_standardize:
            self.read_norm = RunningStandardize(read_width)
        self.out_proj = nn.Linear(read_width, token_dim)
        self.register_buffer("place_logits", self._place_logits(places), persistent=False)

    def _place_logits(self, places: torch.Tensor | None) -> torch.Tensor | None:
        """``atanh`` of the tokens' places ``(chunk_size, 3)``, 0 where a token has none; ``None`` without places."""
        if places is None:
            if self.config.inner_places:
                raise ValueError(
                    "inner_places lays the tokens' places over the grid's inner cells, but the tokens have no places: "
                    "give places (the extractor's image_stem='cells' with per_token=True) or set inner_places=False"
                )
            return None
        expected = (self.config.chunk_size, 3)
        if not self.config.per_token:
            raise ValueError(
                "places tie each token's read and write to a place in the grid, which needs every token to read "
                "and write on its own: set per_token=True"
            )
        if tuple(places.shape) != expected:
            raise ValueError(f"places must have shape {expected} (one per token of a chunk), got {tuple(places.shape)}")
        placed = places[~places.isnan()]
        if placed.numel() and placed.abs().max() >= 1:
            raise ValueError("places must lie strictly inside (-1, 1), where tanh reaches; NaN for no place")
        places = places.float()
        if self.config.inner_places:
            sizes = torch.tensor(self.config.grid[::-1], dtype=torch.float32)  # (x, y, z) index (W, H, D)
            flat = ((places != 0) & ~places.isnan()).any(dim=0) & (sizes < 3)
            if flat.any():
                raise ValueError(
                    f"inner_places lays the places over the grid's inner cells, which needs >= 3 cells on every "
                    f"axis on which a place is not 0; the grid {self.config.grid} (D, H, W) has fewer on "
                    f"{[axis for axis, f in zip('xyz', flat.tolist(), strict=True) if f]}"
                )
            places = places * (sizes - 2) / (sizes - 1)
        return torch.atanh(places).nan_to_num(nan=0.0)

    def _zero_write_heads(self) -> None:
        nn.init.zeros_(self.write_proj.bias)
        nn.init.zeros_(self.content.bias)
        nn.init.zeros_(self.spread.weight)
        if self.strength is not None:
            nn.init.zeros_(self.strength.weight)

    def reset_write_heads(self) -> None:
        """Re-draw the coordinate, content and gate-input heads as ``nn.Linear`` does, zero the write input's
        and the content's biases, and zero the spread and strength weights.

        The memory's own start: coordinates near the centre for every token, so reads and writes start close
        together; contents small enough that the gates pass them nearly linearly, and zero for zero tokens,
        so that from an empty state zero tokens leave the state exactly empty; and every write with the
        spread and strength their biases give (``sigma_bias_init``, ``strength_bias_init``), so what a write
        leaves in the grid is set by its content until training makes where and how wide it writes depend on
        the token. With ``places`` the coordinate head starts at zero instead, so every token starts reading
        and writing at its place (a token without one at the centre). Policies call this after their own initialisation.
        """
        self.coord.reset_parameters()
        if self.place_logits is not None:
            nn.init.zeros_(self.coord.weight)
            nn.init.zeros_(self.coord.bias)
        self.content.reset_parameters()
        if self.gate_proj is not None:
            self.gate_proj.reset_parameters()
        self._zero_write_heads()

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
        return reset_state(state, episode_starts)

    def coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """Shared coordinate head: ``(..., d)`` -> ``(..., 3)`` in ``[-1, 1]``; with ``places``, ``x``'s last
        dimension but one runs over a chunk's tokens, each offset towards its place."""
        logits = self.coord(x)
        return torch.tanh(logits if self.place_logits is None else logits + self.place_logits)

    def write_terms(
        self, x_write: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Content ``(..., C)``, location ``(..., 3)``, spread ``(...)`` and strength ``(...)`` (``None`` without
        the local update) of a write input ``(..., d)`` (``(..., chunk_size, d)`` with ``places``)."""
        sigma = self.config.sigma_scale * (
            F.softplus(self.spread(x_write).squeeze(-1) + self.spread_bias) + SIGMA_FLOOR
        )
        strength = None
        if self.strength is not None:
            strength = torch.sigmoid(self.strength(x_write).squeeze(-1) + self.strength_bias)
        return self.content(x_write), self.coordinates(x_write), sigma, strength

    def _check(self, tokens: torch.Tensor, state: TensorDict, write_tokens: torch.Tensor | None) -> None:
        if tokens.dim() != 3 or tokens.shape[-1] != self.token_dim:
            raise ValueError(f"tokens must have shape (B, N, {self.token_dim}), got {tuple(tokens.shape)}")
        if write_tokens is not None and write_tokens.shape != tokens.shape:
            raise ValueError(
                f"write_tokens must have the shape of tokens {tuple(tokens.shape)}, got {tuple(write_tokens.shape)}"
            )
        expected = (tokens.shape[0], *self.state_shape)
        for key in ("h", "c"):
            if key not in state.keys():
                raise ValueError(f"state must hold 'h' and 'c' (from init_state), got keys {sorted(state.keys())}")
            if tuple(state[key].shape) != expected:
                raise ValueError(
                    f"state['{key}'] must have shape {expected} for {tokens.shape[0]} sequences, "
                    f"got {tuple(state[key].shape)}; build it with init_state(batch_size)"
                )
        given = (tokens,) if write_tokens is None else (tokens, write_tokens)
        if self.config.check_inputs and not all(torch.isfinite(x).all() for x in given):
            raise ValueError("tokens contain NaN or infinite values; check the observations fed to the memory")

    def forward(
        self,
        tokens: torch.Tensor,
        state: TensorDict,
        chunk_starts: torch.Tensor | None = None,
        write_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, TensorDict]:
        """Tokens ``(B, N, d)`` and state -> (memory output ``(B, N, d)``, new state).

        ``chunk_starts`` ``(B, K)`` (optional, ``K`` chunks) zeroes an env's state before chunk ``k`` where
        set: a whole rollout sequence with its episode starts runs in one call. ``write_tokens`` ``(B, N, d)``
        (optional, default ``tokens``) are what the write inputs are projected from.
        """
        self._check(tokens, state, write_tokens)
        batch, num, dim = tokens.shape
        chunk = self.config.chunk_size

        inputs = self.inputs_per_chunk

        def chunks(x: torch.Tensor) -> torch.Tensor:
            """``(B, N, d)`` -> ``(B, K, inputs, chunk / inputs * d)``: each chunk's read or write inputs."""
            return F.pad(x, (0, 0, 0, (-num) % chunk)).reshape(batch, -1, inputs, chunk // inputs * dim)

        read_loc = self.coordinates(chunks(tokens)[..., :dim]).unsqueeze(3) + self.read_offsets
        read_loc = read_loc.flatten(2, 3)
        write_tokens = tokens if write_tokens is None else write_tokens
        if not self.config.write_grad:
            write_tokens = write_tokens.detach()
        x_write = self.write_proj(chunks(write_tokens))
        writes = self.write_terms(x_write)
        gate_inputs = None if self.gate_proj is None else self.gate_proj(x_write)
        if inputs > 1 and num % chunk:  # the padding tokens of a last, partial chunk write nothing
            valid = (torch.arange(read_loc.shape[1] * chunk, device=tokens.device) < num).view(1, -1, chunk)
            values, write_loc, sigma, strength = writes
            writes = (values * valid.unsqueeze(-1), write_loc, sigma, None if strength is None else strength * valid)
            gate_inputs = None if gate_inputs is None else gate_inputs * valid.unsqueeze(-1)
        if gate_inputs is not None:  # a step's writes add up, in their volumes and in their gate inputs
            gate_inputs = gate_inputs.sum(dim=2)
        if chunk_starts is not None and tuple(chunk_starts.shape) != tuple(read_loc.shape[:2]):
            raise ValueError(
                f"chunk_starts must have shape {tuple(read_loc.shape[:2])}, got {tuple(chunk_starts.shape)}"
            )
        h, c = state["h"], state["c"]
        if torch.is_grad_enabled() or cpu_kernel.available(h):
            reads, h, c = self._scan(h, c, read_loc, writes, gate_inputs, chunk_starts)
        else:
            reads, h, c = self._steps(h, c, read_loc, writes, gate_inputs, chunk_starts)
        reads_per_chunk = 1 if self.config.read_grid else inputs
        out = self.out_proj(self.read_norm(reads.view(batch, reads.shape[1], reads_per_chunk, -1)))
        out = out.expand(-1, -1, chunk, -1).reshape(batch, -1, dim)[:, :num]
        return out, TensorDict({"h": h, "c": c}, batch_size=state.batch_size, device=state.device)

    def _scan(self, h, c, read_loc, writes, gate_inputs, chunk_starts):
        """All ``K`` steps with the non-recurrent work batched: the writes before the recurrence
        (:func:`~tmem_agents.ops.recurrence.recurrence`), the reads after it. Training everywhere, and every
        forward on the CPU when its C kernel is built (a no-grad step too: about a third faster than
        :meth:`_steps` there)."""
        values, write_loc, sigma, strength = writes
        batch, steps, _, channels = values.shape
        cfg = self.config
        weights = self.update.weights()

        def time_major(x: torch.Tensor) -> torch.Tensor:
            """``(B, K, ...)`` -> ``(K * B, ...)``, step-major."""
            return x.transpose(0, 1).reshape(steps * batch, *x.shape[2:])

        values, write_loc, sigma, read_loc = (time_major(t) for t in (values, write_loc, sigma, read_loc))
        volumes = splat_write(values, write_loc, sigma, grid=cfg.grid, radius=cfg.write_radius, backend=cfg.backend)
        masses = None
        if strength is not None:
            masses = write_mass(
                time_major(strength),
                write_loc,
                sigma,
                grid=cfg.grid,
                radius=cfg.write_radius,
                backend=cfg.backend,
            ).view(steps, batch, 1, *cfg.grid)
        keep = torch.ones(steps, batch, device=h.device) if chunk_starts is None else 1.0 - chunk_starts.T.to(h.dtype)
        volumes = volumes.view(steps, batch, channels, *cfg.grid)
        if gate_inputs is not None:
            gate_inputs = gate_inputs.transpose(0, 1).contiguous()
        read_from, h, c = recurrence(
            volumes, h, c, keep, weights, masses, after_write=cfg.read_after_write, gate_inputs=gate_inputs
        )
        if cfg.read_grid:
            reads = read_from
        else:
            reads = trilinear_read(
                read_from.flatten(0, 1), read_loc, padding_mode=cfg.padding_mode, backend=cfg.backend
            )
        return reads.reshape(steps, batch, -1).transpose(0, 1), h, c

    def _steps(self, h, c, read_loc, writes, gate_inputs, chunk_starts):
        """Without gradients (rollouts, deployment) on other devices, or on a CPU without the C kernel: one
        :func:`~tmem_agents.ops.memory_step` per chunk, the fused kernel (one launch per step) on the Triton
        backend (without ``input_gates``); with ``read_after_write``, a read of the new state after each step."""
        values, write_loc, sigma, strength = writes
        cfg = self.config
        weights = self.update.weights()
        reads = []
        for step in range(values.shape[1]):
            if chunk_starts is not None:
                h, c = zero_rows(h, chunk_starts[:, step]), zero_rows(c, chunk_starts[:, step])
            grid = h
            read, h, c = memory_step(
                h,
                c,
                read_loc[:, step],
                values[:, step],
                write_loc[:, step],
                sigma[:, step],
                weights,
                radius=cfg.write_radius,
                padding_mode=cfg.padding_mode,
                strength=None if strength is None else strength[:, step],
                gate_inputs=None if gate_inputs is None else gate_inputs[:, step],
                backend=cfg.backend,
            )
            if cfg.read_after_write:
                grid = h
                if not cfg.read_grid:
                    read = trilinear_read(h, read_loc[:, step], padding_mode=cfg.padding_mode, backend=cfg.backend)
            reads.append(grid.flatten(1) if cfg.read_grid else read.flatten(1))
        return torch.stack(reads, dim=1), h, c
