"""The memory recurrence's step loops in C, for CPU tensors (``recurrence.c``).

On the CPU, a step of the recurrence run as PyTorch ops costs about 20 small ops forward and backward,
each paying the dispatcher's overhead on a few thousand numbers; the C loops do a step in a few passes.
The source is compiled on first use with the system C compiler (``$CC``, else ``cc``; ``-O3 -march=native``)
into ``$TMEM_KERNEL_CACHE`` (default ``~/.cache/tmem_agents/kernels``) and loaded with ctypes, once per
float type. Where no compiler is found or the build fails, :func:`available` is ``False`` after one warning
and :func:`~tmem_agents.ops.recurrence.recurrence` runs its PyTorch form. ``TMEM_CPU_KERNEL=0`` turns the
kernel off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("recurrence.c")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd", "-fPIC", "-shared")
REALS = {torch.float32: "float", torch.float64: "double"}
_FAILURES: list[str] = []  # why builds failed: one warning per process


class _Shape(ctypes.Structure):
    _fields_ = [(name, ctypes.c_long) for name in ("steps", "channels", "envs", "depth", "height", "width")]


def enabled() -> bool:
    """Whether the kernel may be used (``TMEM_CPU_KERNEL`` is not ``0``)."""
    return os.environ.get("TMEM_CPU_KERNEL", "1") != "0"


def _cache_dir() -> Path:
    return Path(os.environ.get("TMEM_KERNEL_CACHE", Path.home() / ".cache" / "tmem_agents" / "kernels"))


def _build(real: str) -> Path:
    """Compile ``recurrence.c`` for ``real`` (once per source, flags and machine) and return the library."""
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler '{compiler}' on PATH")
    flags = (*FLAGS, f"-DREAL={real}")
    key = hashlib.sha256(
        SOURCE.read_bytes() + " ".join((compiler, *flags, platform.machine(), platform.node())).encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"recurrence_{real}_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run(
            [compiler, *flags, str(SOURCE), "-o", str(built), "-lm"], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")
        os.replace(built, target)  # atomic: concurrent builds leave one complete library
    return target


@functools.cache
def _library(real: str) -> ctypes.CDLL | None:
    try:
        library = ctypes.CDLL(str(_build(real)))
    except (OSError, RuntimeError) as error:
        if not _FAILURES:
            warnings.warn(
                f"the C kernel of the memory recurrence could not be built ({error}); the recurrence runs as "
                "PyTorch ops, several times slower on the CPU. Install a C compiler (gcc or clang, or set CC), "
                "or set TMEM_CPU_KERNEL=0 to silence this",
                RuntimeWarning,
                stacklevel=3,
            )
        _FAILURES.append(str(error))
        return None
    pointer = ctypes.c_void_p
    library.recurrence_forward.argtypes = [ctypes.POINTER(_Shape)] + [pointer] * 18
    library.recurrence_backward.argtypes = [ctypes.POINTER(_Shape)] + [pointer] * 21
    return library


def available(tensor: torch.Tensor) -> bool:
    """Whether the kernel runs ``tensor``'s recurrence: a float32 or float64 CPU tensor, and the kernel built."""
    return (
        tensor.device.type == "cpu"
        and tensor.dtype in REALS
        and enabled()
        and _library(REALS[tensor.dtype]) is not None
    )


def _ptr(tensor: torch.Tensor | None) -> int | None:
    if tensor is None:
        return None
    if not tensor.is_contiguous():
        raise ValueError("the C kernel takes contiguous tensors")
    return tensor.data_ptr()


def _shape(steps: int, h: torch.Tensor) -> _Shape:
    channels, envs, depth, height, width = h.shape
    return _Shape(steps, channels, envs, depth, height, width)


class Saved:
    """What the forward keeps for the backward, in the kernel's layouts (see ``recurrence.c``)."""

    def __init__(self, steps: int, h: torch.Tensor, local: bool, after_write: bool) -> None:
        channels, cells = h.shape[0], h[0].numel()
        new = functools.partial(torch.empty, dtype=h.dtype, device=h.device)
        self.read_from = new(channels, steps, *h.shape[1:])
        self.written = new(channels, steps, *h.shape[1:]) if after_write else None
        self.cells = new(steps, channels, cells)
        self.mixed = new(2 * channels, steps, cells)
        self.activations = new(steps, 5 * channels, cells)
        self.candidates = new(steps, channels, cells) if local else None


def forward(
    volumes: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    keep: torch.Tensor,
    resets: torch.Tensor,
    masses: torch.Tensor | None,
    pointwise: torch.Tensor,
    pointwise_bias: torch.Tensor,
    taps: torch.Tensor,
    biases: torch.Tensor,
    after_write: bool = False,
    gate_inputs: torch.Tensor | None = None,
) -> tuple[Saved, torch.Tensor, torch.Tensor]:
    """``K`` steps from ``h, c (C, N, D, H, W)``, all channel-major: the written volumes ``(C, K, N D H W)``,
    keep ``(K, N)``, resets ``(K,)`` uint8, masses ``(K, N D H W)`` or ``None``, pointwise ``(4C, 2C)`` and
    pointwise_bias ``(4C,)``, taps ``(3, 2C, 3)`` and biases ``(3, 2C)`` (axes D, H, W), gate_inputs
    ``(4C, K, N)`` or ``None`` (added to the gates of every cell of an env; their gradient is the gates' summed
    over the cells). Returns what the backward needs (with ``after_write``, each step's new ``h`` too:
    ``Saved.written (C, K, N, D, H, W)``) and the final ``h, c``."""
    steps = volumes.shape[1]
    h, c = h.clone(memory_format=torch.contiguous_format), c.clone(memory_format=torch.contiguous_format)
    saved = Saved(steps, h, masses is not None, after_write)
    scratch = h.new_empty((4 * h.shape[0] + 8) * h[0].numel())
    _library(REALS[h.dtype]).recurrence_forward(
        ctypes.byref(_shape(steps, h)),
        *map(_ptr, (volumes, keep, resets, masses, gate_inputs, pointwise, pointwise_bias, taps, biases, h, c)),
        *map(_ptr, (saved.read_from, saved.cells, saved.mixed, saved.activations, saved.candidates)),
        *map(_ptr, (saved.written, scratch)),
    )
    return saved, h, c


def backward(
    saved: Saved,
    volumes: torch.Tensor,
    keep: torch.Tensor,
    resets: torch.Tensor,
    masses: torch.Tensor | None,
    pointwise: torch.Tensor,
    taps: torch.Tensor,
    biases: torch.Tensor,
    from_reads: torch.Tensor | None,
    from_written: torch.Tensor | None,
    dh: torch.Tensor,
    dc: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Gradients through the ``K`` steps, given those of the final state ``dh, dc (C, N D H W)``, of the
    states read at each step ``from_reads (K, C, N D H W)`` (or ``None``) and of each step's new ``h``
    ``from_written`` (same shape, or ``None``). Returns the gradients of the gates
    ``(4C, K, N D H W)``, of the volumes ``(C, K, N D H W)``, of the masses ``(K, N D H W)`` (or ``None``), of the
    taps ``(3, 2C, 3)`` and biases ``(3, 2C)``, and of the initial ``h, c``."""
    channels, steps = volumes.shape[:2]
    dh, dc = dh.clone(memory_format=torch.contiguous_format), dc.clone(memory_format=torch.contiguous_format)
    grad_gates = dh.new_empty(4 * channels, steps, dh.shape[1])
    grad_volumes = torch.empty_like(volumes)
    grad_masses = None if masses is None else dh.new_empty(steps, dh.shape[1])
    grad_taps, grad_biases = torch.zeros_like(taps), torch.zeros_like(biases)
    scratch = dh.new_empty(12 * dh.shape[1])
    _library(REALS[dh.dtype]).recurrence_backward(
        ctypes.byref(_shape(steps, saved.read_from[:, 0])),
        *map(_ptr, (volumes, keep, resets, masses, pointwise, taps, biases)),
        *map(_ptr, (saved.read_from, saved.cells, saved.activations, saved.candidates, from_reads, from_written)),
        *map(_ptr, (dh, dc)),
        *map(_ptr, (grad_gates, grad_volumes, grad_masses, grad_taps, grad_biases, scratch)),
    )
    return grad_gates, grad_volumes, grad_masses, grad_taps, grad_biases, dh, dc
