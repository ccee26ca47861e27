"""Configuration of a Tensor Memory."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tmem_agents.gate_init import is_timescale
from tmem_agents.ops.dispatch import BACKENDS, PADDING_MODES

WRITE_SOURCES = ("memory_input", "block_input")


@dataclass
class TensorMemoryConfig:
    """Hyperparameters of one Tensor Memory.

    Attributes:
        grid: ``(D, H, W)`` cells of the memory grid, each >= 2.
        channels: ``C``, feature channels per cell.
        chunk_size: tokens per memory step; each chunk reads once and writes once.
        sigma_scale: scale of the write spread ``sigma`` (grid units, ``[-1, 1]`` per axis).
        sigma_bias_init: initial bias of the spread head, whose weights start at zero: every write starts with
            this spread (softplus(1.0) ~ 1.3 before scaling).
        write_radius: ``None`` for the dense write, else ``R``: only the ``(2R+1)^3`` cells around
            the nearest cell receive the write (for large grids).
        gate_init: initial logit of the fusion gate, ``sigmoid(-2) ~ 0.12``.
        forget_bias_init: initial bias of the forget gate ``f`` (0 as in the reference; 1 keeps more of
            the cell at the start of training, the usual LSTM practice).
        forget_timescale_max: ``None`` (reference): every channel's forget gate starts at ``forget_bias_init``.
            A number ``T >= 2`` of steps: the channels' forget and input gates start spread over timescales from
            ``T`` down to 2 steps, evenly on a log scale (a log-spaced chrono start,
            :func:`~tmem_agents.gate_init.chrono_biases`), in place of ``forget_bias_init``: some channels start
            holding over up to ``T`` steps, others following the input.
        local_update: confine the update to the written cells: a write-strength head ``a = sigmoid(w_a x_w)``
            gives each cell the mass ``m = a exp(-|pos - p_w|^2 / (2 sigma^2))`` and the cell moves from its state
            by ``m`` towards the LSTM update (``h + m (h' - h)``), so cells no write reaches keep their state
            and a token can decline to write. ``False`` (reference) updates every cell at every step.
        strength_bias_init: initial bias of the write-strength head, whose weights start at zero: every write
            starts with this strength (``sigmoid(0) = 0.5``).
        input_gates: the write input also sets the gates, as an LSTM's input sets its gates: a linear map of
            ``x_w`` (``4C`` numbers, ``W_gate x_w``, no bias) adds to the gates ``(i, f, o, g)`` of every cell,
            beside the conv of the written volume, whose share of the gates passes through the ``C`` numbers
            the write stores. ``False`` (reference): the gates see the write only through its volume.
        read_norm: a LayerNorm over the read's ``C`` channels before ``out_proj``, so what the memory holds
            reaches the tokens at unit scale however small ``h`` is (``False``: the reference's plain projection).
        read_standardize: instead of ``read_norm``, standardize the read number by number with running
            statistics (:class:`~tmem_agents.running_standardize.RunningStandardize`, updated between PPO
            updates): each number at unit scale by its own spread over the data, where the LayerNorm divides
            all of them by the read's overall spread, so a number that varies little stays small.
        read_cube: ``0`` (reference) reads ``h`` at the read location alone; ``delta > 0`` reads it at the 8
            corners of the cube of half-width ``delta`` around the read location (grid units) and concatenates
            the 8 reads (``8 C`` channels into ``read_norm`` and ``out_proj``): a read then sees a
            neighbourhood of the grid, not one point.
        read_grid: ``True`` reads the whole grid: the read is ``h`` itself, flattened (``C * D * H * W``
            numbers into ``read_norm`` and ``out_proj``), so ``out_proj`` is a learned readout of every cell and
            nothing the grid holds is lost to where the read lands. The read location is then unused; the
            shared coordinate head still places the writes. ``False`` (reference): a trilinear read.
        read_after_write: ``False`` (reference): each step reads the state before its write, so the read holds
            what earlier steps stored. ``True``: each step reads the state after its own write and update, as
            an LSTM's output is its state after the step: the read then holds the step's own observation as
            well, and features taken from the read alone (the extractor's ``memory_features``) can stand for
            the whole observation.
        per_token: ``False`` (reference): a chunk's first token reads, and the chunk makes one write, projected
            from all its tokens, its read broadcast back to every token. ``True``: every token of a chunk reads at
            its own location and writes from its own write input (its own location, content, spread and
            strength); the chunk's writes add up in its one update, and each token receives its own read. A
            step then reads ``chunk_size`` places of the grid and can write each token's content where that
            token points, where the reference passes one read of ``C`` channels to the whole observation.
        inner_places: with ``places``, lay the places' extent ``[-1, 1]`` over the grid's inner cells, the border
            cells a margin: a place ``p`` on an axis of ``n`` cells goes to ``p (n - 2) / (n - 1)``. The grid's
            cells lie at ``-1 + 2 k / (n - 1)``, its border cells at +-1 where ``tanh`` never reaches, so the
            centres of an ``m``-cell image map (``+-1/m``, ``+-3/m``, ...) fall between its cells; laid over the inner
            cells, with ``n = m + 2``, each lies on a cell's centre, which a narrow write then fills alone.
            ``False``: the places as given. Needs ``>= 3`` cells on every axis on which a place is not ``0``.
        write_from: what a :class:`~tmem_agents.memory.MemoryBlock` projects the write input from:
            ``"memory_input"`` (reference), the LayerNormed tokens the memory also reads with; or
            ``"block_input"``, the tokens that entered the block, before its attention and that LayerNorm, so a
            step whose tokens are small (a blank or occluded observation) writes little. The normed tokens
            have unit scale whatever the observation, so with ``"memory_input"`` every blank step writes as
            much as an informative one.
        write_grad: ``True``: the losses reach the tokens, and the encoder below them, through what the memory
            stores as well as through the step's own path. ``False``: the write inputs are projected from the
            tokens with their gradient stopped: the write heads still learn what to store, but the encoder learns
            from the step's own path (and the memory's read location) alone, as it would without the memory.
        padding_mode: read padding, ``"border"`` (reference) or ``"zeros"``.
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (see :mod:`tmem_agents.ops.dispatch`).
        check_inputs: raise on NaN or infinite tokens (one reduction per call).
    """

    grid: tuple[int, int, int] = (8, 8, 8)
    channels: int = 16
    chunk_size: int = 4
    sigma_scale: float = 1.0
    sigma_bias_init: float = 1.0
    write_radius: int | None = None
    gate_init: float = -2.0
    forget_bias_init: float = 0.0
    forget_timescale_max: float | None = None
    local_update: bool = False
    strength_bias_init: float = 0.0
    input_gates: bool = False
    read_norm: bool = False
    read_standardize: bool = False
    read_cube: float = 0.0
    read_grid: bool = False
    read_after_write: bool = False
    per_token: bool = False
    inner_places: bool = False
    write_from: str = "memory_input"
    write_grad: bool = True
    padding_mode: str = "border"
    backend: str = "auto"
    check_inputs: bool = True

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TensorMemoryConfig:
        """The config of keyword ``options``; ``ValueError`` naming any unknown option and the valid ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown memory option(s) {unknown}; valid: {sorted(known)}")
        return cls(**options)

    def __post_init__(self) -> None:
        try:
            self.grid = tuple(self.grid)
        except TypeError:
            raise ValueError(
                f"TensorMemoryConfig.grid must be three ints (D, H, W), each >= 2; got {self.grid!r}"
            ) from None
        if len(self.grid) != 3 or not all(_is_int(s) and s >= 2 for s in self.grid):
            raise ValueError(f"TensorMemoryConfig.grid must be three ints (D, H, W), each >= 2; got {self.grid!r}")
        self.grid = tuple(int(s) for s in self.grid)
        _require_int("channels", self.channels, 1)
        _require_int("chunk_size", self.chunk_size, 1)
        _require_positive("sigma_scale", self.sigma_scale)
        _require_finite("sigma_bias_init", self.sigma_bias_init)
        _require_finite("gate_init", self.gate_init)
        _require_finite("forget_bias_init", self.forget_bias_init)
        if self.forget_timescale_max is not None and not is_timescale(self.forget_timescale_max):
            raise ValueError(
                "TensorMemoryConfig.forget_timescale_max must be a finite number of steps >= 2, or None; "
                f"got {self.forget_timescale_max!r}"
            )
        for name in (
            "local_update",
            "input_gates",
            "read_norm",
            "read_standardize",
            "read_grid",
            "read_after_write",
            "per_token",
            "inner_places",
            "write_grad",
            "check_inputs",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TensorMemoryConfig.{name} must be true or false; got {getattr(self, name)!r}")
        if self.read_norm and self.read_standardize:
            raise ValueError(
                "TensorMemoryConfig.read_norm and read_standardize are two normalizations of the read: "
                "set one of them, not both (read_norm=false read_standardize=true)"
            )
        _require_finite("strength_bias_init", self.strength_bias_init)
        if self.write_radius is not None:
            _require_int("write_radius", self.write_radius, 0, "or None for the dense write")
        _require_finite("read_cube", self.read_cube)
        if self.read_cube < 0:
            raise ValueError(f"TensorMemoryConfig.read_cube must be >= 0; got {self.read_cube!r}")
        if self.read_grid and self.read_cube > 0:
            raise ValueError(
                f"TensorMemoryConfig.read_grid reads every cell, so read_cube must be 0 with it; got {self.read_cube!r}"
            )
        if self.write_from not in WRITE_SOURCES:
            raise ValueError(f"TensorMemoryConfig.write_from must be one of {WRITE_SOURCES}; got {self.write_from!r}")
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(
                f"TensorMemoryConfig.padding_mode must be one of {PADDING_MODES}; got {self.padding_mode!r}"
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"TensorMemoryConfig.backend must be one of {BACKENDS}; got {self.backend!r}")

    @property
    def state_numel(self) -> int:
        """Numbers held per env: ``h`` and ``c``, each ``C * D * H * W``."""
        return 2 * self.channels * math.prod(self.grid)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_int(name: str, value: object, minimum: int, hint: str = "") -> None:
    if not _is_int(value) or value < minimum:
        hint = f" {hint}" if hint else ""
        raise ValueError(f"TensorMemoryConfig.{name} must be an int >= {minimum}{hint}; got {value!r}")


def _require_finite(name: str, value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"TensorMemoryConfig.{name} must be a finite number; got {value!r}")


def _require_positive(name: str, value: object) -> None:
    _require_finite(name, value)
    if value <= 0:
        raise ValueError(f"TensorMemoryConfig.{name} must be > 0; got {value!r}")
