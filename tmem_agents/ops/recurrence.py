"""The ``(h, c)`` recurrence of a memory sequence, with a hand-written backward pass.

Given each step's write share of the gates (computed for all steps at once by :func:`write_gates`),
the recurrence is, for steps ``k = 0 .. K-1``::

    h, c = keep_k * h, keep_k * c                        # episode starts zero the state
    a = from_writes_k + P_h @ depthwise_h(h)             # the conv of concat(V, h), split (with gate inputs,
                                                         # from_writes_k holds each env's share too)
    c' = sigmoid(f) c + sigmoid(i) tanh(g);  h' = sigmoid(o) tanh(c')
    h, c = h', c'   or, with write masses m_k (the local update),   h, c = h + m_k (h' - h), c + m_k (c' - c)

Run op by op under autograd this costs one graph node per small op and step, which on the CPU
dominates training. Here the forward runs without a graph. On the CPU the steps run in C
(:mod:`~tmem_agents.ops.cpu_kernel`, a few passes per step). The PyTorch form (other devices, or no C
compiler) is channel-major: the state is ``(C, B*D*H*W)``
and the gates ``(4C, B*D*H*W)``, so the pointwise mix is one matrix product that also adds the write
share, and every gate is a contiguous block (elementwise ops on strided slices cost several times more).
On grids of up to :data:`DENSE_CELLS` cells the depthwise convs run as one per-channel matrix product
(:func:`~tmem_agents.ops.reference.depthwise_operator`), on larger grids as shifted multiply-adds. The
backward walks the steps in reverse with the transposed conv, and takes the weights' gradients in one
batched pass over all steps.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from tmem_agents.ops import cpu_kernel
from tmem_agents.ops.reference import ConvWeights, DepthwiseWeights, depthwise, depthwise_operator, depthwise_transpose

DENSE_CELLS = 128

Operator = tuple[torch.Tensor, torch.Tensor] | None


def _channel_major(x: torch.Tensor) -> torch.Tensor:
    """``(..., B, C, D, H, W)`` -> contiguous ``(..., C, B, D, H, W)``."""
    return x.transpose(-5, -4).contiguous()


def dense_operator(weights: DepthwiseWeights, grid: tuple[int, ...]) -> Operator:
    """The depthwise convs as per-channel matrices on grids of up to :data:`DENSE_CELLS` cells
    (:func:`~tmem_agents.ops.reference.depthwise_operator`), else ``None``: shifted multiply-adds."""
    return depthwise_operator(weights, grid) if grid[0] * grid[1] * grid[2] <= DENSE_CELLS else None


def _mix(h: torch.Tensor, weights: DepthwiseWeights, operator: Operator) -> torch.Tensor:
    """Depthwise convs of ``h (C, N, D, H, W)`` -> ``(C, N * D * H * W)``."""
    if operator is None:
        return depthwise(h, weights, channel_dim=0).view(h.shape[0], -1)
    matrix, offset = operator
    return torch.baddbmm(offset, h.view(*h.shape[:2], -1), matrix).view(h.shape[0], -1)


def _transposed(weights: DepthwiseWeights, matrix_t: torch.Tensor | None) -> torch.Tensor | DepthwiseWeights:
    """What :func:`_mix_transpose` applies: the dense operator's matrix transposed, or on large grids the taps
    reversed with zero biases (the transposed conv)."""
    if matrix_t is not None:
        return matrix_t
    return weights._replace(
        taps_d=weights.taps_d.flip(1),
        taps_h=weights.taps_h.flip(1),
        taps_w=weights.taps_w.flip(1),
        bias_d=torch.zeros_like(weights.bias_d),
        bias_h=torch.zeros_like(weights.bias_h),
        bias_w=torch.zeros_like(weights.bias_w),
    )


def _mix_transpose(grad: torch.Tensor, shape: torch.Size, transposed: torch.Tensor | DepthwiseWeights) -> torch.Tensor:
    """Transpose of the linear part of :func:`_mix`: ``(C, N * D * H * W)`` -> ``(C, N * D * H * W)``, with
    ``transposed`` from :func:`_transposed`."""
    if isinstance(transposed, torch.Tensor):
        return torch.bmm(grad.view(shape[0], shape[1], -1), transposed).view(shape[0], -1)
    return depthwise_transpose(grad.view(shape), transposed, channel_dim=0).view(shape[0], -1)


def _depthwise_grads(
    states: torch.Tensor, cotangents: torch.Tensor, weights: DepthwiseWeights, dense: bool
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of the depthwise convs' parameters, given the inputs ``states (C, N, D, H, W)`` of all steps and
    the gradients of their outputs ``cotangents (C, N * D * H * W)``: of the dense operator's matrix and offset,
    or of the taps and biases (the other two or six are ``None``)."""
    if dense:
        cotangents = cotangents.view(*states.shape[:2], -1)
        grad_matrix = torch.bmm(states.view(*states.shape[:2], -1).transpose(1, 2), cotangents)
        return (grad_matrix, cotangents.sum(dim=1, keepdim=True), *[None] * len(weights))
    with torch.enable_grad():
        params = DepthwiseWeights(*(t.detach().requires_grad_() for t in weights))
        return (None, None, *torch.autograd.grad(_mix(states, params, None), params, cotangents))


def write_gates(volumes: torch.Tensor, weights: ConvWeights, operator: Operator) -> torch.Tensor:
    """:func:`~tmem_agents.ops.reference.input_gates` computed channel-major: ``(N, C, D, H, W)`` ->
    ``(N, 4C, D, H, W)``, a view of a contiguous ``(4C, N, D, H, W)`` that :func:`recurrence` reads without a copy.
    ``operator``: the written channels' :func:`dense_operator`."""
    channels = volumes.shape[1]
    mixed = _mix(_channel_major(volumes), weights.depthwise(slice(0, channels)), operator)
    gates = torch.addmm(weights.pointwise_bias.unsqueeze(1), weights.pointwise[:, :channels], mixed)
    return gates.view(4 * channels, *volumes.shape[:1], *volumes.shape[2:]).transpose(0, 1)


class _Recurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, from_writes, h, c, keep, masses, after_write, pointwise, matrix, offset, *depthwise_weights):  # noqa: ANN001
        weights = DepthwiseWeights(*depthwise_weights)
        operator = None if matrix is None else (matrix, offset)
        steps, channels = from_writes.shape[0], h.shape[1]
        writes = from_writes.permute(2, 0, 1, 3, 4, 5).reshape(4 * channels, steps, -1)  # free after write_gates
        h, c = _channel_major(h), _channel_major(c).view(channels, -1)
        resets = (keep < 1).any(dim=1).tolist()
        # per step: sigmoid(i), sigmoid(f), sigmoid(o), tanh(g), tanh(c)
        activations = h.new_empty(steps, 5 * channels, c.shape[1])
        read_from, cells, mixed, candidates, written = [], [], [], [], []
        for step in range(steps):
            if resets[step]:
                keep_rows = keep[step].view(1, -1, 1, 1, 1)
                h = h * keep_rows
                c = (c.view(h.shape) * keep_rows).view(channels, -1)
            read_from.append(h)
            cells.append(c)
            mixed.append(_mix(h, weights, operator))
            gates = torch.addmm(writes[:, step], pointwise, mixed[-1])
            i, f, o, g, tanh_c = activations[step].chunk(5)
            torch.sigmoid(gates[: 3 * channels], out=activations[step, : 3 * channels])
            torch.tanh(gates[3 * channels :], out=g)
            c_next = torch.addcmul(f * c, i, g)
            torch.tanh(c_next, out=tanh_c)
            if masses is None:
                c, h = c_next, (o * tanh_c).view(h.shape)
            else:
                candidates.append(c_next)
                c = torch.lerp(c, c_next, masses[step])
                h = torch.lerp(h.view(channels, -1), o * tanh_c, masses[step]).view(h.shape)
            if after_write:
                written.append(h)
        ctx.save_for_backward(keep, masses, pointwise, *depthwise_weights)
        ctx.resets = resets
        ctx.matrix_t = None if operator is None else operator[0].transpose(1, 2).contiguous()
        ctx.read_from, ctx.cells, ctx.mixed, ctx.activations = read_from, cells, mixed, activations
        ctx.candidates, ctx.after_write = candidates, after_write
        reads = torch.stack(written if after_write else read_from)
        return reads.transpose(1, 2), h.transpose(0, 1), c.view(h.shape).transpose(0, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_reads, grad_h, grad_c):  # noqa: ANN001
        keep, masses, pointwise, *depthwise_weights = ctx.saved_tensors
        weights = DepthwiseWeights(*depthwise_weights)
        shape = ctx.read_from[0].shape  # (C, B, D, H, W)
        channels, steps = shape[0], len(ctx.cells)
        dh = torch.zeros(shape, dtype=pointwise.dtype, device=pointwise.device) if grad_h is None else grad_h
        dh = _channel_major(dh).view(channels, -1)
        dc = torch.zeros_like(dh) if grad_c is None else _channel_major(grad_c).view(channels, -1)
        from_reads = None if grad_reads is None else _channel_major(grad_reads).view(steps, channels, -1)
        grad_gates, grad_mixed, grad_masses = [], [], []
        slopes = dh.new_empty(5 * channels, dh.shape[1])
        pointwise_t = pointwise.t()
        transposed = _transposed(weights, ctx.matrix_t)
        for step in reversed(range(steps)):
            if from_reads is not None and ctx.after_write:
                dh = dh + from_reads[step]
            activations = ctx.activations[step]
            i, f, o, g, tanh_c = activations.chunk(5)
            if masses is not None:
                # h, c = lerp(state, update, m): the update sees m of the gradient, the state the rest
                h_prev = ctx.read_from[step].view(channels, -1)
                d_mass = (dc * (ctx.candidates[step] - ctx.cells[step])).sum(0)
                grad_masses.append(d_mass.add_((dh * (o * tanh_c - h_prev)).sum(0)))
                kept = 1 - masses[step]
                dh_kept, dc_kept = dh * kept, dc * kept
                dh, dc = dh * masses[step], dc * masses[step]
            # the activations' slopes: s (1 - s) for the sigmoids, 1 - t^2 for the tanhs
            torch.mul(activations, activations, out=slopes)
            torch.sub(activations[: 3 * channels], slopes[: 3 * channels], out=slopes[: 3 * channels])
            slopes[3 * channels :].neg_().add_(1)
            dc = torch.addcmul(dc, dh * o, slopes[4 * channels :])
            d_gates = dh.new_empty(4 * channels, dh.shape[1])
            d_i, d_f, d_o, d_g = d_gates.chunk(4)
            torch.mul(dc, g, out=d_i)
            torch.mul(dc, ctx.cells[step], out=d_f)
            torch.mul(dh, tanh_c, out=d_o)
            torch.mul(dc, i, out=d_g)
            d_gates.mul_(slopes[: 4 * channels])
            grad_gates.append(d_gates)
            d_mixed = torch.mm(pointwise_t, d_gates)
            grad_mixed.append(d_mixed)
            dh = _mix_transpose(d_mixed, shape, transposed)
            if from_reads is not None and not ctx.after_write:
                dh = dh + from_reads[step]
            dc = dc * f
            if masses is not None:
                dh, dc = dh + dh_kept, dc + dc_kept
            if ctx.resets[step]:
                keep_rows = keep[step].view(1, -1, 1, 1, 1)
                dh = (dh.view(shape) * keep_rows).view(channels, -1)
                dc = (dc.view(shape) * keep_rows).view(channels, -1)
        grad_gates.reverse()
        grad_gates = torch.stack(grad_gates, dim=1)
        grad_pointwise = grad_gates.view(4 * channels, -1) @ torch.stack(ctx.mixed, dim=1).view(channels, -1).t()
        states = torch.stack(ctx.read_from, dim=1).view(channels, steps * shape[1], *shape[2:])
        grad_mixed.reverse()
        grad_depthwise = _depthwise_grads(
            states, torch.stack(grad_mixed, dim=1).view(channels, -1), weights, ctx.matrix_t is not None
        )
        grad_writes = grad_gates.view(4 * channels, steps, *shape[1:]).permute(1, 2, 0, 3, 4, 5)
        grad_masses.reverse()
        return (
            grad_writes,
            dh.view(shape).transpose(0, 1),
            dc.view(shape).transpose(0, 1),
            None,
            torch.stack(grad_masses).unsqueeze(1) if masses is not None and ctx.needs_input_grad[4] else None,
            None,
            grad_pointwise,
            *grad_depthwise,
        )


class _KernelRecurrence(torch.autograd.Function):
    """The recurrence in C (:mod:`~tmem_agents.ops.cpu_kernel`), with the write share of the gates inside: the
    conv over ``concat(V, h)`` of the reference, step by step."""

    @staticmethod
    def forward(  # noqa: ANN001
        ctx, volumes, h, c, keep, masses, gate_inputs, after_write, pointwise, pointwise_bias, *depthwise_weights
    ):
        volumes = volumes.permute(2, 0, 1, 3, 4, 5).contiguous().flatten(2)  # (C, K, B*D*H*W)
        taps, biases = torch.stack(depthwise_weights[0::2]), torch.stack(depthwise_weights[1::2])
        resets = (keep < 1).any(dim=1).to(torch.uint8)
        saved, h, c = cpu_kernel.forward(
            volumes,
            _channel_major(h),
            _channel_major(c),
            keep,
            resets,
            masses,
            pointwise,
            pointwise_bias,
            taps,
            biases,
            after_write,
            None if gate_inputs is None else gate_inputs.permute(2, 0, 1).contiguous(),
        )
        ctx.save_for_backward(volumes, keep, resets, masses, pointwise, taps, biases)
        ctx.kernel_saved = saved
        reads = saved.written if after_write else saved.read_from
        return reads.permute(1, 2, 0, 3, 4, 5), h.transpose(0, 1), c.transpose(0, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_reads, grad_h, grad_c):  # noqa: ANN001
        volumes, keep, resets, masses, pointwise, taps, biases = ctx.saved_tensors
        channels, steps = volumes.shape[:2]
        shape = (channels, *grad_h.shape[:1], *grad_h.shape[2:])  # (C, B, D, H, W)
        from_reads = _channel_major(grad_reads).view(steps, channels, -1)
        after_write = ctx.kernel_saved.written is not None
        grad_gates, grad_volumes, grad_masses, grad_taps, grad_biases, dh, dc = cpu_kernel.backward(
            ctx.kernel_saved,
            volumes,
            keep,
            resets,
            masses,
            pointwise,
            taps,
            biases,
            None if after_write else from_reads,
            from_reads if after_write else None,
            _channel_major(grad_h).view(channels, -1),
            _channel_major(grad_c).view(channels, -1),
        )
        grad_pointwise = grad_gates.view(4 * channels, -1) @ ctx.kernel_saved.mixed.view(2 * channels, -1).t()
        grad_gate_inputs = None
        if ctx.needs_input_grad[5]:
            grad_gate_inputs = grad_gates.view(4 * channels, steps, shape[1], -1).sum(-1).permute(1, 2, 0)
        return (
            grad_volumes.view(channels, steps, *shape[1:]).permute(1, 2, 0, 3, 4, 5),
            dh.view(shape).transpose(0, 1),
            dc.view(shape).transpose(0, 1),
            None,
            grad_masses.view(steps, 1, -1) if ctx.needs_input_grad[4] else None,
            grad_gate_inputs,
            None,
            grad_pointwise,
            grad_gates.sum(dim=(1, 2)),
            *[t for pair in zip(grad_taps, grad_biases, strict=True) for t in pair],
        )


def recurrence(
    volumes: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    keep: torch.Tensor,
    weights: ConvWeights,
    masses: torch.Tensor | None = None,
    after_write: bool = False,
    gate_inputs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``K`` steps of the state recurrence.

    volumes ``(K, B, C, D, H, W)``: each step's written volume (:func:`~tmem_agents.ops.reference.splat_write`);
    h, c ``(B, C, D, H, W)``; keep ``(K, B)`` (0 zeroes the state before that step); weights: the factorized
    conv's; masses ``(K, B, 1, D, H, W)`` or ``None``: each step's write mass
    (:func:`~tmem_agents.ops.reference.write_mass`) for the local update; gate_inputs ``(K, B, 4C)`` or ``None``:
    each step's share of the gates from its write input, added to every cell's gates (the ``input_gates``
    option of :class:`~tmem_agents.memory.TensorMemory`).
    Returns ``(reads (K, B, C, D, H, W), h, c)``: the state each step reads, and the final state. The state read
    is the one before the step (after its reset), or with ``after_write`` the step's new ``h``, after its write.

    CPU tensors run the C kernel (:mod:`~tmem_agents.ops.cpu_kernel`). Other devices, or a CPU without a C
    compiler, run the PyTorch form: the write share of the gates for all steps at once (:func:`write_gates`),
    then the steps, with the depthwise convs as matrices on small grids (:func:`dense_operator`).
    """
    steps, batch, channels = volumes.shape[:3]
    grid = tuple(h.shape[-3:])
    keep = keep.to(h.dtype).contiguous()
    if masses is not None:
        masses = masses.reshape(steps, 1, -1).contiguous()
    if cpu_kernel.available(h):
        pointwise, bias = weights.pointwise.contiguous(), weights.pointwise_bias.contiguous()
        depthwise_weights = weights.depthwise(slice(None))
        return _KernelRecurrence.apply(
            volumes, h, c, keep, masses, gate_inputs, after_write, pointwise, bias, *depthwise_weights
        )
    on_writes = dense_operator(weights.depthwise(slice(0, channels)), grid)
    from_writes = write_gates(volumes.flatten(0, 1), weights, on_writes).view(steps, batch, 4 * channels, *grid)
    if gate_inputs is not None:
        from_writes = from_writes + gate_inputs.view(steps, batch, 4 * channels, 1, 1, 1)
    state_weights = weights.depthwise(slice(channels, 2 * channels))
    matrix, offset = dense_operator(state_weights, grid) or (None, None)
    pointwise = weights.pointwise[:, channels:].contiguous()
    return _Recurrence.apply(from_writes, h, c, keep, masses, after_write, pointwise, matrix, offset, *state_weights)
