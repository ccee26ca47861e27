"""Triton Gaussian broadcast write (dense and windowed) with a hand-written backward.

Forward, one program per ``(env b, tile of cells)``: for each block of tokens it builds the weight tile
``K[n, s] = exp(-|pos(s) - p_n|^2 / (2 sigma_n^2 + 1e-6))`` (the product ``wx wy wz`` of the per-axis
Gaussians, zeroed outside the ``(2R+1)^3`` window when windowed) and accumulates
``V[:, s] += values[b]^T @ K`` with ``tl.dot``. Every output value is written once, by one program:
no atomics, no zero-fill, deterministic.

Backward, one program per ``(env b, split of the cells, block of tokens)``: it reads the gradient of
``V`` once, tile by tile, and reduces ``dL/dvalues = K @ G^T`` and, from ``dL/dK = values @ G``, the
per-axis location gradients ``sum_s dL/dK K 2 (pos - p) / den`` and the sigma gradient
``sum_s dL/dK K |pos - p|^2 4 sigma / den^2``. Each split writes its own partial sums, which are added
in PyTorch (no atomics, deterministic). The gradient of the location clamp is zero outside
``[-1, 1]``, as for ``torch.clamp``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tmem_agents.ops.triton_common import (
    SPREAD_EPS,
    axis_position,
    block,
    cell_block,
    cell_coords,
    clamp_unit,
    compute_dtype,
    interpreted,
    nearest_cell,
    prepare,
    tl_dtype,
)

_GPU_PROGRAMS = 528
"""Programs the backward aims for on a GPU (four per streaming multiprocessor of an H100)."""


@triton.jit
def _load_tokens(loc_row, sig_row, n, n_mask, DT: tl.constexpr):
    """Clamped locations, clamp-gradient masks, sigma and ``2 sigma^2 + eps`` of tokens ``n`` of one env."""
    x, in_x = clamp_unit(tl.load(loc_row + n * 3 + 0, mask=n_mask, other=0.0).to(DT))
    y, in_y = clamp_unit(tl.load(loc_row + n * 3 + 1, mask=n_mask, other=0.0).to(DT))
    z, in_z = clamp_unit(tl.load(loc_row + n * 3 + 2, mask=n_mask, other=0.0).to(DT))
    sigma = tl.load(sig_row + n, mask=n_mask, other=1.0).to(DT)
    den = 2.0 * sigma * sigma + SPREAD_EPS
    return x, y, z, in_x, in_y, in_z, sigma, den


@triton.jit
def _gauss_tile(x, y, z, den, n_mask, s, s_mask, D, H, W, radius, WINDOWED: tl.constexpr, DT: tl.constexpr):
    """Weights ``K (tokens, cells)`` of tokens at ``(x, y, z)`` on flat cells ``s``, and the offsets
    ``pos - p`` per axis and their squared norm, each ``(tokens, cells)``."""
    d, h, w = cell_coords(s, H, W)
    dx = axis_position(w, W, DT)[None, :] - x[:, None]
    dy = axis_position(h, H, DT)[None, :] - y[:, None]
    dz = axis_position(d, D, DT)[None, :] - z[:, None]
    dist2 = dx * dx + dy * dy + dz * dz
    weight = tl.exp(-dist2 / den[:, None])
    keep = n_mask[:, None] & s_mask[None, :]
    if WINDOWED:
        keep = keep & (tl.abs(w[None, :] - nearest_cell(x, W)[:, None]) <= radius)
        keep = keep & (tl.abs(h[None, :] - nearest_cell(y, H)[:, None]) <= radius)
        keep = keep & (tl.abs(d[None, :] - nearest_cell(z, D)[:, None]) <= radius)
    return tl.where(keep, weight, 0.0), dx, dy, dz, dist2


@triton.jit
def _splat_fwd_kernel(
    val_ptr, loc_ptr, sig_ptr, out_ptr, N, C, D, H, W, radius,
    WINDOWED: tl.constexpr, DT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """``out[b, :, s] = sum_n values[b, n, :] K[n, s]`` for one env and one tile of cells."""
    b = tl.program_id(0).to(tl.int64)
    S = D * H * W
    s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    s_mask = s < S
    c = tl.arange(0, BLOCK_C)
    c_mask = c < C
    acc = tl.zeros([BLOCK_C, BLOCK_S], dtype=DT)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = n < N
        x, y, z, in_x, in_y, in_z, sigma, den = _load_tokens(loc_ptr + b * N * 3, sig_ptr + b * N, n, n_mask, DT)
        weight, dx, dy, dz, dist2 = _gauss_tile(x, y, z, den, n_mask, s, s_mask, D, H, W, radius, WINDOWED, DT)
        v_t = tl.load(
            val_ptr + (b * N + n[None, :]) * C + c[:, None], mask=c_mask[:, None] & n_mask[None, :], other=0.0
        ).to(DT)
        acc = tl.dot(v_t, weight, acc, input_precision="ieee", out_dtype=DT)
    tl.store(out_ptr + (b * C + c[:, None]) * S + s[None, :], acc, mask=c_mask[:, None] & s_mask[None, :])


@triton.jit
def _splat_bwd_kernel(
    grad_ptr, val_ptr, loc_ptr, sig_ptr, gval_ptr, gloc_ptr, gsig_ptr,
    N, C, D, H, W, radius, cells_per_split,
    WINDOWED: tl.constexpr, DT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """Partial gradients of values, locations and sigma over one split of the cells.

    Program ``(b, split, token block)`` writes row ``(b, split)`` of the partial buffers
    ``gval (B, splits, N, C)``, ``gloc (B, splits, N, 3)`` and ``gsig (B, splits, N)``.
    """
    b = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    splits = tl.num_programs(1)
    S = D * H * W
    n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    c = tl.arange(0, BLOCK_C)
    c_mask = c < C
    x, y, z, in_x, in_y, in_z, sigma, den = _load_tokens(loc_ptr + b * N * 3, sig_ptr + b * N, n, n_mask, DT)
    values = tl.load(
        val_ptr + (b * N + n[:, None]) * C + c[None, :], mask=n_mask[:, None] & c_mask[None, :], other=0.0
    ).to(DT)
    g_val = tl.zeros([BLOCK_N, BLOCK_C], dtype=DT)
    g_x = tl.zeros([BLOCK_N], dtype=DT)
    g_y = tl.zeros([BLOCK_N], dtype=DT)
    g_z = tl.zeros([BLOCK_N], dtype=DT)
    g_d2 = tl.zeros([BLOCK_N], dtype=DT)
    start = split * cells_per_split
    stop = tl.minimum(start + cells_per_split, S)
    for s0 in range(start, stop, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        s_mask = s < stop
        weight, dx, dy, dz, dist2 = _gauss_tile(x, y, z, den, n_mask, s, s_mask, D, H, W, radius, WINDOWED, DT)
        grad = tl.load(
            grad_ptr + (b * C + c[:, None]) * S + s[None, :], mask=c_mask[:, None] & s_mask[None, :], other=0.0
        ).to(DT)
        g_val = tl.dot(weight, tl.trans(grad), g_val, input_precision="ieee", out_dtype=DT)
        g_weight = tl.dot(values, grad, input_precision="ieee", out_dtype=DT) * weight
        g_x += tl.sum(g_weight * dx, axis=1)
        g_y += tl.sum(g_weight * dy, axis=1)
        g_z += tl.sum(g_weight * dz, axis=1)
        g_d2 += tl.sum(g_weight * dist2, axis=1)
    part = (b * splits + split) * N + n
    tl.store(gval_ptr + part[:, None] * C + c[None, :], g_val, mask=n_mask[:, None] & c_mask[None, :])
    scale = 2.0 / den
    tl.store(gloc_ptr + part * 3 + 0, tl.where(in_x, g_x * scale, 0.0), mask=n_mask)
    tl.store(gloc_ptr + part * 3 + 1, tl.where(in_y, g_y * scale, 0.0), mask=n_mask)
    tl.store(gloc_ptr + part * 3 + 2, tl.where(in_z, g_z * scale, 0.0), mask=n_mask)
    tl.store(gsig_ptr + part, g_d2 * 4.0 * sigma / (den * den), mask=n_mask)


def _blocks(num: int, channels: int, cells: int) -> tuple[int, int, int]:
    """Tile sizes ``(BLOCK_N, BLOCK_C, BLOCK_S)``."""
    block_n = block(num, maximum=16 if not interpreted() else 128)
    block_c = block(channels)
    return block_n, block_c, cell_block(cells, max(block_c, block_n))


def splat_forward(
    values: torch.Tensor,
    locations: torch.Tensor,
    sigma: torch.Tensor,
    grid: tuple[int, int, int],
    radius: int | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch the forward kernel on contiguous inputs: ``(B, N, C)``, ``(B, N, 3)``, ``(B, N)`` ->
    ``(B, C, D, H, W)``, written into ``out`` (contiguous) when given, else a new tensor in the dtype of
    ``values``."""
    batch, num, channels = values.shape
    depth, height, width = grid
    cells = depth * height * width
    if out is None:
        out = torch.empty(batch, channels, depth, height, width, device=values.device, dtype=values.dtype)
    elif out.shape != (batch, channels, depth, height, width) or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous ({batch}, {channels}, {depth}, {height}, {width}) tensor")
    if out.numel() == 0:
        return out.zero_()
    block_n, block_c, block_s = _blocks(num, channels, cells)
    dt = compute_dtype(values, locations, sigma)
    _splat_fwd_kernel[(batch, triton.cdiv(cells, block_s))](
        values, locations, sigma, out, num, channels, depth, height, width, radius or 0,
        WINDOWED=radius is not None, DT=tl_dtype(dt), BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_S=block_s,
    )  # fmt: skip
    return out


def splat_backward(
    grad: torch.Tensor,
    values: torch.Tensor,
    locations: torch.Tensor,
    sigma: torch.Tensor,
    radius: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of values ``(B, N, C)``, locations ``(B, N, 3)`` and sigma ``(B, N)`` from the
    contiguous gradient of the written volume ``(B, C, D, H, W)``; computed in the compute dtype."""
    batch, num, channels = values.shape
    depth, height, width = grad.shape[2:]
    cells = depth * height * width
    dt = compute_dtype(grad, values, locations, sigma)
    block_n, block_c, block_s = _blocks(num, channels, cells)
    token_blocks = triton.cdiv(num, block_n)
    tiles = triton.cdiv(cells, block_s)
    splits = 1 if interpreted() else max(1, min(tiles, _GPU_PROGRAMS // max(batch * token_blocks, 1)))
    cells_per_split = triton.cdiv(tiles, splits) * block_s
    splits = triton.cdiv(cells, cells_per_split)
    kw = {"device": values.device, "dtype": dt}
    g_val = torch.empty(batch, splits, num, channels, **kw)
    g_loc = torch.empty(batch, splits, num, 3, **kw)
    g_sig = torch.empty(batch, splits, num, **kw)
    if batch * num > 0:
        _splat_bwd_kernel[(batch, splits, token_blocks)](
            grad, values, locations, sigma, g_val, g_loc, g_sig,
            num, channels, depth, height, width, radius or 0, cells_per_split,
            WINDOWED=radius is not None, DT=tl_dtype(dt), BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_S=block_s,
        )  # fmt: skip
    return g_val.sum(1), g_loc.sum(1), g_sig.sum(1)


class SplatWrite(torch.autograd.Function):
    """Autograd wrapper of the Triton write; gradients for values, locations and sigma."""

    @staticmethod
    def forward(ctx, values, locations, sigma, grid, radius):  # noqa: D102
        values, locations, sigma = prepare(values), prepare(locations), prepare(sigma)
        ctx.save_for_backward(values, locations, sigma)
        ctx.radius = radius
        return splat_forward(values, locations, sigma, grid, radius)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: D102
        values, locations, sigma = ctx.saved_tensors
        g_val, g_loc, g_sig = splat_backward(prepare(grad), values, locations, sigma, ctx.radius)
        return g_val.to(values.dtype), g_loc.to(locations.dtype), g_sig.to(sigma.dtype), None, None


def splat_write(
    values: torch.Tensor,
    locations: torch.Tensor,
    sigma: torch.Tensor,
    grid: tuple[int, int, int],
    radius: int | None = None,
) -> torch.Tensor:
    """Gaussian broadcast write: values ``(B, N, C)``, locations ``(B, N, 3)`` as ``(x, y, z)``, sigma
    ``(B, N)`` -> ``(B, C, D, H, W)`` in the dtype of ``values``; ``radius=R`` keeps the ``(2R+1)^3`` cells
    around the nearest cell. Same result as :func:`tmem_agents.ops.reference.splat_write`."""
    return SplatWrite.apply(values, locations, sigma, tuple(int(s) for s in grid), radius)
