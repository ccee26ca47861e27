"""The PyTorch reference operators against their formulas, grid_sample and gradcheck."""

import pytest
import torch
import torch.nn.functional as F

from tmem_agents.ops import ConvWeights, memory_step, reference, resolve_backend, splat_write, trilinear_read


def _cell_positions(grid, dtype=torch.float64):
    depth, height, width = grid
    z, y, x = torch.meshgrid(*(reference.axis_positions(s, dtype=dtype) for s in (depth, height, width)), indexing="ij")
    return torch.stack([x, y, z], dim=-1)  # (D, H, W, 3) as (x, y, z)


def _formula_write(values, locations, sigma, grid):
    pos = _cell_positions(grid, values.dtype)
    loc = locations.clamp(-1, 1)
    dist = ((pos[None, None] - loc[:, :, None, None, None]) ** 2).sum(-1)  # (B, N, D, H, W)
    weight = torch.exp(-dist / (2 * sigma[..., None, None, None] ** 2 + 1e-6))
    return torch.einsum("bnc,bndhw->bcdhw", values, weight)


def test_write_at_cell_centre_matches_formula():
    grid = (5, 7, 6)
    values = torch.tensor([[[1.0, -2.0]]], dtype=torch.float64)
    centre = torch.tensor([[[-1 + 2 * 2 / 5, -1 + 2 * 3 / 6, -1 + 2 * 1 / 4]]], dtype=torch.float64)
    sigma = torch.tensor([[0.3]], dtype=torch.float64)
    volume = splat_write(values, centre, sigma, grid=grid)
    assert volume.shape == (1, 2, 5, 7, 6)
    assert torch.allclose(volume[0, :, 1, 3, 2], values[0, 0])  # cell (z=1, y=3, x=2) holds v exactly
    assert torch.allclose(volume, _formula_write(values, centre, sigma, grid), atol=1e-12)


def test_several_writes_sum_and_locations_are_clamped():
    torch.manual_seed(0)
    grid = (4, 5, 6)
    values = torch.randn(3, 4, 5, dtype=torch.float64)
    locations = torch.rand(3, 4, 3, dtype=torch.float64) * 3 - 1.5
    sigma = torch.rand(3, 4, dtype=torch.float64) + 0.05
    total = splat_write(values, locations, sigma, grid=grid)
    parts = sum(
        splat_write(values[:, n : n + 1], locations[:, n : n + 1], sigma[:, n : n + 1], grid=grid) for n in range(4)
    )
    assert torch.allclose(total, parts, atol=1e-12)
    assert torch.allclose(total, _formula_write(values, locations, sigma, grid), atol=1e-12)


@pytest.mark.parametrize("radius", [0, 1, 2, 3])
def test_windowed_write_keeps_the_window_around_the_nearest_cell(radius):
    torch.manual_seed(radius)
    grid = (5, 7, 6)
    values = torch.randn(2, 3, 4, dtype=torch.float64)
    locations = torch.rand(2, 3, 3, dtype=torch.float64) * 2.4 - 1.2
    sigma = torch.rand(2, 3, dtype=torch.float64) * 0.6 + 0.1
    windowed = splat_write(values, locations, sigma, grid=grid, radius=radius)
    pos = _cell_positions(grid)
    expected = torch.zeros_like(windowed)
    for b in range(2):
        for n in range(3):
            single = _formula_write(
                values[b : b + 1, n : n + 1], locations[b : b + 1, n : n + 1], sigma[b : b + 1, n : n + 1], grid
            )
            near = [reference.nearest_cell(locations[b, n, a], s) for a, s in enumerate((grid[2], grid[1], grid[0]))]
            index = torch.stack(torch.meshgrid(*(torch.arange(s) for s in grid), indexing="ij"), -1)  # (z, y, x)
            inside = (
                ((index[..., 2] - near[0]).abs() <= radius)
                & ((index[..., 1] - near[1]).abs() <= radius)
                & ((index[..., 0] - near[2]).abs() <= radius)
            )
            expected[b] += single[0] * inside
    assert pos.shape[:3] == grid
    assert torch.allclose(windowed, expected, atol=1e-12)
    big = splat_write(values, locations, sigma, grid=grid, radius=10)
    assert torch.allclose(big, splat_write(values, locations, sigma, grid=grid), atol=1e-12)


@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
def test_read_equals_grid_sample(padding_mode):
    torch.manual_seed(1)
    memory = torch.randn(2, 3, 5, 7, 6)
    queries = torch.rand(2, 9, 3) * 2.6 - 1.3
    got = trilinear_read(memory, queries, padding_mode=padding_mode)
    expected = F.grid_sample(memory, queries.view(2, 9, 1, 1, 3), padding_mode=padding_mode, align_corners=True)
    assert got.shape == (2, 9, 3)
    assert torch.equal(got, expected.view(2, 3, 9).transpose(1, 2))


def test_write_gradcheck_dense_and_windowed():
    torch.manual_seed(2)
    grid = (4, 5, 3)
    values = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    # away from the clamp edges and the half-voxel boundaries where the window jumps
    locations = torch.tensor(
        [
            [[0.1, -0.45, 0.2], [-0.8, 0.55, -0.1], [0.62, 0.05, 0.9]],
            [[-0.3, 0.3, -0.6], [0.4, -0.7, 0.15], [0.0, 0.7, -0.9]],
        ],
        dtype=torch.float64,
        requires_grad=True,
    )
    sigma = (torch.rand(2, 3, dtype=torch.float64) * 0.5 + 0.2).requires_grad_()
    for radius in (None, 1):
        assert torch.autograd.gradcheck(
            lambda v, p, s, r=radius: splat_write(v, p, s, grid=grid, radius=r), (values, locations, sigma)
        )


def test_read_gradcheck():
    torch.manual_seed(3)
    memory = torch.randn(2, 3, 4, 5, 3, dtype=torch.float64, requires_grad=True)
    queries = (torch.rand(2, 4, 3, dtype=torch.float64) * 1.6 - 0.8).requires_grad_()
    assert torch.autograd.gradcheck(lambda m, q: trilinear_read(m, q), (memory, queries))


def test_factorized_conv_equals_grouped_conv3d():
    torch.manual_seed(4)
    channels = 6
    weights = ConvWeights(
        *(
            torch.randn(*shape, dtype=torch.float64)
            for shape in [
                (channels, 3),
                (channels,),
                (channels, 3),
                (channels,),
                (channels, 3),
                (channels,),
                (9, channels),
                (9,),
            ]
        )
    )
    x = torch.randn(2, channels, 5, 7, 6, dtype=torch.float64)
    y = F.conv3d(x, weights.taps_d.view(channels, 1, 3, 1, 1), weights.bias_d, padding=(1, 0, 0), groups=channels)
    y = F.conv3d(y, weights.taps_h.view(channels, 1, 1, 3, 1), weights.bias_h, padding=(0, 1, 0), groups=channels)
    y = F.conv3d(y, weights.taps_w.view(channels, 1, 1, 1, 3), weights.bias_w, padding=(0, 0, 1), groups=channels)
    y = F.conv3d(y, weights.pointwise[:, :, None, None, None], weights.pointwise_bias)
    assert torch.allclose(reference.factorized_conv(x, weights), y, atol=1e-12)


def test_memory_step_reads_the_state_before_its_write():
    torch.manual_seed(5)
    channels, grid = 2, (3, 3, 3)
    weights = ConvWeights(*(torch.randn(*s) for s in [(4, 3), (4,), (4, 3), (4,), (4, 3), (4,), (8, 4), (8,)]))
    h = torch.randn(1, channels, *grid)
    c = torch.randn_like(h)
    loc = torch.zeros(1, 1, 3)
    read, h_next, c_next = memory_step(h, c, loc, torch.ones(1, 1, channels), loc, torch.ones(1, 1), weights)
    assert torch.allclose(read[0, 0], h[0, :, 1, 1, 1])
    gates = reference.factorized_conv(
        torch.cat([splat_write(torch.ones(1, 1, channels), loc, torch.ones(1, 1), grid=grid), h], 1), weights
    )
    i, f, o, g = gates.chunk(4, 1)
    assert torch.allclose(c_next, torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g))
    assert torch.allclose(h_next, torch.sigmoid(o) * torch.tanh(c_next))


def test_local_update_moves_each_cell_by_its_write_mass():
    torch.manual_seed(6)
    channels, grid = 2, (3, 4, 5)
    weights = ConvWeights(*(torch.randn(*s) for s in [(4, 3), (4,), (4, 3), (4,), (4, 3), (4,), (8, 4), (8,)]))
    h, c = torch.randn(2, channels, *grid), torch.randn(2, channels, *grid)
    inputs = (torch.rand(2, 1, 3) * 2 - 1, torch.randn(2, 3, channels), torch.rand(2, 3, 3) * 2 - 1)
    sigma = 0.5 + torch.rand(2, 3)
    strength = torch.tensor([[0.9, 0.8, 0.7], [0.0, 0.0, 0.0]])
    inputs[2][0] = 0.0  # three strong writes at one place: their mass is capped at 1
    _, h_global, c_global = memory_step(h, c, *inputs, sigma, weights)
    _, h_local, c_local = memory_step(h, c, *inputs, sigma, weights, strength=strength)
    mass = reference.write_mass(strength, inputs[2], sigma, grid)
    assert mass.shape == (2, 1, *grid) and mass.max() == 1.0
    assert torch.allclose(h_local, h + mass * (h_global - h), atol=1e-6)
    assert torch.allclose(c_local, c + mass * (c_global - c), atol=1e-6)
    # strength 0: nothing is written, every cell keeps its state exactly
    assert torch.equal(h_local[1], h[1]) and torch.equal(c_local[1], c[1])
    with pytest.raises(ValueError, match="strength"):
        memory_step(h, c, *inputs, sigma, weights, strength=strength[:, :2])


def test_bad_operator_inputs_raise_clear_errors():
    values, locations, sigma = torch.zeros(2, 3, 4), torch.zeros(2, 3, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="grid"):
        splat_write(values, locations, sigma, grid=(1, 4, 4))
    with pytest.raises(ValueError, match="radius"):
        splat_write(values, locations, sigma, grid=(4, 4, 4), radius=-1)
    with pytest.raises(ValueError, match="agree"):
        splat_write(values, locations, torch.ones(2, 2), grid=(4, 4, 4))
    with pytest.raises(ValueError, match="queries"):
        trilinear_read(torch.zeros(2, 4, 3, 3, 3), torch.zeros(2, 5, 2))
    with pytest.raises(ValueError, match="padding_mode"):
        trilinear_read(torch.zeros(2, 4, 3, 3, 3), torch.zeros(2, 5, 3), padding_mode="reflect")
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("cuda", torch.device("cpu"))


def test_auto_backend_never_fails_on_the_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1|triton package"):
        resolve_backend("triton", torch.device("cpu"))


def test_memory_step_checks_shapes_before_any_backend():
    channels, grid = 2, (3, 3, 3)
    weights = ConvWeights(*(torch.zeros(*s) for s in [(4, 3), (4,), (4, 3), (4,), (4, 3), (4,), (8, 4), (8,)]))
    h = torch.zeros(2, channels, *grid)
    loc = torch.zeros(2, 1, 3)
    ok = (h, h.clone(), loc, torch.zeros(2, 1, channels), loc, torch.ones(2, 1), weights)
    memory_step(*ok)
    with pytest.raises(ValueError, match="h and c"):
        memory_step(h, h[:1], *ok[2:])
    with pytest.raises(ValueError, match="values must be"):
        memory_step(h, h, loc, torch.zeros(2, 1, 3), loc, torch.ones(2, 1), weights)
    with pytest.raises(ValueError, match="weights.pointwise"):
        memory_step(*ok[:-1], weights._replace(pointwise=torch.zeros(8, 3)))
