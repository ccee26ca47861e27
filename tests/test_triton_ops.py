"""Triton kernels against the PyTorch reference: forward, every gradient, the fused step, masking.

On a machine without CUDA the kernels run through Triton's interpreter (``tests/conftest.py`` sets
``TRITON_INTERPRET=1``), which is slow: shapes are small, and the kernels use a few programs with large
tiles there. One test forces the GPU tile sizes through the interpreter.

Tolerances (``|actual - expected| <= atol * max(1, max|expected|) + rtol * |expected|``):

* float32 against the reference in float64: forward ``rtol=atol=1e-5``, gradients ``rtol=atol=1e-4``;
* float64 (the kernels then compute in float64) against the reference in float64: ``1e-10``;
* bfloat16 against the reference in float32 on the same (bfloat16) inputs: ``rtol=atol=3e-2``, about
  eight bfloat16 ulps, since both the inputs' products and the bfloat16 output round;
* the fused step in float32 against the reference step in float32: ``atol=1e-4``, every step.
"""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1", allow_module_level=True)

import tmem_agents.ops as ops  # noqa: E402
from tmem_agents.ops import reference, triton_common, triton_read, triton_step, triton_write  # noqa: E402
from tmem_agents.ops.reference import ConvWeights  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F32 = {"rtol": 1e-5, "atol": 1e-5}
F32_GRAD = {"rtol": 1e-4, "atol": 1e-4}
F64 = {"rtol": 1e-10, "atol": 1e-10}
BF16 = {"rtol": 3e-2, "atol": 3e-2}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> None:
    """``actual`` within ``atol * max(1, max|expected|) + rtol * |expected|`` of ``expected``, elementwise."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    actual, expected = actual.double().cpu(), expected.double().cpu()
    assert torch.isfinite(actual).all(), "non-finite values"
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    excess = (actual - expected).abs() - (atol * scale + rtol * expected.abs())
    assert excess.max().item() <= 0 if excess.numel() else True, (
        f"max error {(actual - expected).abs().max().item():.3g} (scale {scale:.3g})"
    )


def special_points(dtype: torch.dtype) -> torch.Tensor:
    """Corners, edge and face points of the cube, and points beyond ``[-1, 1]``: ``(16, 3)``."""
    pts = [
        [1, 1, 1], [-1, -1, -1], [1, -1, 1], [-1, 1, -1],  # corners
        [1, 1, 0.3], [-1, 0.2, 1], [0.1, -1, -1],  # edges
        [1, 0.37, -0.41], [0.23, -1, 0.61], [-0.13, 0.29, 1],  # faces
        [1.2, 0.1, -0.3], [-1.5, 1.7, 0.4], [0.31, -1.01, 2.0], [3.0, -3.0, 3.0],  # beyond
        [0.0, 0.0, 0.0], [0.5, -0.5, 0.25],
    ]  # fmt: skip
    return torch.tensor(pts, dtype=dtype)


def make_locations(gen: torch.Generator, batch: int, num: int, dtype: torch.dtype, spread: float = 1.3) -> torch.Tensor:
    """Random locations in ``[-spread, spread]^3`` with the special points in the first env: ``(B, N, 3)``."""
    loc = (torch.rand(batch, num, 3, generator=gen, dtype=torch.float64) * 2 - 1) * spread
    special = special_points(torch.float64)[:num]
    loc[0, : special.shape[0]] = special
    return loc.to(dtype)


def make_weights(gen: torch.Generator, channels: int, dtype: torch.dtype) -> ConvWeights:
    """Random conv weights over ``2C`` channels and ``4C`` gates, on ``DEVICE``."""
    c2 = 2 * channels

    def rnd(*shape: int, scale: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(DEVICE)

    return ConvWeights(
        rnd(c2, 3, scale=0.6), rnd(c2, scale=0.2), rnd(c2, 3, scale=0.6), rnd(c2, scale=0.2),
        rnd(c2, 3, scale=0.6), rnd(c2, scale=0.2), rnd(4 * channels, c2, scale=c2**-0.5), rnd(4 * channels, scale=0.2),
    )  # fmt: skip


def write_inputs(seed: int, batch: int, num: int, channels: int, dtype: torch.dtype, sigma_range=(0.15, 0.6)):
    """values ``(B, N, C)``, locations ``(B, N, 3)``, sigma ``(B, N)`` on ``DEVICE``."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(batch, num, channels, generator=gen, dtype=torch.float64).to(dtype)
    locations = make_locations(gen, batch, num, dtype)
    low, high = sigma_range
    sigma = (low + (high - low) * torch.rand(batch, num, generator=gen, dtype=torch.float64)).to(dtype)
    return values.to(DEVICE), locations.to(DEVICE), sigma.to(DEVICE)


def grads(fn, inputs: tuple[torch.Tensor, ...], seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output of ``fn(*inputs)`` and the gradients of ``<output, random>`` for every input."""
    inputs = tuple(t.detach().requires_grad_() for t in inputs)
    out = fn(*inputs)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out.backward(cotangent.to(out.dtype).to(out.device))
    return out.detach(), [t.grad for t in inputs]


# (batch, tokens, channels, grid (D, H, W), radius, sigma range)
WRITE_CASES = [
    (2, 16, 3, (5, 7, 6), None, (0.15, 0.6)),
    (3, 5, 7, (6, 5, 7), 1, (0.1, 0.25)),
    (2, 9, 5, (7, 6, 5), 2, (0.1, 0.5)),
    (1, 17, 6, (4, 9, 5), 3, (0.2, 0.6)),
    (2, 4, 1, (2, 3, 2), 1, (0.3, 0.5)),
    (2, 16, 5, (5, 7, 6), 0, (0.1, 0.3)),
    (2, 16, 4, (5, 6, 7), None, (2.0, 6.0)),
    (2, 16, 4, (5, 6, 7), 2, (3.0, 6.0)),
]


@pytest.mark.parametrize("case", WRITE_CASES, ids=[f"write{i}" for i in range(len(WRITE_CASES))])
def test_write_float32_matches_reference(case) -> None:
    batch, num, channels, grid, radius, sigma_range = case
    inputs = write_inputs(len(grid) + num, batch, num, channels, torch.float32, sigma_range)
    out, got = grads(lambda v, p, s: triton_write.splat_write(v, p, s, grid, radius), inputs, seed=1)
    ref_out, want = grads(
        lambda v, p, s: reference.splat_write(v, p, s, grid, radius), tuple(t.double() for t in inputs), seed=1
    )
    assert out.dtype == torch.float32
    assert_close(out, ref_out, **F32)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        assert_close(g, w, **F32_GRAD)


@pytest.mark.parametrize("radius", [None, 1, 2])
def test_write_float64_matches_reference(radius: int | None) -> None:
    inputs = write_inputs(3, 2, 16, 5, torch.float64)
    grid = (5, 7, 6)
    out, got = grads(lambda v, p, s: triton_write.splat_write(v, p, s, grid, radius), inputs, seed=2)
    ref_out, want = grads(lambda v, p, s: reference.splat_write(v, p, s, grid, radius), inputs, seed=2)
    assert_close(out, ref_out, **F64)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, **F64)


@pytest.mark.parametrize("radius", [None, 1])
def test_write_tiny_sigma(radius: int | None) -> None:
    """sigma far below a voxel: locations on cells write almost one-hot; float64 checks every gradient,
    float32 the forward and the value gradient. The location and sigma gradients (``w 2 d / den`` with
    ``den ~ 3e-6``) magnify a cell position's last-ulp difference (``linspace`` against ``i * 2 / (S - 1)``)
    by ``1 / den``: float64 checks them to ``1e-7``."""
    grid = (5, 7, 6)
    values, _, _ = write_inputs(4, 2, 6, 3, torch.float64)
    cells = torch.tensor([[0, 0, 0], [6, 5, 4], [2, 3, 1], [5, 0, 4], [1, 6, 2], [3, 3, 3]], dtype=torch.float64)
    on_cells = cells / (torch.tensor([6, 7, 5], dtype=torch.float64) - 1) * 2 - 1
    locations = torch.stack([on_cells, on_cells + 0.01]).to(DEVICE)
    sigma = torch.full((2, 6), 1e-3, dtype=torch.float64, device=DEVICE)
    inputs = (values, locations, sigma)
    out, got = grads(lambda v, p, s: triton_write.splat_write(v, p, s, grid, radius), inputs, seed=3)
    ref_out, want = grads(lambda v, p, s: reference.splat_write(v, p, s, grid, radius), inputs, seed=3)
    assert_close(out, ref_out, **F64)
    assert_close(got[0], want[0], **F64)
    for g, w in zip(got[1:], want[1:], strict=True):
        assert_close(g, w, rtol=1e-7, atol=1e-7)
    out32, got32 = grads(
        lambda v, p, s: triton_write.splat_write(v, p, s, grid, radius), tuple(t.float() for t in inputs), seed=3
    )
    assert_close(out32, ref_out, **F32)
    assert_close(got32[0], want[0], **F32_GRAD)


@pytest.mark.parametrize("radius", [None, 2])
def test_write_bfloat16(radius: int | None) -> None:
    grid = (5, 7, 6)
    inputs = write_inputs(5, 2, 16, 5, torch.bfloat16)
    out, got = grads(lambda v, p, s: triton_write.splat_write(v, p, s, grid, radius), inputs, seed=4)
    ref_out, want = grads(
        lambda v, p, s: reference.splat_write(v, p, s, grid, radius), tuple(t.float() for t in inputs), seed=4
    )
    assert out.dtype == torch.bfloat16
    assert_close(out, ref_out, **BF16)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.bfloat16
        assert_close(g, w, **BF16)


@pytest.mark.parametrize("radius", [None, 1])
def test_write_gradcheck(radius: int | None) -> None:
    """float64 gradcheck; windowed locations sit near cell centres, away from the half-voxels where the
    window jumps."""
    gen = torch.Generator().manual_seed(6)
    grid = (3, 4, 5)
    values = torch.randn(1, 3, 2, generator=gen, dtype=torch.float64)
    sizes = torch.tensor([5, 4, 3], dtype=torch.float64)
    cells = torch.tensor([[0, 1, 2], [4, 3, 0], [2, 2, 1]], dtype=torch.float64)
    jitter = (torch.rand(1, 3, 3, generator=gen, dtype=torch.float64) - 0.5) * 0.3
    locations = ((cells + jitter) / (sizes - 1) * 2 - 1).clamp(-0.999, 0.999)
    sigma = 0.2 + 0.2 * torch.rand(1, 3, generator=gen, dtype=torch.float64)
    inputs = tuple(t.to(DEVICE).requires_grad_() for t in (values, locations, sigma))
    assert torch.autograd.gradcheck(
        lambda v, p, s: triton_write.splat_write(v, p, s, grid, radius), inputs, fast_mode=True
    )


# (batch, queries, channels, grid (D, H, W), query spread)
READ_CASES = [
    (2, 16, 3, (5, 7, 6), 1.3),
    (3, 5, 7, (6, 5, 7), 2.5),
    (1, 19, 1, (2, 3, 2), 1.1),
    (2, 16, 17, (4, 4, 4), 1.0),
]


@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
@pytest.mark.parametrize("case", READ_CASES, ids=[f"read{i}" for i in range(len(READ_CASES))])
def test_read_float32_matches_grid_sample(case, padding_mode: str) -> None:
    batch, num, channels, grid, spread = case
    gen = torch.Generator().manual_seed(num + channels)
    memory = torch.randn(batch, channels, *grid, generator=gen, dtype=torch.float64).to(DEVICE)
    queries = make_locations(gen, batch, num, torch.float64, spread).to(DEVICE)
    out, got = grads(
        lambda m, q: triton_read.trilinear_read(m, q, padding_mode), (memory.float(), queries.float()), seed=5
    )
    ref_out, want = grads(lambda m, q: reference.trilinear_read(m, q, padding_mode), (memory, queries), seed=5)
    assert_close(out, ref_out, **F32)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, **F32_GRAD)


@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
def test_read_float64_and_bfloat16(padding_mode: str) -> None:
    gen = torch.Generator().manual_seed(7)
    memory = torch.randn(2, 5, 5, 7, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    queries = make_locations(gen, 2, 16, torch.float64, 1.4).to(DEVICE)
    out, got = grads(lambda m, q: triton_read.trilinear_read(m, q, padding_mode), (memory, queries), seed=6)
    ref_out, want = grads(lambda m, q: reference.trilinear_read(m, q, padding_mode), (memory, queries), seed=6)
    assert_close(out, ref_out, **F64)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, **F64)
    half = (memory.bfloat16(), queries.bfloat16())
    out, got = grads(lambda m, q: triton_read.trilinear_read(m, q, padding_mode), half, seed=6)
    ref_out, want = grads(
        lambda m, q: reference.trilinear_read(m, q, padding_mode), tuple(t.float() for t in half), seed=6
    )
    assert out.dtype == torch.bfloat16 and got[0].dtype == torch.bfloat16 and got[1].dtype == torch.bfloat16
    assert_close(out, ref_out, **BF16)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, **BF16)


@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
def test_read_gradcheck(padding_mode: str) -> None:
    """float64 gradcheck with queries away from cell planes (where the trilinear weights kink) and from
    the border, some outside the grid."""
    gen = torch.Generator().manual_seed(8)
    grid = (2, 3, 4)
    memory = torch.randn(1, 2, *grid, generator=gen, dtype=torch.float64)
    sizes = torch.tensor([4, 3, 2], dtype=torch.float64)
    source = torch.tensor([[0.3, 1.6, 0.5], [2.4, 0.7, 0.2], [1.5, 1.2, 0.8], [-0.6, 0.4, 1.3]], dtype=torch.float64)
    queries = (source / (sizes - 1) * 2 - 1).unsqueeze(0)
    inputs = (memory.to(DEVICE).requires_grad_(), queries.to(DEVICE).requires_grad_())
    assert torch.autograd.gradcheck(lambda m, q: triton_read.trilinear_read(m, q, padding_mode), inputs, fast_mode=True)


def step_state(seed: int, batch: int, channels: int, grid: tuple[int, int, int], dtype: torch.dtype):
    gen = torch.Generator().manual_seed(seed)
    h = (0.5 * torch.randn(batch, channels, *grid, generator=gen, dtype=torch.float64)).to(dtype)
    c = (0.5 * torch.randn(batch, channels, *grid, generator=gen, dtype=torch.float64)).to(dtype)
    return h.to(DEVICE), c.to(DEVICE), make_weights(gen, channels, dtype)


def step_inputs(seed: int, batch: int, reads: int, num: int, channels: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(seed)
    read_locations = make_locations(gen, batch, reads, dtype, 1.2)
    values = torch.randn(batch, num, channels, generator=gen, dtype=torch.float64).to(dtype)
    write_locations = make_locations(gen, batch, num, dtype, 1.2)
    sigma = (0.1 + 0.3 * torch.rand(batch, num, generator=gen, dtype=torch.float64)).to(dtype)
    return tuple(t.to(DEVICE) for t in (read_locations, values, write_locations, sigma))


def step_strength(seed: int, batch: int, num: int, dtype: torch.dtype) -> torch.Tensor:
    """Write strengths in [0, 1] with some of their sums over the tokens above 1 (the mass is capped)."""
    strength = torch.rand(batch, num, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return strength.to(dtype).to(DEVICE)


# (batch, reads, tokens, channels, grid, radius, padding, local update)
STEP_CASES = [
    (3, 4, 5, 3, (5, 7, 6), None, "border", True),
    (2, 5, 16, 5, (6, 5, 4), 1, "zeros", False),
    (2, 3, 7, 4, (4, 6, 5), 2, "border", True),
    (2, 16, 3, 1, (2, 3, 2), 3, "zeros", False),
]


@pytest.mark.parametrize("case", STEP_CASES, ids=[f"step{i}" for i in range(len(STEP_CASES))])
def test_step_matches_reference_over_steps_with_resets(case) -> None:
    batch, reads, num, channels, grid, radius, padding, local = case
    h, c, weights = step_state(11, batch, channels, grid, torch.float32)
    h_ref, c_ref = h.clone(), c.clone()
    for step in range(4):
        if step == 2:
            for state in (h, c, h_ref, c_ref):
                state[::2] = 0
        inputs = step_inputs(100 + step, batch, reads, num, channels, torch.float32)
        strength = step_strength(200 + step, batch, num, torch.float32) if local else None
        read, h, c = triton_step.memory_step(h, c, *inputs, weights, radius, padding, strength)
        read_ref, h_ref, c_ref = reference.memory_step(h_ref, c_ref, *inputs, weights, radius, padding, strength)
        for got, want in ((read, read_ref), (h, h_ref), (c, c_ref)):
            assert got.dtype == torch.float32
            assert_close(got, want, rtol=0.0, atol=1e-4)


def test_step_float64_and_bfloat16() -> None:
    grid = (5, 4, 6)
    h, c, weights = step_state(12, 2, 3, grid, torch.float64)
    inputs = step_inputs(13, 2, 4, 6, 3, torch.float64)
    got = triton_step.memory_step(h, c, *inputs, weights, 1, "border")
    want = reference.memory_step(h, c, *inputs, weights, 1, "border")
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, **F64)
    half = [t.bfloat16() for t in (h, c, *inputs)]
    half_weights = ConvWeights(*(t.bfloat16() for t in weights))
    got = triton_step.memory_step(*half, half_weights, None, "zeros")
    want = reference.memory_step(
        *(t.float() for t in half), ConvWeights(*(t.float() for t in half_weights)), None, "zeros"
    )
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.bfloat16
        assert_close(g, w, **BF16)


def sentinel_copy(tensor: torch.Tensor, pad: int = 97) -> tuple[torch.Tensor, torch.Tensor]:
    """A contiguous copy of ``tensor`` inside a NaN buffer with ``pad`` NaNs before and after it:
    returns ``(view, buffer)``. An unmasked out-of-bounds load reads NaN; a stray store overwrites one."""
    buffer = torch.full((tensor.numel() + 2 * pad,), float("nan"), dtype=tensor.dtype, device=tensor.device)
    view = buffer[pad : pad + tensor.numel()].view(tensor.shape)
    view.copy_(tensor)
    return view, buffer


def assert_sentinels(buffer: torch.Tensor, pad: int = 97) -> None:
    assert torch.isnan(buffer[:pad]).all() and torch.isnan(buffer[-pad:]).all(), "store out of bounds"


@pytest.mark.parametrize("radius", [None, 2])
def test_write_masking_with_sentinels(radius: int | None) -> None:
    grid = (3, 5, 6)
    inputs = write_inputs(14, 2, 11, 3, torch.float32)
    guarded = [sentinel_copy(t) for t in inputs]
    views = [v for v, _ in guarded]
    out, out_buffer = sentinel_copy(torch.empty(2, 3, *grid, device=DEVICE))
    triton_write.splat_forward(*views, grid, radius, out=out)
    assert_sentinels(out_buffer)
    assert_close(out, reference.splat_write(*inputs, grid, radius), **F32)
    grad, grad_buffer = sentinel_copy(torch.randn(2, 3, *grid, device=DEVICE))
    got = triton_write.splat_backward(grad, *views, radius)
    tensors = tuple(t.detach().requires_grad_() for t in inputs)
    want = torch.autograd.grad(reference.splat_write(*tensors, grid, radius), tensors, grad.clone())
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, **F32_GRAD)
    for _, buffer in (*guarded, (None, grad_buffer)):
        assert_sentinels(buffer)


@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
def test_read_and_step_masking_with_sentinels(padding_mode: str) -> None:
    grid = (3, 5, 6)
    h, c, weights = step_state(15, 2, 3, grid, torch.float32)
    inputs = step_inputs(16, 2, 5, 7, 3, torch.float32)
    guarded = [sentinel_copy(t) for t in (h, c, *inputs, *weights)]
    views = [v for v, _ in guarded]
    read, read_buffer = sentinel_copy(torch.empty(2, 5, 3, device=DEVICE))
    triton_read.read_forward(views[0], views[2], padding_mode == "border", out=read)
    assert_close(read, reference.trilinear_read(h, inputs[0], padding_mode), **F32)
    outs = [sentinel_copy(torch.empty(shape, device=DEVICE)) for shape in ((2, 5, 3), h.shape, c.shape)]
    triton_step.memory_step(*views[:6], ConvWeights(*views[6:]), 1, padding_mode, out=tuple(v for v, _ in outs))
    want = reference.memory_step(h, c, *inputs, weights, 1, padding_mode)
    for (got, _), w in zip(outs, want, strict=True):
        assert_close(got, w, rtol=0.0, atol=1e-4)
    for _, buffer in (*guarded, *outs, (None, read_buffer)):
        assert_sentinels(buffer)


def test_sizes_beyond_one_tile_are_exact() -> None:
    """More tokens than a token block and more cells than a cell tile (interpreter sizes): the masked
    tail blocks give the reference's result."""
    grid = (17, 16, 16)
    inputs = write_inputs(17, 1, 130, 2, torch.float64)
    out, got = grads(lambda v, p, s: triton_write.splat_write(v, p, s, grid, 1), inputs, seed=7)
    ref_out, want = grads(lambda v, p, s: reference.splat_write(v, p, s, grid, 1), inputs, seed=7)
    assert_close(out, ref_out, **F64)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, **F64)
    memory = torch.randn(1, 2, *grid, dtype=torch.float64, device=DEVICE)
    queries = make_locations(torch.Generator().manual_seed(18), 1, 300, torch.float64, 1.2).to(DEVICE)
    out, got = grads(lambda m, q: triton_read.trilinear_read(m, q, "zeros"), (memory, queries), seed=8)
    ref_out, want = grads(lambda m, q: reference.trilinear_read(m, q, "zeros"), (memory, queries), seed=8)
    assert_close(out, ref_out, **F64)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, **F64)


def test_gpu_tile_sizes_through_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU launch configuration (small cell tiles, token blocks of 16, the backward split over
    cells with partial sums) gives the same results."""
    for module in (triton_common, triton_write, triton_read, triton_step):
        monkeypatch.setattr(module, "interpreted", lambda: False)
    grid = (4, 5, 7)
    inputs = write_inputs(19, 1, 20, 17, torch.float64)
    out, got = grads(lambda v, p, s: triton_write.splat_write(v, p, s, grid, None), inputs, seed=9)
    ref_out, want = grads(lambda v, p, s: reference.splat_write(v, p, s, grid, None), inputs, seed=9)
    assert_close(out, ref_out, **F64)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, **F64)
    memory = torch.randn(1, 17, *grid, dtype=torch.float64, device=DEVICE)
    queries = make_locations(torch.Generator().manual_seed(20), 1, 40, torch.float64, 1.2).to(DEVICE)
    out, got = grads(lambda m, q: triton_read.trilinear_read(m, q, "border"), (memory, queries), seed=10)
    ref_out, want = grads(lambda m, q: reference.trilinear_read(m, q, "border"), (memory, queries), seed=10)
    assert_close(out, ref_out, **F64)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, **F64)
    h, c, weights = step_state(21, 1, 17, grid, torch.float64)
    step_in = step_inputs(22, 1, 40, 5, 17, torch.float64)
    got = triton_step.memory_step(h, c, *step_in, weights, 2, "zeros")
    want = reference.memory_step(h, c, *step_in, weights, 2, "zeros")
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, **F64)


def test_non_contiguous_inputs() -> None:
    grid = (5, 7, 6)
    values, locations, sigma = write_inputs(23, 3, 6, 4, torch.float32)
    strided = (
        values.transpose(0, 1).contiguous().transpose(0, 1),
        locations.mT.contiguous().mT,
        sigma.t().contiguous().t(),
    )
    assert not any(t.is_contiguous() for t in strided)
    assert_close(
        triton_write.splat_write(*strided, grid, 1), reference.splat_write(values, locations, sigma, grid, 1), **F32
    )
    memory = torch.randn(3, 6, 7, 5, 4, device=DEVICE).permute(0, 4, 3, 2, 1)
    assert_close(
        triton_read.trilinear_read(memory, locations, "zeros"),
        reference.trilinear_read(memory, locations, "zeros"),
        **F32,
    )


def test_dispatch_uses_the_kernels() -> None:
    grid = (5, 7, 6)
    values, locations, sigma = write_inputs(24, 2, 6, 3, torch.float32)
    out = ops.splat_write(values, locations, sigma, grid=grid, radius=1, backend="triton")
    assert_close(out, reference.splat_write(values, locations, sigma, grid, 1), **F32)
    memory = torch.randn(2, 3, *grid, device=DEVICE)
    read = ops.trilinear_read(memory, locations, padding_mode="zeros", backend="triton")
    assert_close(read, reference.trilinear_read(memory, locations, "zeros"), **F32)
    h, c, weights = step_state(25, 2, 3, grid, torch.float32)
    inputs = step_inputs(26, 2, 4, 6, 3, torch.float32)
    for strength in (None, step_strength(27, 2, 6, torch.float32)):
        want = reference.memory_step(h, c, *inputs, weights, 2, "border", strength)
        with torch.no_grad():
            fused = ops.memory_step(h, c, *inputs, weights, radius=2, strength=strength, backend="triton")
        for g, w in zip(fused, want, strict=True):
            assert_close(g, w, rtol=0.0, atol=1e-4)
        values_grad = inputs[1].clone().requires_grad_()
        composed = ops.memory_step(
            h, c, inputs[0], values_grad, *inputs[2:], weights, radius=2, strength=strength, backend="triton"
        )
        for g, w in zip(composed, want, strict=True):
            assert_close(g.detach(), w, rtol=0.0, atol=1e-4)
        composed[1].sum().backward()
        ref_values = inputs[1].clone().requires_grad_()
        ref_h = reference.memory_step(h, c, inputs[0], ref_values, *inputs[2:], weights, 2, "border", strength)[1]
        ref_h.sum().backward()
        assert_close(values_grad.grad, ref_values.grad, **F32_GRAD)


def test_rejects_bad_padding_and_out() -> None:
    memory = torch.zeros(1, 2, 3, 3, 3, device=DEVICE)
    queries = torch.zeros(1, 4, 3, device=DEVICE)
    with pytest.raises(ValueError, match="padding_mode"):
        triton_read.trilinear_read(memory, queries, "reflection")
    with pytest.raises(ValueError, match="out must be"):
        triton_read.read_forward(memory, queries, True, out=torch.empty(1, 2, 4, device=DEVICE))


@pytest.mark.parametrize("options", [{}, {"local_update": True, "input_gates": True}], ids=["", "input_gates"])
def test_module_with_triton_backend_matches_torch_backend_over_steps_with_resets(options, monkeypatch) -> None:
    """Rollout steps (no grad, one step per chunk: on the CPU with its C kernel off): the fused step, and with
    gate inputs the Triton write and read composed with the PyTorch update."""
    from tmem_agents.memory import TensorMemory, TensorMemoryConfig

    monkeypatch.setenv("TMEM_CPU_KERNEL", "0")

    torch.manual_seed(7)
    memories = {
        backend: TensorMemory(
            TensorMemoryConfig(grid=(3, 4, 5), channels=3, chunk_size=2, backend=backend, **options), 6
        ).to(DEVICE)
        for backend in ("torch", "triton")
    }
    memories["triton"].load_state_dict(memories["torch"].state_dict())
    states = {backend: memory.init_state(2) for backend, memory in memories.items()}
    with torch.no_grad():
        for step in range(4):
            tokens = torch.randn(2, 4, 6, device=DEVICE)
            starts = torch.tensor([[0.0, float(step == 2)], [float(step == 1), 0.0]], device=DEVICE)
            outs = {}
            for backend, memory in memories.items():
                outs[backend], states[backend] = memory(tokens, states[backend], starts)
            torch.testing.assert_close(outs["triton"], outs["torch"], atol=1e-4, rtol=1e-4)
            for key in ("h", "c"):
                torch.testing.assert_close(states["triton"][key], states["torch"][key], atol=1e-4, rtol=1e-4)
