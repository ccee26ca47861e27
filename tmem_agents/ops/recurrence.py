"""The ``(h, c)`` recurrence of a memory sequence, with a hand-written backward pass.

Given each step's write share of the gates (computed for all steps at once, see
:func:`~tmem_agents.ops.reference.input_gates`), the recurrence is, for steps ``k = 0 .. K-1``::

    h, c = keep_k * h, keep_k * c                        # episode starts zero the state
    a = from_writes_k + P_h @ depthwise_h(h)             # the conv of concat(V, h), split
    c = sigmoid(f) c + sigmoid(i) tanh(g);  h = sigmoid(o) tanh(c)

Run op by op under autograd this costs one graph node per small op and step, which on the CPU
dominates training. Here the forward runs without a graph; the backward walks the steps in reverse
with the transposed conv, and takes the weights' gradients in one batched pass over all steps.
"""

from __future__ import annotations

import torch

from tmem_agents.ops.reference import DepthwiseWeights, depthwise_transpose, state_gates


class _Recurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, from_writes, h, c, keep, pointwise, *depthwise_weights):  # noqa: ANN001
        weights = DepthwiseWeights(*depthwise_weights)
        channels = h.shape[1]
        read_from, cells, activations = [], [], []
        shape = (-1, 1, 1, 1, 1)
        resets = (keep < 1).any(dim=1).tolist()
        for step in range(from_writes.shape[0]):
            if resets[step]:
                h = h * keep[step].view(shape)
                c = c * keep[step].view(shape)
            read_from.append(h)
            cells.append(c)
            gates = from_writes[step] + state_gates(h, weights, pointwise)
            ifo = torch.sigmoid(gates[:, : 3 * channels])
            g = torch.tanh(gates[:, 3 * channels :])
            i, f, o = ifo.chunk(3, dim=1)
            c = torch.addcmul(f * c, i, g)
            tanh_c = torch.tanh(c)
            h = o * tanh_c
            activations.append((ifo, g, tanh_c))
        ctx.save_for_backward(keep, pointwise, *depthwise_weights)
        ctx.read_from, ctx.cells, ctx.activations, ctx.resets = read_from, cells, activations, resets
        return torch.stack(read_from), h, c

    @staticmethod
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
        steps = len(ctx.cells)
        shape = (-1, 1, 1, 1, 1)
        dh = torch.zeros_like(ctx.read_from[0]) if grad_h is None else grad_h
        dc = torch.zeros_like(ctx.cells[0]) if grad_c is None else grad_c
        grad_gates = []
        for step in reversed(range(steps)):
            ifo, g, tanh_c = ctx.activations[step]
            i, f, o = ifo.chunk(3, dim=1)
            dc = dc + dh * o * (1 - tanh_c * tanh_c)
            d_ifo = torch.cat([dc * g, dc * ctx.cells[step], dh * tanh_c], dim=1) * ifo * (1 - ifo)
            d_gates = torch.cat([d_ifo, dc * i * (1 - g * g)], dim=1)
            grad_gates.append(d_gates)
            dh = depthwise_transpose(torch.matmul(pointwise.t(), d_gates.flatten(2)).view_as(dh), transposed)
            if grad_read_from is not None:
                dh = dh + grad_read_from[step]
            dc = dc * f
            if ctx.resets[step]:
                dh = dh * keep[step].view(shape)
                dc = dc * keep[step].view(shape)
        grad_gates.reverse()
        grad_gates = torch.stack(grad_gates)
        with torch.enable_grad():
            params = [t.detach().requires_grad_() for t in (pointwise, *depthwise_weights)]
            out = state_gates(torch.cat(ctx.read_from), DepthwiseWeights(*params[1:]), params[0])
            param_grads = torch.autograd.grad(out, params, grad_gates.flatten(0, 1))
        return grad_gates, dh, dc, None, *param_grads


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
