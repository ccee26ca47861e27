"""Fused no-grad memory step in one Triton launch: read, Gaussian write, factorized conv, LSTM update.

One program per ``(env b, tile of cells)`` computes ``h_next`` and ``c_next`` on its cells for all
channels; the programs of the first tile also read the old ``h`` at the read locations. The written
volume is never stored: the conv is linear and separable, so on the volume's channels

    dwW(dwH(dwD(sum_n v_n wz_n wy_n wx_n))) = sum_n v_n (dwD wz_n)(dwH wy_n)(dwW wx_n)

and each factor needs the token's per-axis Gaussian on the cell and its two neighbours (9
exponentials per token and cell, shared by all channels). On ``h``'s channels the three depthwise
convs are one 3x3x3 stencil with taps ``td * th * tw`` (27 masked loads of a ``(channels, cells)``
tile, mostly from cache). The biases of the inner convs pass through the outer ones, zero padding
included, as the boundary terms ``bd (sum tw) (sum th) + bh (sum tw) + bw`` where each sum runs over
the taps whose neighbour is inside the grid. The pointwise mix is 8 ``tl.dot`` of ``(C, C)`` blocks of
the ``(4C, 2C)`` matrix with the two conv outputs, then the gates ``(i, f, o, g)`` update ``(h, c)``.

Memory traffic is the state itself: ``h`` and ``c`` read once (``h`` again from cache for the
stencil), ``h_next`` and ``c_next`` written once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tmem_agents.ops.reference import ConvWeights
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
    sigmoid,
    tanh,
    tl_dtype,
)
from tmem_agents.ops.triton_read import PADDING_MODES, trilinear_gather


@triton.jit
def _taps(taps_ptr, ch, ch_mask, DT: tl.constexpr):
    """The three taps ``(prev, centre, next)`` of depthwise channels ``ch``, each ``(channels,)``."""
    t0 = tl.load(taps_ptr + ch * 3 + 0, mask=ch_mask, other=0.0).to(DT)
    t1 = tl.load(taps_ptr + ch * 3 + 1, mask=ch_mask, other=0.0).to(DT)
    t2 = tl.load(taps_ptr + ch * 3 + 2, mask=ch_mask, other=0.0).to(DT)
    return t0, t1, t2


@triton.jit
def _bias_terms(taps_h, taps_w, bias_d, bias_h, bias_w, ch, ch_mask, h, w, H, W, DT: tl.constexpr):
    """Bias of the three chained depthwise convs seen at the output, ``(channels, cells)``."""
    h0, h1, h2 = _taps(taps_h, ch, ch_mask, DT)
    w0, w1, w2 = _taps(taps_w, ch, ch_mask, DT)
    sum_h = h0[:, None] * (h >= 1).to(DT)[None, :] + h1[:, None] + h2[:, None] * (h + 1 < H).to(DT)[None, :]
    sum_w = w0[:, None] * (w >= 1).to(DT)[None, :] + w1[:, None] + w2[:, None] * (w + 1 < W).to(DT)[None, :]
    bd = tl.load(bias_d + ch, mask=ch_mask, other=0.0).to(DT)[:, None]
    bh = tl.load(bias_h + ch, mask=ch_mask, other=0.0).to(DT)[:, None]
    bw = tl.load(bias_w + ch, mask=ch_mask, other=0.0).to(DT)[:, None]
    return (bd * sum_h + bh) * sum_w + bw


@triton.jit
def _axis_factor(index, size, coord, den, radius, t0, t1, t2, WINDOWED: tl.constexpr, DT: tl.constexpr):
    """Depthwise 3-tap conv of one token's per-axis Gaussian at cells ``index``, ``(channels, cells)``, and the
    Gaussian itself there, ``(cells,)``."""
    near = nearest_cell(coord, size)
    out = tl.zeros([t0.shape[0], index.shape[0]], dtype=DT)
    centre = tl.zeros([index.shape[0]], dtype=DT)
    for o in tl.static_range(3):
        j = index + (o - 1)
        keep = (j >= 0) & (j < size)
        if WINDOWED:
            keep = keep & (tl.abs(j - near) <= radius)
        delta = axis_position(j, size, DT) - coord
        gauss = tl.where(keep, tl.exp(-(delta * delta) / den), 0.0)
        if o == 0:
            out += t0[:, None] * gauss[None, :]
        elif o == 1:
            out += t1[:, None] * gauss[None, :]
            centre = gauss
        else:
            out += t2[:, None] * gauss[None, :]
    return out, centre


@triton.jit
def _gate(pw_ptr, pwb_ptr, k: tl.constexpr, ch, ch_mask, C, conv_v, conv_h, DT: tl.constexpr):
    """Gate ``k`` of ``(i, f, o, g)`` before its nonlinearity: rows ``k C + ch`` of the pointwise mix of the
    volume's and ``h``'s conv outputs, ``(channels, cells)``."""
    rows = k * C + ch
    col = tl.arange(0, conv_v.shape[0])
    mask = ch_mask[:, None] & (col < C)[None, :]
    mix_v = tl.load(pw_ptr + rows[:, None] * (2 * C) + col[None, :], mask=mask, other=0.0).to(DT)
    mix_h = tl.load(pw_ptr + rows[:, None] * (2 * C) + C + col[None, :], mask=mask, other=0.0).to(DT)
    bias = tl.load(pwb_ptr + rows, mask=ch_mask, other=0.0).to(DT)
    gate = tl.dot(mix_v, conv_v, input_precision="ieee", out_dtype=DT)
    return tl.dot(mix_h, conv_h, gate, input_precision="ieee", out_dtype=DT) + bias[:, None]


@triton.jit
def _step_kernel(
    h_ptr, c_ptr, rloc_ptr, val_ptr, wloc_ptr, sig_ptr, str_ptr,
    taps_d, bias_d, taps_h, bias_h, taps_w, bias_w, pw_ptr, pwb_ptr,
    read_ptr, h_out, c_out,
    R, N, C, D, H, W, radius,
    WINDOWED: tl.constexpr, BORDER: tl.constexpr, LOCAL: tl.constexpr, DT: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """One memory step of env ``b`` on one tile of cells (and the read, in the first tile)."""
    b = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    S = D * H * W
    h_row = h_ptr + b * C * S
    ch = tl.arange(0, BLOCK_C)
    ch_mask = ch < C
    if tile == 0:
        for r0 in range(0, R, BLOCK_R):
            r = r0 + tl.arange(0, BLOCK_R)
            r_mask = r < R
            read = trilinear_gather(h_row, rloc_ptr + b * R * 3, r, r_mask, ch, ch_mask, D, H, W, BORDER, DT)
            tl.store(read_ptr + (b * R + r[:, None]) * C + ch[None, :], read, mask=r_mask[:, None] & ch_mask[None, :])

    s = tile * BLOCK_S + tl.arange(0, BLOCK_S)
    s_mask = s < S
    d, h, w = cell_coords(s, H, W)
    tile_mask = ch_mask[:, None] & s_mask[None, :]

    # The volume's channels (ch): the separable write seen through the separable convs.
    conv_v = _bias_terms(taps_h, taps_w, bias_d, bias_h, bias_w, ch, ch_mask, h, w, H, W, DT)
    d0, d1, d2 = _taps(taps_d, ch, ch_mask, DT)
    h0, h1, h2 = _taps(taps_h, ch, ch_mask, DT)
    w0, w1, w2 = _taps(taps_w, ch, ch_mask, DT)
    loc_row = wloc_ptr + b * N * 3
    mass = tl.zeros([BLOCK_S], dtype=DT)
    for n in range(N):
        x, _ = clamp_unit(tl.load(loc_row + n * 3 + 0).to(DT))
        y, _ = clamp_unit(tl.load(loc_row + n * 3 + 1).to(DT))
        z, _ = clamp_unit(tl.load(loc_row + n * 3 + 2).to(DT))
        sigma = tl.load(sig_ptr + b * N + n).to(DT)
        den = 2.0 * sigma * sigma + SPREAD_EPS
        value = tl.load(val_ptr + (b * N + n) * C + ch, mask=ch_mask, other=0.0).to(DT)
        factor_d, gauss_d = _axis_factor(d, D, z, den, radius, d0, d1, d2, WINDOWED, DT)
        factor_h, gauss_h = _axis_factor(h, H, y, den, radius, h0, h1, h2, WINDOWED, DT)
        factor_w, gauss_w = _axis_factor(w, W, x, den, radius, w0, w1, w2, WINDOWED, DT)
        conv_v += factor_d * value[:, None] * factor_h * factor_w
        if LOCAL:
            mass += tl.load(str_ptr + b * N + n).to(DT) * gauss_d * gauss_h * gauss_w
    conv_v = tl.where(tile_mask, conv_v, 0.0)

    # h's channels (C + ch): the 3x3x3 stencil of the chained depthwise convs (runtime loops: unrolled,
    # the 27 loads would be hoisted together and spill registers).
    hc = C + ch
    conv_h = _bias_terms(taps_h, taps_w, bias_d, bias_h, bias_w, hc, ch_mask, h, w, H, W, DT)
    for a in range(3):
        td = tl.load(taps_d + hc * 3 + a, mask=ch_mask, other=0.0).to(DT)
        jd = d + (a - 1)
        for e in range(3):
            th = tl.load(taps_h + hc * 3 + e, mask=ch_mask, other=0.0).to(DT) * td
            jh = h + (e - 1)
            for f in range(3):
                tw = tl.load(taps_w + hc * 3 + f, mask=ch_mask, other=0.0).to(DT) * th
                jw = w + (f - 1)
                inside = s_mask & (jd >= 0) & (jd < D) & (jh >= 0) & (jh < H) & (jw >= 0) & (jw < W)
                cell = tl.where(inside, (jd * H + jh) * W + jw, 0)
                mask = ch_mask[:, None] & inside[None, :]
                conv_h += tw[:, None] * tl.load(h_row + ch[:, None] * S + cell[None, :], mask=mask, other=0.0).to(DT)
    conv_h = tl.where(tile_mask, conv_h, 0.0)

    # Pointwise mix (4C, 2C), gates ordered (i, f, o, g), and the LSTM update, one gate at a time; with
    # LOCAL, each cell moves from its state to the update by the write mass min(1, mass) it receives.
    offs = (b * C + ch[:, None]) * S + s[None, :]
    c_old = tl.load(c_ptr + offs, mask=tile_mask, other=0.0).to(DT)
    c_next = sigmoid(_gate(pw_ptr, pwb_ptr, 1, ch, ch_mask, C, conv_v, conv_h, DT)) * c_old
    c_next += sigmoid(_gate(pw_ptr, pwb_ptr, 0, ch, ch_mask, C, conv_v, conv_h, DT)) * tanh(
        _gate(pw_ptr, pwb_ptr, 3, ch, ch_mask, C, conv_v, conv_h, DT)
    )
    h_next = sigmoid(_gate(pw_ptr, pwb_ptr, 2, ch, ch_mask, C, conv_v, conv_h, DT)) * tanh(c_next)
    if LOCAL:
        m = tl.minimum(mass, 1.0)[None, :]
        c_next = c_old + m * (c_next - c_old)
        h_old = tl.load(h_row + ch[:, None] * S + s[None, :], mask=tile_mask, other=0.0).to(DT)
        h_next = h_old + m * (h_next - h_old)
    tl.store(c_out + offs, c_next, mask=tile_mask)
    tl.store(h_out + offs, h_next, mask=tile_mask)


@torch.no_grad()
def memory_step(
    h: torch.Tensor,
    c: torch.Tensor,
    read_locations: torch.Tensor,
    values: torch.Tensor,
    write_locations: torch.Tensor,
    sigma: torch.Tensor,
    weights: ConvWeights,
    radius: int | None = None,
    padding_mode: str = "border",
    strength: torch.Tensor | None = None,
    *,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One fused memory step without gradients, equal to :func:`tmem_agents.ops.reference.memory_step`.

    h, c ``(B, C, D, H, W)``; read_locations ``(B, R, 3)``; values ``(B, N, C)``; write_locations
    ``(B, N, 3)``; sigma ``(B, N)``; weights over ``2C`` conv channels and ``4C`` gates; strength ``(B, N)``
    or ``None`` (the local update, :func:`tmem_agents.ops.reference.local_update`). Returns
    ``(read (B, R, C), h_next, c_next)``, in the dtypes of ``h`` and ``c``; the read sees ``h`` before the
    write. ``out`` takes three contiguous tensors of those shapes to write into (rollouts can swap two
    state buffers), which must not overlap ``h`` or ``c``.
    """
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    batch, channels, depth, height, width = h.shape
    num_reads = read_locations.shape[1]
    num = values.shape[1]
    cells = depth * height * width
    dt = compute_dtype(h, c, read_locations, values, write_locations, sigma, *weights)
    h, c = prepare(h), prepare(c)
    read_locations, values = prepare(read_locations), prepare(values)
    write_locations, sigma = prepare(write_locations), prepare(sigma)
    local = strength is not None
    strength = prepare(strength) if local else sigma
    params = [prepare(p, dt) for p in weights]
    if out is None:
        read = torch.empty(batch, num_reads, channels, device=h.device, dtype=h.dtype)
        h_next, c_next = torch.empty_like(h), torch.empty_like(c)
    else:
        read, h_next, c_next = out
        for name, tensor, shape in (("read", read, (batch, num_reads, channels)), ("h_next", h_next, h.shape),
                                    ("c_next", c_next, c.shape)):  # fmt: skip
            if tensor.shape != shape or not tensor.is_contiguous():
                raise ValueError(f"out {name} must be a contiguous {tuple(shape)} tensor")
    if h.numel() == 0:
        return read.zero_(), h_next, c_next
    block_c = block(channels)
    block_s = cell_block(cells, block_c)
    block_r = block(num_reads, minimum=1, maximum=256 if interpreted() else 32)
    _step_kernel[(batch, triton.cdiv(cells, block_s))](
        h, c, read_locations, values, write_locations, sigma, strength, *params, read, h_next, c_next,
        num_reads, num, channels, depth, height, width, radius or 0,
        WINDOWED=radius is not None, BORDER=padding_mode == "border", LOCAL=local, DT=tl_dtype(dt),
        BLOCK_R=block_r, BLOCK_C=block_c, BLOCK_S=block_s, num_warps=8,
    )  # fmt: skip
    return read, h_next, c_next
