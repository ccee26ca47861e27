"""The Tensor Memory module: state, resets, gradients, stability, the block wrapper and bad inputs."""

import numpy as np
import pytest
import torch

from tmem_agents.gate_init import chrono_biases
from tmem_agents.memory import MemoryBlock, TensorMemory, TensorMemoryConfig
from tmem_agents.ops import memory_step
from tmem_agents.transformer import PreNormBlock


def _memory(dim=8, **kwargs):
    torch.manual_seed(0)
    config = TensorMemoryConfig(**{"grid": (4, 4, 4), "channels": 4, "chunk_size": 2, **kwargs})
    return TensorMemory(config, dim)


def test_state_keeps_its_size_and_stays_finite_and_bounded_over_10k_steps():
    memory = _memory()
    state = memory.init_state(3)
    assert state.batch_size == torch.Size([3])
    assert state["h"].shape == (3, 4, 4, 4, 4) and state["c"].shape == (3, 4, 4, 4, 4)
    sizes = {}
    with torch.no_grad():
        for step in range(1, 10_001):
            out, state = memory(torch.randn(3, 5, 8) * 3, state)
            if step in (1, 100, 1_000, 10_000):
                sizes[step] = (sum(t.numel() for t in state.values()), state.bytes())
    assert out.shape == (3, 5, 8)
    assert sizes[1] == sizes[100] == sizes[1_000] == sizes[10_000]
    assert sizes[1][0] == 3 * memory.config.state_numel
    assert sizes[1][1] == 2 * 3 * 4 * 64 * 4  # two float32 grids per env
    h, c = state["h"], state["c"]
    assert torch.isfinite(h).all() and torch.isfinite(c).all()
    assert h.abs().max() <= 1.0  # h = sig(o) tanh(c)
    assert c.abs().max() < 1e3


def test_reset_zeroes_only_flagged_envs():
    memory = _memory()
    state = memory.init_state(4)
    with torch.no_grad():
        _, state = memory(torch.randn(4, 4, 8), state)
    reset = memory.reset(state, torch.tensor([True, False, True, False]))
    for key in ("h", "c"):
        assert torch.count_nonzero(reset[key][[0, 2]]) == 0
        assert torch.equal(reset[key][[1, 3]], state[key][[1, 3]])
    with pytest.raises(ValueError, match="episode_starts"):
        memory.reset(state, torch.zeros(3, dtype=torch.bool))


def test_backprop_through_64_steps_reaches_the_first_tokens():
    memory = _memory(chunk_size=1)
    state = memory.init_state(2)
    first = torch.randn(2, 1, 8, requires_grad=True)
    out, state = memory(first, state)
    for _ in range(63):
        out, state = memory(torch.randn(2, 1, 8), state)
    out.sum().backward()
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_chunks_are_sequential_memory_steps():
    memory = _memory(chunk_size=2)
    tokens = torch.randn(2, 6, 8)
    state = memory.init_state(2)
    whole, whole_state = memory(tokens, state)
    parts = []
    for start in range(0, 6, 2):
        out, state = memory(tokens[:, start : start + 2], state)
        parts.append(out)
    assert torch.allclose(whole, torch.cat(parts, 1), atol=1e-6)
    assert torch.allclose(whole_state["h"], state["h"], atol=1e-6)
    # every token of a chunk gets its chunk's read
    assert torch.equal(whole[:, 0], whole[:, 1])


@pytest.mark.parametrize("per_token", [False, True])
def test_strided_tokens_give_what_contiguous_tokens_give(per_token):
    memory = _memory(per_token=per_token)
    tokens = torch.randn(4, 3, 8).transpose(0, 1)  # (B, N, d) as a view of a time-major tensor
    out, state = memory(tokens, memory.init_state(3))
    out_contiguous, state_contiguous = memory(tokens.contiguous(), memory.init_state(3))
    assert torch.equal(out, out_contiguous) and torch.equal(state["h"], state_contiguous["h"])


def test_memory_output_depends_on_what_was_written():
    memory = _memory(chunk_size=1)
    state = memory.init_state(1)
    probe = torch.randn(1, 1, 8)
    _, blank = memory(torch.zeros(1, 1, 8), state)
    _, written = memory(torch.randn(1, 1, 8) * 3, state)
    read_blank, _ = memory(probe, blank)
    read_written, _ = memory(probe, written)
    assert not torch.allclose(read_blank, read_written)


def test_the_new_state_depends_only_on_the_write_tokens():
    memory = _memory()
    state = memory.init_state(2)
    writes = torch.randn(2, 4, 8)
    _, default = memory(writes, state)
    _, given = memory(torch.randn(2, 4, 8), state, write_tokens=writes)
    assert torch.equal(default["h"], given["h"]) and torch.equal(default["c"], given["c"])
    with pytest.raises(ValueError, match="write_tokens must have the shape"):
        memory(writes, state, write_tokens=writes[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        memory(writes, state, write_tokens=torch.full_like(writes, float("nan")))


@pytest.mark.parametrize("local", [False, True])
def test_zero_tokens_leave_an_empty_memory_empty(local):
    memory = _memory(local_update=local)
    _, state = memory(torch.zeros(2, 6, 8), memory.init_state(2))
    assert state["h"].abs().max() == 0 and state["c"].abs().max() == 0


@pytest.mark.parametrize("source", ["memory_input", "block_input"])
def test_a_block_writes_from_the_tokens_its_config_names(source):
    memory = _memory(write_from=source)
    block = MemoryBlock(PreNormBlock(8, heads=2), memory)
    x = torch.randn(2, 4, 8)
    _, state = block(x, memory.init_state(2))
    writes = x if source == "block_input" else block.norm(block.pre(x))
    _, expected = memory(torch.randn(2, 4, 8), memory.init_state(2), write_tokens=writes)
    assert torch.allclose(state["h"], expected["h"]) and torch.allclose(state["c"], expected["c"])


def test_without_write_grad_no_gradient_reaches_the_tokens_through_the_memory():
    tokens = torch.randn(2, 4, 8, requires_grad=True)
    grads = {}
    for write_grad in (True, False):
        memory = _memory(write_grad=write_grad)
        state = memory.init_state(2)
        _, state = memory(tokens[:, :2], state)
        read, _ = memory(torch.randn(2, 2, 8), state)
        tokens.grad, memory.write_proj.weight.grad = None, None
        read.square().sum().backward()
        grads[write_grad] = (tokens.grad, memory.write_proj.weight.grad)
    assert grads[True][0].abs().max() > 0 and grads[False][0] is None
    assert torch.equal(grads[True][1], grads[False][1])


def test_a_read_cube_reads_the_eight_corners_around_the_read_location():
    memory = _memory(chunk_size=1, read_cube=0.5, read_norm=True)
    assert memory.out_proj.in_features == 8 * 4 and memory.read_norm.normalized_shape == (8 * 4,)
    state = memory.init_state(2).apply(lambda t: torch.randn_like(t))
    tokens = torch.randn(2, 1, 8)
    reads = {}
    memory.read_norm.register_forward_hook(lambda module, args, out: reads.update(read=args[0]))
    memory(tokens, state)
    signs = torch.tensor([[x, y, z] for z in (-1.0, 1.0) for y in (-1.0, 1.0) for x in (-1.0, 1.0)])
    corners = memory.coordinates(tokens) + 0.5 * signs
    expected = torch.nn.functional.grid_sample(
        state["h"], corners.view(2, 8, 1, 1, 3), align_corners=True, padding_mode="border"
    ).view(2, 4, 8)
    assert torch.allclose(reads["read"][:, 0, 0], expected.transpose(1, 2).flatten(1), atol=1e-6)


@pytest.mark.parametrize("kernel", ["1", "0"])
@pytest.mark.parametrize("per_token", [False, True])
def test_a_grid_read_reads_every_cell_of_the_state_before_the_write(monkeypatch, kernel, per_token):
    """Training and rollouts (no grad: the scan with the C kernel, one step per chunk without it) alike."""
    monkeypatch.setenv("TMEM_CPU_KERNEL", kernel)
    memory = _memory(chunk_size=2, read_grid=True, read_norm=True, local_update=True, per_token=per_token)
    assert memory.out_proj.in_features == 4 * 64 and memory.read_norm.normalized_shape == (4 * 64,)
    state = memory.init_state(2).apply(lambda t: torch.randn_like(t))
    tokens = torch.randn(2, 4, 8)
    starts = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    out, new_state = memory(tokens, state, starts)
    _, first = memory(tokens[:, :2], state)
    second_read = first["h"] * torch.tensor([1.0, 0.0]).view(2, 1, 1, 1, 1)  # env 1 starts an episode
    expected = memory.out_proj(memory.read_norm(torch.stack([state["h"], second_read], dim=1).flatten(2)))
    assert torch.allclose(out, expected.repeat_interleave(2, dim=1), atol=1e-5)
    with torch.no_grad():
        out_no_grad, state_no_grad = memory(tokens, state, starts)
    assert torch.allclose(out, out_no_grad, atol=1e-5) and torch.allclose(new_state["h"], state_no_grad["h"], atol=1e-5)


@pytest.mark.parametrize("kernel", ["1", "0"])
def test_a_grid_read_after_the_write_reads_each_steps_new_state(monkeypatch, kernel):
    monkeypatch.setenv("TMEM_CPU_KERNEL", kernel)
    memory = _memory(chunk_size=2, read_grid=True, read_norm=True, local_update=True, read_after_write=True)
    state = memory.init_state(2).apply(lambda t: torch.randn_like(t))
    tokens = torch.randn(2, 4, 8)
    starts = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    out, new_state = memory(tokens, state, starts)
    _, first = memory(tokens[:, :2], state)
    expected = memory.out_proj(memory.read_norm(torch.stack([first["h"], new_state["h"]], dim=1).flatten(2)))
    assert torch.allclose(out, expected.repeat_interleave(2, dim=1), atol=1e-5)
    with torch.no_grad():
        out_no_grad, state_no_grad = memory(tokens, state, starts)
    assert torch.allclose(out, out_no_grad, atol=1e-5) and torch.allclose(new_state["h"], state_no_grad["h"], atol=1e-5)


@pytest.mark.parametrize("local", [False, True])
def test_per_token_every_token_reads_its_place_and_padding_writes_nothing(local):
    memory = _memory(chunk_size=2, per_token=True, local_update=local, backend="torch")
    state = memory.init_state(2).apply(lambda t: torch.randn_like(t))
    tokens = torch.randn(2, 3, 8)  # a full chunk, then a chunk of one token and one padding token
    out, new_state = memory(tokens, state)
    reads = torch.nn.functional.grid_sample(
        state["h"], memory.coordinates(tokens[:, :2]).view(2, 2, 1, 1, 3), align_corners=True, padding_mode="border"
    ).view(2, 4, 2)
    assert torch.allclose(out[:, :2], memory.out_proj(reads.transpose(1, 2)), atol=1e-6)
    assert not torch.allclose(out[:, 0], out[:, 1])
    _, first = memory(tokens[:, :2], state)
    values, location, sigma, strength = memory.write_terms(memory.write_proj(tokens[:, 2:]))  # one write alone
    read_at = memory.coordinates(tokens[:, 2:])
    _, h, c = memory_step(
        first["h"], first["c"], read_at, values, location, sigma, memory.update.weights(), strength=strength
    )
    assert torch.allclose(new_state["h"], h, atol=1e-6) and torch.allclose(new_state["c"], c, atol=1e-6)


def test_placed_tokens_start_reading_and_writing_at_their_places():
    places = torch.tensor([[-0.5, 0.25, 0.0], [float("nan")] * 3])
    config = TensorMemoryConfig(grid=(4, 4, 4), channels=4, chunk_size=2, per_token=True, backend="torch")
    memory = TensorMemory(config, 8, places)
    memory.reset_write_heads()
    tokens = torch.randn(3, 2, 8)
    _, write_at, _, _ = memory.write_terms(memory.write_proj(tokens))
    expected = torch.tensor([[-0.5, 0.25, 0.0], [0.0, 0.0, 0.0]]).expand(3, 2, 3)
    assert torch.allclose(write_at, expected, atol=1e-6) and torch.allclose(memory.coordinates(tokens), expected)
    loss = memory(tokens, memory.init_state(3))[1]["h"].square().sum()
    loss.backward()
    assert memory.coord.weight.grad.abs().sum() > 0, "the coordinate head learns offsets from the places"
    with torch.no_grad():
        memory.coord.weight.normal_()
    moved = memory.coordinates(tokens)
    assert torch.allclose(moved[:, 1], torch.tanh(memory.coord(tokens[:, 1])))
    assert torch.allclose(torch.atanh(moved[:, 0]), memory.coord(tokens[:, 0]) + torch.atanh(places[0]), atol=1e-5)


def test_inner_places_scale_each_axis_by_its_own_cells():
    places = torch.tensor([[0.5, 0.5, 0.5], [float("nan")] * 3])
    config = TensorMemoryConfig(grid=(3, 4, 6), channels=4, chunk_size=2, per_token=True, inner_places=True)
    memory = TensorMemory(config, 8, places)
    memory.reset_write_heads()
    at = memory.coordinates(torch.randn(1, 2, 8))[0]
    # (x, y, z) index (W, H, D) = (6, 4, 3) cells: q (n - 2) / (n - 1)
    assert torch.allclose(at[0], torch.tensor([0.5 * 4 / 5, 0.5 * 2 / 3, 0.5 * 1 / 2]), atol=1e-6)
    assert torch.allclose(at[1], torch.zeros(3)), "a token without a place stays at the centre"


def test_places_are_refused_without_per_token_or_with_bad_values():
    config = TensorMemoryConfig(grid=(4, 4, 4), channels=4, chunk_size=2, per_token=True)
    with pytest.raises(ValueError, match="set per_token=True"):
        TensorMemory(TensorMemoryConfig(chunk_size=2), 8, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"places must have shape \(2, 3\)"):
        TensorMemory(config, 8, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="strictly inside"):
        TensorMemory(config, 8, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_integer_gate_init_makes_a_float_gate():
    block = MemoryBlock(PreNormBlock(8, heads=2), _memory(gate_init=2))
    assert block.gate.dtype == torch.float32 and block.gate.item() == 2.0


def test_detached_block_is_bit_identical_to_the_bare_block():
    torch.manual_seed(1)
    block = PreNormBlock(8, heads=2)
    memory = _memory()
    wrapped = MemoryBlock(block, memory)
    x = torch.randn(3, 4, 8)
    with_memory, state = wrapped(x, memory.init_state(3))
    assert state is not None and not torch.equal(with_memory, block(x))
    assert wrapped.detach_memory() is memory
    detached, untouched = wrapped(x, None)
    assert untouched is None
    assert torch.equal(detached, block(x))
    wrapped.attach(memory)
    again, _ = wrapped(x, memory.init_state(3))
    assert torch.equal(again, with_memory)


def test_memory_shared_across_blocks_and_any_block_module():
    memory = _memory()
    layers = [MemoryBlock(PreNormBlock(8, heads=2), memory), MemoryBlock(torch.nn.Linear(8, 8), memory)]
    state = memory.init_state(2)
    x = torch.randn(2, 4, 8)
    for layer in layers:
        x, state = layer(x, state)
    assert x.shape == (2, 4, 8)
    params = {id(p) for layer in layers for p in layer.parameters()}
    assert all(id(p) in params for p in memory.parameters())
    assert torch.sigmoid(layers[0].gate).item() == pytest.approx(torch.sigmoid(torch.tensor(-2.0)).item())


def test_bad_inputs_raise_clear_errors():
    memory = _memory()
    state = memory.init_state(2)
    with pytest.raises(ValueError, match=r"tokens must have shape \(B, N, 8\)"):
        memory(torch.randn(2, 3, 7), state)
    with pytest.raises(ValueError, match="state\\['h'\\] must have shape"):
        memory(torch.randn(3, 3, 8), state)
    with pytest.raises(ValueError, match="NaN"):
        memory(torch.full((2, 3, 8), float("nan")), state)
    with pytest.raises(ValueError, match="needs the memory state"):
        MemoryBlock(torch.nn.Identity(), memory)(torch.randn(2, 3, 8))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("grid", (1, 8, 8)),
        ("grid", (8, 8)),
        ("channels", 0),
        ("chunk_size", 0),
        ("sigma_scale", -1.0),
        ("write_radius", -2),
        ("backend", "cuda"),
        ("padding_mode", "reflect"),
        ("gate_init", float("nan")),
        ("local_update", "yes"),
        ("read_norm", 1),
        ("strength_bias_init", float("inf")),
        ("write_from", "tokens"),
        ("read_cube", -0.5),
        ("read_grid", "yes"),
        ("write_grad", 0),
        ("check_inputs", "false"),
        ("forget_timescale_max", 1.5),
        ("forget_timescale_max", float("nan")),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TensorMemoryConfig(**{field: value})


def test_chrono_biases_hold_each_unit_over_its_own_timescale():
    input_bias, forget = chrono_biases(5, 60.0)
    timescales = 1 / (1 - torch.sigmoid(forget.double()))  # steps over which a forget gate keeps its cell
    assert torch.allclose(
        timescales, torch.tensor([60.0, 60**0.75 * 2**0.25, 120**0.5, 60**0.25 * 2**0.75, 2.0]).double()
    )
    assert torch.allclose(torch.sigmoid(input_bias.double()), 1 / timescales)
    assert torch.equal(chrono_biases(3, 2.0)[1], torch.zeros(3))
    assert torch.allclose(torch.sigmoid(chrono_biases(1, 10.0)[1]), torch.tensor([0.9]))
    for bad in (1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="chrono_biases needs timescale_max a finite number of steps >= 2"):
            chrono_biases(4, bad)
    with pytest.raises(ValueError, match="units >= 1"):
        chrono_biases(0, 10.0)


def test_forget_timescale_max_spreads_the_channels_input_and_forget_gates_in_place_of_forget_bias_init():
    memory = _memory(forget_bias_init=3.0, forget_timescale_max=30.0)
    bias = memory.update.pointwise_bias.detach()
    input_bias, forget = chrono_biases(4, 30.0)
    assert torch.equal(bias[:4], input_bias) and torch.equal(bias[4:8], forget)
    assert torch.equal(bias[8:], torch.zeros(8)), "the output and candidate gates start as without the spread"
    assert torch.equal(
        _memory(forget_bias_init=3.0).update.pointwise_bias.detach()[:8], torch.tensor([0.0] * 4 + [3.0] * 4)
    )


def test_a_grid_read_and_a_read_cube_are_refused_together():
    with pytest.raises(ValueError, match="read_grid reads every cell, so read_cube must be 0"):
        TensorMemoryConfig(read_grid=True, read_cube=0.5)


def test_boolean_chunk_starts_and_numpy_resets():
    memory = _memory(chunk_size=2)
    tokens = torch.randn(2, 4, 8)
    starts = torch.tensor([[False, True], [False, False]])
    with_grad, _ = memory(tokens, memory.init_state(2), starts)
    with torch.no_grad():
        without, _ = memory(tokens, memory.init_state(2), starts)
    assert torch.allclose(with_grad, without, atol=1e-6)
    state = memory.reset(memory.init_state(2), np.array([True, False]))
    assert state.batch_size == torch.Size([2])


def test_local_update_keeps_the_state_where_the_memory_declines_to_write():
    memory = _memory(local_update=True)
    state = memory.init_state(2).apply(torch.randn_like)
    tokens = torch.randn(2, 4, 8)
    _, written = memory(tokens, state)
    assert not torch.allclose(written["h"], state["h"])
    with torch.no_grad():
        memory.strength_bias.fill_(-100.0)  # write strength sigmoid(-100): no cell is reached
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            _, kept = memory(tokens, state)
        assert torch.allclose(kept["h"], state["h"]) and torch.allclose(kept["c"], state["c"])


def test_writes_start_with_one_spread_and_strength_and_reset_write_heads_restores_that():
    memory = _memory(local_update=True)
    tokens = torch.randn(5, 8) * 3.0
    _, locations, sigma, strength = memory.write_terms(tokens)
    assert torch.allclose(sigma, sigma[0].expand_as(sigma)) and torch.allclose(strength, torch.full_like(strength, 0.5))
    assert locations.std(0).min() > 0  # the coordinates still depend on the token
    with torch.no_grad():
        for layer in (memory.coord, memory.spread, memory.strength, memory.content):
            layer.weight.normal_(0.0, 2.0)  # as an outside initialiser (SB3's orthogonal one) would leave them
    with torch.no_grad():
        for layer in (memory.write_proj, memory.content):
            layer.bias.normal_(0.0, 2.0)
    memory.reset_write_heads()
    assert memory.spread.weight.abs().max() == 0 and memory.strength.weight.abs().max() == 0
    assert memory.write_proj.bias.abs().max() == 0 and memory.content.bias.abs().max() == 0
    for layer in (memory.coord, memory.content):
        assert layer.weight.abs().max() <= 1 / 8**0.5  # nn.Linear's draw


def test_single_token_attention_equals_multihead_attention():
    torch.manual_seed(0)
    block = PreNormBlock(8, heads=2).double()
    x = torch.randn(5, 1, 8, dtype=torch.float64, requires_grad=True)
    fast = block.attention_residual(x)
    y = block.norm1(x)
    reference = x + block.attn(y, y, y, need_weights=False)[0]
    assert torch.allclose(fast, reference, atol=1e-12)
    params = [x, *block.parameters()]
    cotangent = torch.randn_like(fast)
    for a, b in zip(
        torch.autograd.grad(fast, params, cotangent, allow_unused=True),
        torch.autograd.grad(reference, params, cotangent, allow_unused=True),
        strict=True,
    ):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("kernel", ["1", "0"])
@pytest.mark.parametrize("after_write", [False, True])
@pytest.mark.parametrize(
    ("local", "cube", "per_token"), [(False, 0.0, False), (True, 0.0, False), (True, 0.5, False), (True, 0.5, True)]
)
def test_no_grad_forward_equals_the_training_forward(monkeypatch, kernel, after_write, local, cube, per_token):
    """Rollouts (no grad: the scan with the C kernel, or one reference step per chunk without it) compute
    what training computes, reading before or after each step's write."""
    monkeypatch.setenv("TMEM_CPU_KERNEL", kernel)
    memory = _memory(
        chunk_size=2,
        local_update=local,
        read_norm=local,
        read_cube=cube,
        per_token=per_token,
        read_after_write=after_write,
    )
    tokens = torch.randn(3, 6, 8)
    starts = torch.tensor([[0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=torch.float32)
    state = memory.init_state(3).apply(lambda t: torch.randn_like(t) * 0.5)
    out, new_state = memory(tokens, state, starts)
    with torch.no_grad():
        out_no_grad, state_no_grad = memory(tokens, state, starts)
    assert torch.allclose(out, out_no_grad, atol=1e-5)
    for key in ("h", "c"):
        assert torch.allclose(new_state[key], state_no_grad[key], atol=1e-5)


@pytest.mark.parametrize("kernel", ["1", "0"])
def test_input_gates_set_the_gates_from_the_write_input(monkeypatch, kernel):
    """With ``input_gates`` the write input moves every cell's gates: zeroed, the memory is the one without them;
    drawn, it changes the state, learns by gradient, and rollouts (no grad) compute what training computes."""
    monkeypatch.setenv("TMEM_CPU_KERNEL", kernel)
    memory = _memory(chunk_size=2, local_update=True, input_gates=True)
    plain = _memory(chunk_size=2, local_update=True)
    plain.load_state_dict({k: v for k, v in memory.state_dict().items() if not k.startswith("gate_proj")})
    state = memory.init_state(2).apply(lambda t: torch.randn_like(t))
    tokens = torch.randn(2, 4, 8)
    starts = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    out, new_state = memory(tokens, state, starts)
    _, plain_state = plain(tokens, state, starts)
    assert not torch.allclose(new_state["h"], plain_state["h"], atol=1e-4)
    (out.square().sum() + new_state["c"].sum()).backward()
    assert memory.gate_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        out_no_grad, state_no_grad = memory(tokens, state, starts)
        memory.gate_proj.weight.zero_()
        _, zeroed = memory(tokens, state, starts)
    assert torch.allclose(out, out_no_grad, atol=1e-5) and torch.allclose(new_state["c"], state_no_grad["c"], atol=1e-5)
    assert torch.allclose(zeroed["c"], plain_state["c"], atol=1e-6)
