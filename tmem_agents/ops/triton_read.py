"""Triton trilinear read, equal to ``F.grid_sample(align_corners=True)`` forward and backward.

Forward, one program per ``(env b, block of queries)``: each query's 8 corner cells are gathered for all
channels at once (a ``(queries, channels)`` tile per corner, masked where a corner lies outside the grid)
and weighted as ``grid_sample`` weights them. ``padding_mode="border"`` clips the source index to the
grid; ``"zeros"`` lets corners outside the grid read zero.

Backward:

* the memory gradient ``dL/dM[:, s] = sum_n dL/dr[n] k_n(s)`` is written by a gather over cells, one
  program per ``(env b, tile of cells)``: ``k_n(s)`` is the trilinear weight of cell ``s`` for query ``n``
  (non-zero on its 8 corners) and the sum over queries is one ``tl.dot``. Every value of the gradient is
  written once, zeros included: no zero-fill, no atomics, deterministic;
* the query gradient gathers the 8 corners again and differentiates the weights per axis, scaled by
  ``(size - 1) / 2``; with ``"border"`` it is zero where the source index is clipped or on the border
  itself, as in ``grid_sample``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tmem_agents.ops.triton_common import (
    block,
    cell_block,
    cell_coords,
    compute_dtype,
    interpreted,
    prepare,
    tl_dtype,
)

PADDING_MODES = ("border", "zeros")


@triton.jit
def source_index(coord, size, BORDER: tl.constexpr, DT: tl.constexpr):
    """``grid_sample`` source index of a coordinate on an axis of ``size`` cells, its floor and
    ``d index / d coord`` (zero where ``"border"`` clips, the border included)."""
    limit = (size - 1).to(DT)
    index = (coord + 1.0) / 2.0 * limit
    scale = tl.zeros_like(index) + limit / 2.0
    if BORDER:
        scale = tl.where((index > 0.0) & (index < limit), scale, 0.0)
        index = tl.minimum(tl.maximum(index, 0.0), limit)
    return index, tl.floor(index), scale


@triton.jit
def _corner(index, lower, size, upper: tl.constexpr):
    """Integer index, in-grid mask and weight of the lower (``upper=0``) or upper corner on one axis."""
    corner = tl.minimum(tl.maximum(lower, -2.0), size.to(lower.dtype)).to(tl.int32)
    if upper:
        corner = corner + 1
        weight = index - lower
    else:
        weight = (lower + 1.0) - index
    return corner, (corner >= 0) & (corner < size), weight


@triton.jit
def trilinear_gather(
    mem_row, q_row, n, n_mask, c, c_mask, D, H, W, BORDER: tl.constexpr, DT: tl.constexpr
):  # fmt: skip
    """Trilinear read of queries ``n`` (``(N, 3)`` rows at ``q_row``) from one env's memory ``(C, D, H, W)``
    at ``mem_row``: a ``(queries, channels)`` tile."""
    S = D * H * W
    ix, x0, _ = source_index(tl.load(q_row + n * 3 + 0, mask=n_mask, other=0.0).to(DT), W, BORDER, DT)
    iy, y0, _ = source_index(tl.load(q_row + n * 3 + 1, mask=n_mask, other=0.0).to(DT), H, BORDER, DT)
    iz, z0, _ = source_index(tl.load(q_row + n * 3 + 2, mask=n_mask, other=0.0).to(DT), D, BORDER, DT)
    acc = tl.zeros([n.shape[0], c.shape[0]], dtype=DT)
    for oz in tl.static_range(2):
        cz, vz, wz = _corner(iz, z0, D, oz)
        for oy in tl.static_range(2):
            cy, vy, wy = _corner(iy, y0, H, oy)
            for ox in tl.static_range(2):
                cx, vx, wx = _corner(ix, x0, W, ox)
                valid = n_mask & vz & vy & vx
                cell = tl.where(valid, (cz * H + cy) * W + cx, 0)
                mask = valid[:, None] & c_mask[None, :]
                corner = tl.load(mem_row + c[None, :] * S + cell[:, None], mask=mask, other=0.0).to(DT)
                acc += tl.where(mask, (wz * wy * wx)[:, None] * corner, 0.0)
    return acc


@triton.jit
def _read_fwd_kernel(
    mem_ptr, q_ptr, out_ptr, N, C, D, H, W,
    BORDER: tl.constexpr, DT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """``out[b, n, :]`` for one env and one block of queries."""
    b = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    c = tl.arange(0, BLOCK_C)
    c_mask = c < C
    acc = trilinear_gather(mem_ptr + b * C * D * H * W, q_ptr + b * N * 3, n, n_mask, c, c_mask, D, H, W, BORDER, DT)
    tl.store(out_ptr + (b * N + n[:, None]) * C + c[None, :], acc, mask=n_mask[:, None] & c_mask[None, :])


@triton.jit
def _read_bwd_query_kernel(
    grad_ptr, mem_ptr, q_ptr, gq_ptr, N, C, D, H, W,
    BORDER: tl.constexpr, DT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Query gradient ``gq[b, n, :]`` (``(x, y, z)``) for one env and one block of queries."""
    b = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    c = tl.arange(0, BLOCK_C)
    c_mask = c < C
    S = D * H * W
    mem_row = mem_ptr + b * C * S
    q_row = q_ptr + b * N * 3
    ix, x0, sx = source_index(tl.load(q_row + n * 3 + 0, mask=n_mask, other=0.0).to(DT), W, BORDER, DT)
    iy, y0, sy = source_index(tl.load(q_row + n * 3 + 1, mask=n_mask, other=0.0).to(DT), H, BORDER, DT)
    iz, z0, sz = source_index(tl.load(q_row + n * 3 + 2, mask=n_mask, other=0.0).to(DT), D, BORDER, DT)
    grad = tl.load(
        grad_ptr + (b * N + n[:, None]) * C + c[None, :], mask=n_mask[:, None] & c_mask[None, :], other=0.0
    ).to(DT)
    g_x = tl.zeros([BLOCK_N], dtype=DT)
    g_y = tl.zeros([BLOCK_N], dtype=DT)
    g_z = tl.zeros([BLOCK_N], dtype=DT)
    for oz in tl.static_range(2):
        cz, vz, wz = _corner(iz, z0, D, oz)
        for oy in tl.static_range(2):
            cy, vy, wy = _corner(iy, y0, H, oy)
            for ox in tl.static_range(2):
                cx, vx, wx = _corner(ix, x0, W, ox)
                valid = n_mask & vz & vy & vx
                cell = tl.where(valid, (cz * H + cy) * W + cx, 0)
                mask = valid[:, None] & c_mask[None, :]
                corner = tl.load(mem_row + c[None, :] * S + cell[:, None], mask=mask, other=0.0).to(DT)
                dot = tl.sum(tl.where(mask, grad * corner, 0.0), axis=1)
                g_x += dot * (wz * wy) * (2 * ox - 1)
                g_y += dot * (wz * wx) * (2 * oy - 1)
                g_z += dot * (wy * wx) * (2 * oz - 1)
    out = gq_ptr + (b * N + n) * 3
    tl.store(out + 0, g_x * sx, mask=n_mask)
    tl.store(out + 1, g_y * sy, mask=n_mask)
    tl.store(out + 2, g_z * sz, mask=n_mask)


@triton.jit
def _axis_hat(cell, index, lower):
    """Trilinear weights ``(queries, cells)`` of cells on one axis: non-zero on the two corners only."""
    cell_f = cell.to(index.dtype)[None, :]
    lower = lower[:, None]
    upper_w = index[:, None] - lower
    lower_w = (lower + 1.0) - index[:, None]
    return tl.where(cell_f == lower, lower_w, tl.where(cell_f == lower + 1.0, upper_w, 0.0))


@triton.jit
def _read_bwd_memory_kernel(
    grad_ptr, q_ptr, gm_ptr, N, C, D, H, W,
    BORDER: tl.constexpr, DT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """Memory gradient ``gm[b, :, s] = sum_n grad[b, n, :] k_n(s)`` for one env and one tile of cells."""
    b = tl.program_id(0).to(tl.int64)
    S = D * H * W
    s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    s_mask = s < S
    d, h, w = cell_coords(s, H, W)
    c = tl.arange(0, BLOCK_C)
    c_mask = c < C
    q_row = q_ptr + b * N * 3
    acc = tl.zeros([BLOCK_C, BLOCK_S], dtype=DT)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = n < N
        ix, x0, _ = source_index(tl.load(q_row + n * 3 + 0, mask=n_mask, other=0.0).to(DT), W, BORDER, DT)
        iy, y0, _ = source_index(tl.load(q_row + n * 3 + 1, mask=n_mask, other=0.0).to(DT), H, BORDER, DT)
        iz, z0, _ = source_index(tl.load(q_row + n * 3 + 2, mask=n_mask, other=0.0).to(DT), D, BORDER, DT)
        weight = _axis_hat(d, iz, z0) * _axis_hat(h, iy, y0) * _axis_hat(w, ix, x0)
        weight = tl.where(n_mask[:, None] & s_mask[None, :], weight, 0.0)
        grad_t = tl.load(
            grad_ptr + (b * N + n[None, :]) * C + c[:, None], mask=c_mask[:, None] & n_mask[None, :], other=0.0
        ).to(DT)
        acc = tl.dot(grad_t, weight, acc, input_precision="ieee", out_dtype=DT)
    tl.store(gm_ptr + (b * C + c[:, None]) * S + s[None, :], acc, mask=c_mask[:, None] & s_mask[None, :])


def _query_block(num: int) -> int:
    return block(num, minimum=1, maximum=256 if interpreted() else 32)


def read_forward(
    memory: torch.Tensor, queries: torch.Tensor, border: bool, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Launch the forward kernel on contiguous inputs: ``(B, C, D, H, W)``, ``(B, N, 3)`` -> ``(B, N, C)``,
    written into ``out`` (contiguous) when given, else a new tensor in the dtype of ``memory``."""
    batch, channels, depth, height, width = memory.shape
    num = queries.shape[1]
    if out is None:
        out = torch.empty(batch, num, channels, device=memory.device, dtype=memory.dtype)
    elif out.shape != (batch, num, channels) or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous ({batch}, {num}, {channels}) tensor")
    if out.numel() == 0:
        return out
    block_n = _query_block(num)
    _read_fwd_kernel[(batch, triton.cdiv(num, block_n))](
        memory, queries, out, num, channels, depth, height, width,
        BORDER=border, DT=tl_dtype(compute_dtype(memory, queries)), BLOCK_N=block_n, BLOCK_C=block(channels, 1),
    )  # fmt: skip
    return out


def read_backward(
    grad: torch.Tensor, memory: torch.Tensor, queries: torch.Tensor, border: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of memory ``(B, C, D, H, W)`` and queries ``(B, N, 3)`` from the contiguous gradient of the
    read ``(B, N, C)``; computed in the compute dtype."""
    batch, channels, depth, height, width = memory.shape
    num = queries.shape[1]
    cells = depth * height * width
    dt = compute_dtype(grad, memory, queries)
    g_mem = torch.empty(memory.shape, device=memory.device, dtype=dt)
    g_q = torch.empty(queries.shape, device=memory.device, dtype=dt)
    if num == 0:
        return g_mem.zero_(), g_q
    if g_mem.numel() == 0:
        return g_mem, g_q.zero_()
    block_c = block(channels)
    block_n = block(num, maximum=128 if interpreted() else 16)
    block_s = cell_block(cells, max(block_c, block_n))
    _read_bwd_memory_kernel[(batch, triton.cdiv(cells, block_s))](
        grad, queries, g_mem, num, channels, depth, height, width,
        BORDER=border, DT=tl_dtype(dt), BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_S=block_s,
    )  # fmt: skip
    block_q = _query_block(num)
    _read_bwd_query_kernel[(batch, triton.cdiv(num, block_q))](
        grad, memory, queries, g_q, num, channels, depth, height, width,
        BORDER=border, DT=tl_dtype(dt), BLOCK_N=block_q, BLOCK_C=block(channels, 1),
    )  # fmt: skip
    return g_mem, g_q


class TrilinearRead(torch.autograd.Function):
    """Autograd wrapper of the Triton read; gradients for memory and queries."""

    @staticmethod
    def forward(ctx, memory, queries, border):  # noqa: D102
        memory, queries = prepare(memory), prepare(queries)
        ctx.save_for_backward(memory, queries)
        ctx.border = border
        return read_forward(memory, queries, border)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: D102
        memory, queries = ctx.saved_tensors
        g_mem, g_q = read_backward(prepare(grad), memory, queries, ctx.border)
        return g_mem.to(memory.dtype), g_q.to(queries.dtype), None


def trilinear_read(memory: torch.Tensor, queries: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Trilinear read: memory ``(B, C, D, H, W)``, queries ``(B, N, 3)`` as ``(x, y, z)`` -> ``(B, N, C)`` in
    the dtype of ``memory``; equal to ``grid_sample(align_corners=True)`` with ``padding_mode``."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    return TrilinearRead.apply(memory, queries, padding_mode == "border")
