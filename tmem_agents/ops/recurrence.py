"""The ``(h, c)`` recurrence of a memory sequence, with a hand-written backward pass.

Given each step's write share of the gates (computed for all steps at once, see
:func:`~tmem_agents.ops.reference.input_gates`), the recurrence is, for steps ``k = 0 .. K-1``::

    h, c = keep_k * h, keep_k * c                        # episode starts zero the state
    a = from_writes_k + P_h @ depthwise_h(h)             # the conv of concat(V, h), split
    c = sigmoid(f) c + sigmoid(i) tanh(g);  h = sigmoid(o) tanh(c)

Run op by op under autograd this costs one graph node per small op and step, which on the CPU
dominates training. Here the forward runs without a graph, channels-last (each cell's channels
contiguous, so the pointwise mix is one matrix product that also adds the write share); the backward
walks the steps in reverse with the transposed conv, and takes the weights' gradients in one batched
pass over all steps.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from tmem_agents.ops.reference import DepthwiseWeights, depthwise, depthwise_transpose


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``(..., C, D, H, W)`` -> contiguous ``(..., D, H, W, C)``."""
    return x.movedim(-4, -1).contiguous()


def _state_gates_cl(h: torch.Tensor, weights: DepthwiseWeights, pointwise: torch.Tensor) -> torch.Tensor:
    """``P @ depthwise(h)`` channels-last: ``(N, D, H, W, C)`` -> ``(N * D * H * W, 4C)``."""
    return depthwise(h, weights, channels_last=True).reshape(-1, h.shape[-1]) @ pointwise.t()


class _Recurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, from_writes, h, c, keep, pointwise, *depthwise_weights):  # noqa: ANN001
        weights = DepthwiseWeights(*depthwise_weights)
        steps, channels = from_writes.shape[0], h.shape[1]
        writes = _channels_last(from_writes).view(steps, -1, 4 * channels)
        h, c = _channels_last(h), _channels_last(c).view(-1, channels)
        weight_t = pointwise.t()
        resets = (keep < 1).any(dim=1).tolist()
        read_from, cells, activations = [], [], []
        for step in range(steps):
            if resets[step]:
                keep_rows = keep[step].view(-1, 1, 1, 1, 1)
                h = h * keep_rows
                c = (c.view(h.shape) * keep_rows).view(-1, channels)
            read_from.append(h)
            cells.append(c)
            gates = torch.addmm(writes[step], depthwise(h, weights, channels_last=True).view(-1, channels), weight_t)
            ifo = torch.sigmoid(gates[:, : 3 * channels])
            g = torch.tanh(gates[:, 3 * channels :])
            i, f, o = ifo.split(channels, dim=1)
            c = torch.addcmul(f * c, i, g)
            tanh_c = torch.tanh(c)
            h = (o * tanh_c).view(h.shape)
            activations.append((ifo, g, tanh_c))
        ctx.save_for_backward(keep, pointwise, *depthwise_weights)
        ctx.read_from, ctx.cells, ctx.activations, ctx.resets = read_from, cells, activations, resets
        read_from = torch.stack(read_from).movedim(-1, 2)
        return read_from, h.movedim(-1, 1), c.view(h.shape).movedim(-1, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_read_from, grad_h, grad_c):  # noqa: ANN001
        keep, pointwise, *depthwise_weights = ctx.saved_tensors
        weights = DepthwiseWeights(*depthwise_weights)
        transposed = weights._replace(  # the transpose of the linear part: taps reversed, no bias
            taps_d=weights.taps_d.flip(1),
            taps_h=weights.taps_h.flip(1),
            taps_w=weights.taps_w.flip(1),
            bias_d=torch.zeros_like(weights.bias_d),
            bias_h=torch.zeros_like(weights.bias_h),
            bias_w=torch.zeros_like(weights.bias_w),
        )
        shape = ctx.read_from[0].shape  # (B, D, H, W, C)
        channels = shape[-1]
        dh = (
            torch.zeros(shape, dtype=pointwise.dtype, device=pointwise.device)
            if grad_h is None
            else (_channels_last(grad_h))
        )
        dh = dh.view(-1, channels)
        dc = torch.zeros_like(dh) if grad_c is None else _channels_last(grad_c).view(-1, channels)
        from_reads = (
            None if grad_read_from is None else _channels_last(grad_read_from).view(len(ctx.cells), -1, channels)
        )
        grad_gates = []
        for step in reversed(range(len(ctx.cells))):
            ifo, g, tanh_c = ctx.activations[step]
            i, f, o = ifo.split(channels, dim=1)
            dc = dc + dh * o * (1 - tanh_c * tanh_c)
            d_ifo = torch.cat([dc * g, dc * ctx.cells[step], dh * tanh_c], dim=1) * ifo * (1 - ifo)
            d_gates = torch.cat([d_ifo, dc * i * (1 - g * g)], dim=1)
            grad_gates.append(d_gates)
            dh = depthwise_transpose((d_gates @ pointwise).view(shape), transposed, channels_last=True)
            dh = dh.view(-1, channels)
            if from_reads is not None:
                dh = dh + from_reads[step]
            dc = dc * f
            if ctx.resets[step]:
                keep_rows = keep[step].view(-1, 1, 1, 1, 1)
                dh = (dh.view(shape) * keep_rows).view(-1, channels)
                dc = (dc.view(shape) * keep_rows).view(-1, channels)
        grad_gates.reverse()
        grad_gates = torch.stack(grad_gates)
        with torch.enable_grad():
            params = [t.detach().requires_grad_() for t in (pointwise, *depthwise_weights)]
            out = _state_gates_cl(torch.cat(ctx.read_from), DepthwiseWeights(*params[1:]), params[0])
            param_grads = torch.autograd.grad(out, params, grad_gates.view(-1, 4 * channels))
        grad_writes = grad_gates.view(grad_gates.shape[0], *shape[:-1], 4 * channels).movedim(-1, 2)
        return grad_writes, dh.view(shape).movedim(-1, 1), dc.view(shape).movedim(-1, 1), None, *param_grads


def recurrence(
    from_writes: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    keep: torch.Tensor,
    pointwise: torch.Tensor,
    weights: DepthwiseWeights,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``K`` steps of the state recurrence.

    from_writes ``(K, B, 4C, D, H, W)``; h, c ``(B, C, D, H, W)``; keep ``(K, B)`` (0 zeroes the state before
    that step); pointwise ``(4C, C)``; weights: the state channels' depthwise taps and biases.
    Returns ``(read_from (K, B, C, D, H, W), h, c)``: the state each step reads, and the final state.
    """
    return _Recurrence.apply(from_writes, h, c, keep.to(h.dtype), pointwise, *weights)
