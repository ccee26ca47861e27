"""Backend choice for the memory operators: the PyTorch reference or the Triton kernels.

``backend="torch"`` is the reference. ``"auto"`` takes the Triton kernels when the tensors are on a
CUDA device and Triton imports, and the reference everywhere else: it never fails for want of CUDA
or Triton. ``"triton"`` insists on the kernels and says plainly why it cannot run them; on the CPU
they run only through Triton's interpreter (``TRITON_INTERPRET=1``, slow: for tests).
"""

from __future__ import annotations

import importlib.util
import os

import torch

from tmem_agents.ops import reference
from tmem_agents.ops.reference import ConvWeights

BACKENDS = ("auto", "torch", "triton")
PADDING_MODES = ("border", "zeros")


def triton_installed() -> bool:
    """Whether the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    """Whether Triton kernels run through the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map a requested backend to the one that runs on ``device``: ``"torch"`` or ``"triton"``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    on_cuda = device.type == "cuda"
    if backend == "auto":
        return "triton" if on_cuda and triton_installed() else "torch"
    if not triton_installed():
        raise RuntimeError(
            "backend='triton' needs the triton package: pip install 'tmem-agents[triton]', "
            "or use backend='auto' to fall back to the PyTorch reference"
        )
    if not on_cuda and not triton_interpreted():
        raise RuntimeError(
            f"backend='triton' cannot run on {device.type} tensors: Triton kernels run on CUDA devices. "
            "Move the tensors to a GPU, use backend='auto' or 'torch', or set TRITON_INTERPRET=1 "
            "(before importing tmem_agents) to run the kernels through Triton's CPU interpreter"
        )
    return "triton"


def _check_locations(name: str, locations: torch.Tensor, batch: int) -> None:
    if locations.dim() != 3 or locations.shape[0] != batch or locations.shape[2] != 3:
        raise ValueError(f"{name} must have shape (B={batch}, N, 3), got {tuple(locations.shape)}")


def _check_grid(grid: tuple[int, int, int]) -> tuple[int, int, int]:
    grid = tuple(int(s) for s in grid)
    if len(grid) != 3 or min(grid) < 2:
        raise ValueError(f"grid must be three sizes (D, H, W), each >= 2, got {grid}")
    return grid


def _check_radius(radius: int | None) -> None:
    if radius is not None and (isinstance(radius, bool) or not isinstance(radius, int) or radius < 0):
        raise ValueError(f"radius must be None (dense write) or an int >= 0, got {radius!r}")


def _check_step(
    h: torch.Tensor,
    c: torch.Tensor,
    read_locations: torch.Tensor,
    values: torch.Tensor,
    write_locations: torch.Tensor,
    sigma: torch.Tensor,
    weights: ConvWeights,
) -> None:
    if h.dim() != 5 or c.shape != h.shape:
        raise ValueError(f"h and c must both have shape (B, C, D, H, W), got {tuple(h.shape)} and {tuple(c.shape)}")
    batch, channels = h.shape[:2]
    _check_grid(tuple(h.shape[2:]))
    _check_locations("read_locations", read_locations, batch)
    _check_locations("write_locations", write_locations, batch)
    num = write_locations.shape[1]
    if values.shape != (batch, num, channels) or sigma.shape != (batch, num):
        raise ValueError(
            f"values must be (B={batch}, N={num}, C={channels}) and sigma (B, N), "
            f"got {tuple(values.shape)} and {tuple(sigma.shape)}"
        )
    expected = ConvWeights(*([(2 * channels, 3), (2 * channels,)] * 3), (4 * channels, 2 * channels), (4 * channels,))
    for name, tensor, shape in zip(ConvWeights._fields, weights, expected, strict=True):
        if tuple(tensor.shape) != shape:
            raise ValueError(f"weights.{name} must have shape {shape} for C={channels}, got {tuple(tensor.shape)}")


def splat_write(
    values: torch.Tensor,
    locations: torch.Tensor,
    sigma: torch.Tensor,
    *,
    grid: tuple[int, int, int],
    radius: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Gaussian broadcast write: values ``(B, N, C)``, locations ``(B, N, 3)``, sigma ``(B, N)`` ->
    ``(B, C, D, H, W)``. See :func:`tmem_agents.ops.reference.splat_write` for the formula."""
    grid = _check_grid(grid)
    _check_radius(radius)
    if values.dim() != 3:
        raise ValueError(f"values must have shape (B, N, C), got {tuple(values.shape)}")
    _check_locations("locations", locations, values.shape[0])
    if sigma.shape != values.shape[:2] or locations.shape[1] != values.shape[1]:
        raise ValueError(
            f"values {tuple(values.shape)}, locations {tuple(locations.shape)} and sigma {tuple(sigma.shape)} "
            "must agree on (B, N)"
        )
    if resolve_backend(backend, values.device) == "triton":
        from tmem_agents.ops import triton_write

        return triton_write.splat_write(values, locations, sigma, grid, radius)
    return reference.splat_write(values, locations, sigma, grid, radius)


def write_mass(
    strength: torch.Tensor,
    locations: torch.Tensor,
    sigma: torch.Tensor,
    *,
    grid: tuple[int, int, int],
    radius: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """How much of each cell the writes reach: strength ``(B, N)``, locations ``(B, N, 3)``, sigma ``(B, N)`` ->
    ``(B, 1, D, H, W)``. See :func:`tmem_agents.ops.reference.write_mass` for the formula."""
    if strength.dim() != 2:
        raise ValueError(f"strength must have shape (B, N), got {tuple(strength.shape)}")
    volume = splat_write(strength.unsqueeze(-1), locations, sigma, grid=grid, radius=radius, backend=backend)
    return volume.clamp(max=1.0)


def trilinear_read(
    memory: torch.Tensor, queries: torch.Tensor, *, padding_mode: str = "border", backend: str = "auto"
) -> torch.Tensor:
    """Trilinear read: memory ``(B, C, D, H, W)``, queries ``(B, N, 3)`` -> ``(B, N, C)``, equal to
    ``grid_sample(align_corners=True)`` with ``padding_mode`` (``"border"`` or ``"zeros"``)."""
    if memory.dim() != 5:
        raise ValueError(f"memory must have shape (B, C, D, H, W), got {tuple(memory.shape)}")
    _check_locations("queries", queries, memory.shape[0])
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if resolve_backend(backend, memory.device) == "triton":
        from tmem_agents.ops import triton_read

        return triton_read.trilinear_read(memory, queries, padding_mode)
    return reference.trilinear_read(memory, queries, padding_mode)


def memory_step(
    h: torch.Tensor,
    c: torch.Tensor,
    read_locations: torch.Tensor,
    values: torch.Tensor,
    write_locations: torch.Tensor,
    sigma: torch.Tensor,
    weights: ConvWeights,
    *,
    radius: int | None = None,
    padding_mode: str = "border",
    strength: torch.Tensor | None = None,
    gate_inputs: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One memory step (read, write, update): see :func:`tmem_agents.ops.reference.memory_step`.

    ``strength`` ``(B, N)`` (optional) confines the update to the written cells; ``gate_inputs`` ``(B, 4C)``
    (optional) adds each env's share of the gates from its write input. On the Triton backend without gradients
    and without gate inputs this is the fused kernel (one launch per step); otherwise it composes the Triton
    write and read with the PyTorch update.
    """
    _check_step(h, c, read_locations, values, write_locations, sigma, weights)
    _check_radius(radius)
    if strength is not None and strength.shape != sigma.shape:
        raise ValueError(f"strength must have the shape of sigma {tuple(sigma.shape)}, got {tuple(strength.shape)}")
    gate_shape = (h.shape[0], 4 * h.shape[1])
    if gate_inputs is not None and tuple(gate_inputs.shape) != gate_shape:
        raise ValueError(f"gate_inputs must have shape {gate_shape} (B, 4C), got {tuple(gate_inputs.shape)}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    chosen = resolve_backend(backend, h.device)
    if chosen == "torch":
        return reference.memory_step(
            h, c, read_locations, values, write_locations, sigma, weights, radius, padding_mode, strength, gate_inputs
        )
    tensors = (h, c, read_locations, values, write_locations, sigma, *weights)
    if strength is not None:
        tensors += (strength,)
    if gate_inputs is None and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        from tmem_agents.ops import triton_step

        return triton_step.memory_step(
            h, c, read_locations, values, write_locations, sigma, weights, radius, padding_mode, strength
        )
    grid = tuple(h.shape[2:])
    read = trilinear_read(h, read_locations, padding_mode=padding_mode, backend=chosen)
    volume = splat_write(values, write_locations, sigma, grid=grid, radius=radius, backend=chosen)
    h_next, c_next = reference.lstm_update(reference.step_gates(volume, h, weights, gate_inputs), c)
    if strength is not None:
        mass = write_mass(strength, write_locations, sigma, grid=grid, radius=radius, backend=chosen)
        h_next, c_next = reference.local_update(h, c, h_next, c_next, mass)
    return read, h_next, c_next
