"""Helpers shared by the Triton kernels: launch sizes, dtypes and the per-axis geometry of the grid.

Coordinates follow :mod:`tmem_agents.ops.reference`: ``(x, y, z)`` in ``[-1, 1]`` index ``(W, H, D)``,
and cell ``i`` of an axis of ``S`` cells sits at ``-1 + 2 i / (S - 1)`` (``align_corners=True``).
Every kernel computes in float32 (float64 when an input is float64, which ``gradcheck`` uses) and
stores in the dtype of its output.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

SPREAD_EPS = tl.constexpr(1e-6)
"""Added to ``2 sigma^2`` in the Gaussian's denominator, as in the reference."""

GPU_TILE = 1024
"""Values per ``(channels, cells)`` tile on a GPU."""

_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


def interpreted() -> bool:
    """Whether the kernels run through Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """Dtype the kernels compute in: float64 when any input is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def tl_dtype(dtype: torch.dtype) -> tl.dtype:
    """Triton dtype of a compute dtype (float32 or float64)."""
    return _TL_DTYPES[dtype]


def prepare(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A contiguous copy-if-needed of ``tensor``, optionally converted to ``dtype``.

    The interpreter reads non-contiguous tensors as if they were contiguous, with no error, so every
    wrapper passes its inputs through here.
    """
    if not tensor.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got {tensor.dtype}")
    if dtype is not None and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    return tensor.contiguous()


def block(size: int, minimum: int = 16, maximum: int | None = None) -> int:
    """Power-of-two tile length covering ``size`` (at least ``minimum``, the smallest ``tl.dot`` side)."""
    length = max(minimum, triton.next_power_of_2(max(int(size), 1)))
    return length if maximum is None else max(minimum, min(length, maximum))


def cell_block(cells: int, channels_block: int) -> int:
    """Cells per tile of a ``(channels, cells)`` kernel tile.

    Under the interpreter one program covers a whole grid (its cost grows with programs times
    operations); on a GPU a tile holds about 1024 values, so that the kernels' few live tiles stay in
    registers (``ptxas`` for sm_90 reports at most 32 bytes of spills per thread).
    """
    if interpreted():
        return block(cells, maximum=4096)
    return block(cells, maximum=max(16, GPU_TILE // channels_block))


@triton.jit
def cell_coords(s, H, W):
    """Grid indices ``(d, h, w)`` of flat cell indices ``s = (d H + h) W + w``."""
    w = s % W
    h = (s // W) % H
    d = s // (H * W)
    return d, h, w


@triton.jit
def axis_position(index, size, DT: tl.constexpr):
    """Position in ``[-1, 1]`` of cell ``index`` (any dtype) on an axis of ``size`` cells."""
    return index.to(DT) * (2.0 / (size - 1).to(DT)) - 1.0


@triton.jit
def nearest_cell(coord, size):
    """Index of the cell nearest to a coordinate already clamped to ``[-1, 1]``, as the reference."""
    scaled = (coord + 1.0) * (0.5 * (size - 1))
    index = tl.floor(scaled + 0.5).to(tl.int32)
    return tl.minimum(tl.maximum(index, 0), size - 1)


@triton.jit
def clamp_unit(coord):
    """``coord`` clamped to ``[-1, 1]`` and the mask where the clamp passes gradients (``-1 <= coord <= 1``)."""
    inside = (coord >= -1.0) & (coord <= 1.0)
    return tl.minimum(tl.maximum(coord, -1.0), 1.0), inside


@triton.jit
def sigmoid(x):
    """Logistic function, saturating without NaN at large ``|x|``."""
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    """Hyperbolic tangent ``1 - 2 / (exp(2x) + 1)``, saturating without NaN at large ``|x|``."""
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)
