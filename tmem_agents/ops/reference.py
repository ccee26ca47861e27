"""PyTorch reference of the Tensor Memory operators.

This is the CPU path and the oracle the Triton kernels are tested against. Each equation of the
memory step lives here once:

* ``splat_write``   Gaussian broadcast write  ``V[:, cell] = sum_n v_n exp(-|pos(cell) - p_n|^2 / (2 s_n^2 + 1e-6))``
* ``trilinear_read`` trilinear read ``r = grid_sample(h, p, align_corners=True)``
* ``factorized_conv`` depthwise 3-tap convs along D, H and W, then a 1x1x1 pointwise mix
* ``step_gates``    the conv of ``concat(V, h)`` plus, optionally, each env's gate inputs from its write input
* ``lstm_update``   ``c = sig(f) c + sig(i) tanh(g)``, ``h = sig(o) tanh(c)``
* ``write_mass``    how much of each cell a step's writes reach, ``m = min(1, sum_n a_n exp(...))``
* ``local_update``  the update confined to the written cells, ``h = h + m (h' - h)``, ``c = c + m (c' - c)``
* ``memory_step``   read, write, update: one step of the memory

Coordinates ``(x, y, z)`` in ``[-1, 1]`` index ``(W, H, D)``; cell ``i`` of an axis of size ``S`` sits at
``-1 + 2 i / (S - 1)``, as in ``F.grid_sample(..., align_corners=True)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

SPREAD_EPS = 1e-6


class DepthwiseWeights(NamedTuple):
    """Taps ``(K, 3)`` and biases ``(K,)`` of the three depthwise convs (along D, H, W) over ``K`` channels."""

    taps_d: torch.Tensor
    bias_d: torch.Tensor
    taps_h: torch.Tensor
    bias_h: torch.Tensor
    taps_w: torch.Tensor
    bias_w: torch.Tensor


class ConvWeights(NamedTuple):
    """Parameters of the factorized 3-D conv over ``2C`` input and ``4C`` output channels.

    ``taps_*``: ``(2C, 3)`` depthwise taps along D, H, W; ``bias_*``: ``(2C,)``;
    ``pointwise``: ``(4C, 2C)``; ``pointwise_bias``: ``(4C,)``.
    """

    taps_d: torch.Tensor
    bias_d: torch.Tensor
    taps_h: torch.Tensor
    bias_h: torch.Tensor
    taps_w: torch.Tensor
    bias_w: torch.Tensor
    pointwise: torch.Tensor
    pointwise_bias: torch.Tensor

    def depthwise(self, channels: slice) -> DepthwiseWeights:
        """The depthwise taps and biases of the conv-input ``channels``."""
        return DepthwiseWeights(*(t[channels] for t in self[:6]))


def axis_positions(size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Cell centres of one grid axis in ``[-1, 1]`` (``align_corners=True``): ``(size,)``."""
    return torch.linspace(-1.0, 1.0, size, device=device, dtype=dtype)


def nearest_cell(coord: torch.Tensor, size: int) -> torch.Tensor:
    """Index of the cell nearest to ``coord`` (clamped to ``[-1, 1]``) on an axis of ``size`` cells."""
    scaled = (coord.clamp(-1.0, 1.0) + 1.0) * (0.5 * (size - 1))
    return torch.floor(scaled + 0.5).long().clamp_(0, size - 1)


def _axis_weights(coord: torch.Tensor, denom: torch.Tensor, size: int) -> torch.Tensor:
    """Per-axis Gaussian factor ``exp(-(pos_i - coord)^2 / denom)``: ``(B, N)`` -> ``(B, N, size)``."""
    pos = axis_positions(size, coord.device, coord.dtype)
    return torch.exp(-((pos - coord.unsqueeze(-1)) ** 2) / denom.unsqueeze(-1))


def _window_axis(coord: torch.Tensor, denom: torch.Tensor, size: int, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cells ``nearest - R .. nearest + R`` of one axis: indices ``(B, N, 2R+1)`` (clamped) and weights
    (0 for cells outside the grid)."""
    offsets = torch.arange(-radius, radius + 1, device=coord.device)
    index = nearest_cell(coord, size).unsqueeze(-1) + offsets
    inside = (index >= 0) & (index < size)
    index = index.clamp(0, size - 1)
    pos = index.to(coord.dtype) * (2.0 / (size - 1)) - 1.0
    weights = torch.exp(-((pos - coord.unsqueeze(-1)) ** 2) / denom.unsqueeze(-1)) * inside.to(coord.dtype)
    return index, weights


def _windowed_splat(
    values: torch.Tensor, locations: torch.Tensor, denom: torch.Tensor, grid: tuple[int, int, int], radius: int
) -> torch.Tensor:
    """Windowed write by scatter-add of ``(2R+1)^3`` cells per value: cost ``O(N (2R+1)^3 C)``."""
    depth, height, width = grid
    batch, num, channels = values.shape
    ix, wx = _window_axis(locations[..., 0], denom, width, radius)
    iy, wy = _window_axis(locations[..., 1], denom, height, radius)
    iz, wz = _window_axis(locations[..., 2], denom, depth, radius)
    weights = wz[..., :, None, None] * wy[..., None, :, None] * wx[..., None, None, :]
    flat = (iz[..., :, None, None] * height + iy[..., None, :, None]) * width + ix[..., None, None, :]
    contrib = weights.reshape(batch, -1, 1) * values.repeat_interleave(weights[0, 0].numel(), dim=1)
    index = flat.reshape(batch, -1, 1).expand(-1, -1, channels)
    out = values.new_zeros(batch, depth * height * width, channels).scatter_add(1, index, contrib)
    return out.transpose(1, 2).reshape(batch, channels, depth, height, width)


def splat_write(
    values: torch.Tensor,
    locations: torch.Tensor,
    sigma: torch.Tensor,
    grid: tuple[int, int, int],
    radius: int | None = None,
) -> torch.Tensor:
    """Gaussian broadcast write of ``N`` values into a ``(D, H, W)`` grid.

    values ``(B, N, C)``, locations ``(B, N, 3)`` as ``(x, y, z)``, sigma ``(B, N)`` -> ``V (B, C, D, H, W)``.
    The Gaussian factorises per axis, ``w = wx * wy * wz``, so the dense write is one contraction
    over ``N`` of three small per-axis factors. ``radius=R`` keeps the ``(2R+1)^3`` cells around the
    nearest cell, clipped to the grid.
    """
    locations = locations.clamp(-1.0, 1.0)
    denom = 2.0 * sigma * sigma + SPREAD_EPS
    if radius is not None:
        return _windowed_splat(values, locations, denom, grid, radius)
    depth, height, width = grid
    wx = _axis_weights(locations[..., 0], denom, width)
    wy = _axis_weights(locations[..., 1], denom, height)
    wz = _axis_weights(locations[..., 2], denom, depth)
    return torch.einsum("bnc,bnd,bnh,bnw->bcdhw", values, wz, wy, wx)


def trilinear_read(memory: torch.Tensor, queries: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Trilinear read: memory ``(B, C, D, H, W)``, queries ``(B, N, 3)`` as ``(x, y, z)`` -> ``(B, N, C)``."""
    batch, num = queries.shape[:2]
    sampled = F.grid_sample(
        memory, queries.reshape(batch, num, 1, 1, 3), mode="bilinear", padding_mode=padding_mode, align_corners=True
    )
    return sampled.reshape(batch, memory.shape[1], num).transpose(1, 2)


def _depthwise_along(
    x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor, dim: int, channel_dim: int
) -> torch.Tensor:
    """3-tap depthwise conv with zero padding along spatial ``dim`` of a 5-D tensor whose last three dims
    are ``(D, H, W)`` and whose channels lie along ``channel_dim``; taps ``(C, 3)``.

    ``y[i] = t0 x[i-1] + t1 x[i] + t2 x[i+1] + b``, as shifted multiply-adds (on the CPU about 10x faster
    than a grouped ``conv3d``).
    """
    shape = [1] * x.dim()
    shape[channel_dim] = -1
    size = x.shape[dim]
    y = torch.addcmul(bias.view(shape), taps[:, 1].view(shape), x)
    y.narrow(dim, 1, size - 1).addcmul_(taps[:, 0].view(shape), x.narrow(dim, 0, size - 1))
    y.narrow(dim, 0, size - 1).addcmul_(taps[:, 2].view(shape), x.narrow(dim, 1, size - 1))
    return y


def depthwise(x: torch.Tensor, weights: DepthwiseWeights, channel_dim: int = 1) -> torch.Tensor:
    """The three depthwise convs, along D, then H, then W, of ``(B, K, D, H, W)`` (or ``(K, B, D, H, W)``
    with ``channel_dim=0``); the shape is kept."""
    x = _depthwise_along(x, weights.taps_d, weights.bias_d, -3, channel_dim)
    x = _depthwise_along(x, weights.taps_h, weights.bias_h, -2, channel_dim)
    return _depthwise_along(x, weights.taps_w, weights.bias_w, -1, channel_dim)


def depthwise_transpose(grad: torch.Tensor, transposed: DepthwiseWeights, channel_dim: int = 1) -> torch.Tensor:
    """Transpose of the linear part of :func:`depthwise`, for hand-written backward passes: the axes in
    reverse order (W, H, D), with ``transposed`` holding the reversed taps (``taps.flip(1)``) and zero biases."""
    grad = _depthwise_along(grad, transposed.taps_w, transposed.bias_w, -1, channel_dim)
    grad = _depthwise_along(grad, transposed.taps_h, transposed.bias_h, -2, channel_dim)
    return _depthwise_along(grad, transposed.taps_d, transposed.bias_d, -3, channel_dim)


def depthwise_operator(weights: DepthwiseWeights, grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`depthwise` as one affine map per channel of the flattened grid (``S = D H W`` cells).

    Returns ``matrix (K, S, S)`` and ``offset (K, 1, S)`` with ``depthwise(x).view(K, B, S) = x.view(K, B, S) @ matrix
    + offset`` for ``x (K, B, D, H, W)``. Built by running the convs on the zero volume and the ``S`` unit volumes,
    so it is differentiable in the weights. One batched product replaces nine small shifted ops: for small grids
    (``S`` up to about 128 on the CPU) it is several times faster when applied at many steps.
    """
    cells = grid[0] * grid[1] * grid[2]
    channels = weights.taps_d.shape[0]
    eye = torch.eye(cells, device=weights.taps_d.device, dtype=weights.taps_d.dtype)
    basis = torch.cat([torch.zeros_like(eye[:1]), eye])
    mapped = depthwise(basis.view(1, cells + 1, *grid).expand(channels, -1, -1, -1, -1), weights, channel_dim=0)
    mapped = mapped.reshape(channels, cells + 1, cells)
    offset = mapped[:, :1]
    return mapped[:, 1:] - offset, offset


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """1x1x1 mix ``(B, K, D, H, W)`` -> ``(B, O, D, H, W)`` with ``weight (O, K)``."""
    flat = x.flatten(2)
    if bias is None:
        mixed = torch.matmul(weight, flat)
    else:
        mixed = torch.baddbmm(
            bias.view(1, -1, 1).expand(x.shape[0], -1, flat.shape[2]), weight.expand(x.shape[0], -1, -1), flat
        )
    return mixed.view(x.shape[0], -1, *x.shape[2:])


def input_gates(volume: torch.Tensor, weights: ConvWeights) -> torch.Tensor:
    """The write volume's share of the gates: ``(B, C, D, H, W)`` -> ``(B, 4C, D, H, W)``, with the bias.

    The depthwise convs act per channel and the pointwise mix is linear, so the conv of ``concat(V, h)``
    splits exactly into a part of ``V`` and a part of ``h``. ``V`` does not depend on the state: in a
    sequence its share is computed for all steps at once, leaving only :func:`hidden_gates` recurrent.
    """
    channels = volume.shape[1]
    mixed = depthwise(volume, weights.depthwise(slice(0, channels)))
    return _pointwise(mixed, weights.pointwise[:, :channels], weights.pointwise_bias)


def state_gates(h: torch.Tensor, weights: DepthwiseWeights, pointwise: torch.Tensor) -> torch.Tensor:
    """``pointwise (4C, C) @ depthwise(h)``: ``(B, C, D, H, W)`` -> ``(B, 4C, D, H, W)``."""
    return _pointwise(depthwise(h, weights), pointwise, None)


def hidden_gates(h: torch.Tensor, weights: ConvWeights) -> torch.Tensor:
    """The state's share of the gates: ``(B, C, D, H, W)`` -> ``(B, 4C, D, H, W)``."""
    channels = h.shape[1]
    return state_gates(h, weights.depthwise(slice(channels, 2 * channels)), weights.pointwise[:, channels:])


def factorized_conv(x: torch.Tensor, weights: ConvWeights) -> torch.Tensor:
    """Depthwise 3-tap convs along D, H, W, then a pointwise mix: ``(B, 2C, D, H, W)`` -> ``(B, 4C, D, H, W)``."""
    channels = x.shape[1] // 2
    return input_gates(x[:, :channels], weights) + hidden_gates(x[:, channels:], weights)


def step_gates(
    volume: torch.Tensor, h: torch.Tensor, weights: ConvWeights, gate_inputs: torch.Tensor | None = None
) -> torch.Tensor:
    """A step's gates ``(B, 4C, D, H, W)``: the conv of ``concat(V, h)`` (:func:`factorized_conv`), plus, with
    ``gate_inputs`` ``(B, 4C)``, each env's share from its write input, the same in every cell."""
    gates = factorized_conv(torch.cat([volume, h], dim=1), weights)
    return gates if gate_inputs is None else gates + gate_inputs[..., None, None, None]


def lstm_update(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell LSTM update from gate volumes ``(B, 4C, ...)`` ordered ``(i, f, o, g)``: returns ``(h, c)``."""
    i, f, o, g = gates.chunk(4, dim=1)
    c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_next = torch.sigmoid(o) * torch.tanh(c_next)
    return h_next, c_next


def write_mass(
    strength: torch.Tensor,
    locations: torch.Tensor,
    sigma: torch.Tensor,
    grid: tuple[int, int, int],
    radius: int | None = None,
) -> torch.Tensor:
    """How much of each cell the writes reach: strengths ``(B, N)`` in ``[0, 1]`` splatted with the writes'
    Gaussians and capped at 1, ``m = min(1, sum_n a_n w_n(cell))``: ``(B, 1, D, H, W)``."""
    return splat_write(strength.unsqueeze(-1), locations, sigma, grid, radius).clamp(max=1.0)


def local_update(
    h: torch.Tensor, c: torch.Tensor, h_next: torch.Tensor, c_next: torch.Tensor, mass: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The update confined to the written cells: ``h + m (h' - h)`` and ``c + m (c' - c)`` with ``mass`` ``m``
    ``(B, 1, D, H, W)`` from :func:`write_mass`. A cell no write reaches keeps its state exactly."""
    return torch.lerp(h, h_next, mass), torch.lerp(c, c_next, mass)


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
    gate_inputs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One memory step: read from ``h``, write, update.

    h, c ``(B, C, D, H, W)``; read_locations ``(B, R, 3)``; values ``(B, N, C)``; write_locations ``(B, N, 3)``;
    sigma ``(B, N)``. Returns ``(read (B, R, C), h_next, c_next)``. The read sees the state before this
    step's write, as in the reference implementation. With write ``strength`` ``(B, N)`` the update is
    local (:func:`local_update`): each cell moves to its LSTM update by the write mass it receives. With
    ``gate_inputs`` ``(B, 4C)`` each env's share of the gates from its write input is added to every cell's gates.
    """
    read = trilinear_read(h, read_locations, padding_mode)
    grid = tuple(h.shape[2:])
    volume = splat_write(values, write_locations, sigma, grid, radius)
    h_next, c_next = lstm_update(step_gates(volume, h, weights, gate_inputs), c)
    if strength is not None:
        h_next, c_next = local_update(h, c, h_next, c_next, write_mass(strength, write_locations, sigma, grid, radius))
    return read, h_next, c_next
