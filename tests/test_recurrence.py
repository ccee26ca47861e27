"""The hand-written recurrence against autograd through the plain per-step loop, the channel-major write
share against the reference, and the module's scan against one reference ``memory_step`` per chunk."""

import functools

import pytest
import torch

from tmem_agents.memory import FactorizedGateConv, TensorMemory, TensorMemoryConfig
from tmem_agents.ops import cpu_kernel, memory_step
from tmem_agents.ops import recurrence as recurrence_module
from tmem_agents.ops.recurrence import dense_operator, recurrence, write_gates
from tmem_agents.ops.reference import ConvWeights, input_gates, local_update, lstm_update, step_gates

STEPS, BATCH, CHANNELS, GRID = 4, 3, 2, (3, 4, 2)
KEEP = torch.tensor([[1, 1, 1], [1, 0, 1], [1, 1, 0], [0, 1, 1]], dtype=torch.float64)


@pytest.fixture(params=["kernel", "dense", "shifted"])
def depthwise_form(request, monkeypatch):
    """The C kernel (CPU), and the PyTorch form with both forms of its depthwise convs: the per-channel matrix
    (small grids) and the shifted multiply-adds."""
    if request.param == "kernel":
        if not cpu_kernel.available(torch.zeros(1, dtype=torch.float64)):
            pytest.skip("no C compiler: the recurrence runs its PyTorch form")
    else:
        monkeypatch.setenv("TMEM_CPU_KERNEL", "0")
    if request.param == "shifted":
        monkeypatch.setattr(recurrence_module, "DENSE_CELLS", 0)
    return request.param


def _inputs():
    """Volumes, h, c and the eight conv weights (taps and biases along D, H, W; pointwise and its bias)."""
    torch.manual_seed(0)
    kw = {"dtype": torch.float64, "requires_grad": True}
    depthwise = [
        torch.randn(2 * CHANNELS, 3, **kw) if i % 2 == 0 else torch.randn(2 * CHANNELS, **kw) for i in range(6)
    ]
    return (
        torch.randn(STEPS, BATCH, CHANNELS, *GRID, **kw),
        torch.randn(BATCH, CHANNELS, *GRID, **kw),
        torch.randn(BATCH, CHANNELS, *GRID, **kw),
        *depthwise,
        torch.randn(4 * CHANNELS, 2 * CHANNELS, **kw),
        torch.randn(4 * CHANNELS, **kw),
    )


@pytest.fixture(params=["global", "local"])
def update_form(request):
    """The update of every cell at every step, and the local update weighted by write masses."""
    return request.param


def _masses(form):
    if form == "global":
        return None
    return torch.rand(STEPS, BATCH, 1, *GRID, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


@pytest.fixture(params=[False, True], ids=["read_before_write", "read_after_write"])
def after_write(request):
    """The state each step reads: the one before the step, or the step's new one."""
    return request.param


def _plain(after_write, masses, volumes, h, c, *weights, gate_inputs=None):
    """The reference, step by step: the factorized conv of concat(V, h) (plus the gate inputs), the LSTM update,
    the local update."""
    reads = []
    for step in range(STEPS):
        keep = KEEP[step].view(-1, 1, 1, 1, 1)
        h, c = h * keep, c * keep
        if not after_write:
            reads.append(h)
        gates_in = None if gate_inputs is None else gate_inputs[step]
        h_next, c_next = lstm_update(step_gates(volumes[step], h, ConvWeights(*weights), gates_in), c)
        h, c = (h_next, c_next) if masses is None else local_update(h, c, h_next, c_next, masses[step])
        if after_write:
            reads.append(h)
    return torch.stack(reads), h, c


def _fast(after_write, masses, volumes, h, c, *weights, gate_inputs=None):
    return recurrence(volumes, h, c, KEEP, ConvWeights(*weights), masses, after_write, gate_inputs)


def _with_masses(form, after_write=False):
    masses = _masses(form)
    inputs = _inputs() if masses is None else (masses.requires_grad_(), *_inputs())
    if masses is None:
        return inputs, functools.partial(_plain, after_write, None), functools.partial(_fast, after_write, None)
    return inputs, functools.partial(_plain, after_write), functools.partial(_fast, after_write)


def test_recurrence_matches_the_plain_loop_forward_and_backward(depthwise_form, update_form, after_write):
    inputs, plain, fast = _with_masses(update_form, after_write)
    for a, b in zip(plain(*inputs), fast(*inputs), strict=True):
        assert torch.allclose(a, b, atol=1e-12)
    cotangents = [torch.randn_like(t) for t in plain(*inputs)]
    grads_plain = torch.autograd.grad(plain(*inputs), inputs, cotangents)
    grads_fast = torch.autograd.grad(fast(*inputs), inputs, cotangents)
    for a, b in zip(grads_plain, grads_fast, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_recurrence_gradcheck(depthwise_form, update_form, after_write):
    inputs, _, fast = _with_masses(update_form, after_write)
    assert torch.autograd.gradcheck(fast, inputs, fast_mode=True)


def test_gate_inputs_match_the_plain_loop_forward_and_backward(depthwise_form, update_form):
    """Each env's gate inputs added to every cell's gates, in the kernel and the PyTorch form alike, with their
    gradient the gates' summed over the cells."""
    inputs, plain_fn, fast_fn = _with_masses(update_form)
    gate_inputs = torch.randn(STEPS, BATCH, 4 * CHANNELS, dtype=torch.float64, requires_grad=True)
    plain, fast = (functools.partial(f, gate_inputs=gate_inputs) for f in (plain_fn, fast_fn))
    params = (*inputs, gate_inputs)
    for a, b in zip(plain(*inputs), fast(*inputs), strict=True):
        assert torch.allclose(a, b, atol=1e-12)
    assert not torch.allclose(fast(*inputs)[1], fast_fn(*inputs)[1])
    cotangents = [torch.randn_like(t) for t in plain(*inputs)]
    grads_plain = torch.autograd.grad(plain(*inputs), params, cotangents)
    grads_fast = torch.autograd.grad(fast(*inputs), params, cotangents)
    for a, b in zip(grads_plain, grads_fast, strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    assert torch.autograd.gradcheck(lambda *a: fast_fn(*a[:-1], gate_inputs=a[-1]), params, fast_mode=True)


@pytest.mark.parametrize("local", [False, True])
@pytest.mark.parametrize("cube", [0.0, 0.4])
@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("gates", [False, True], ids=["", "input_gates"])
def test_module_scan_equals_one_reference_step_per_chunk(depthwise_form, local, cube, per_token, gates):
    torch.manual_seed(1)
    config = TensorMemoryConfig(
        grid=(3, 4, 5),
        channels=3,
        chunk_size=2,
        write_radius=1,
        local_update=local,
        input_gates=gates,
        read_norm=local,
        read_cube=cube,
        per_token=per_token,
    )
    memory = TensorMemory(config, 6).double()
    tokens = torch.randn(2, 8, 6, dtype=torch.float64, requires_grad=True)
    starts = torch.tensor([[0, 0, 1, 0], [0, 1, 0, 0]], dtype=torch.float64)
    state = memory.init_state(2)
    state = state.apply(lambda t: torch.randn_like(t))
    out, new_state = memory(tokens, state, starts)
    grouped = tokens.view(2, 4, 2, 6)
    h, c = state["h"], state["c"]
    reads = []
    for step in range(4):
        keep = (1 - starts[:, step]).view(-1, 1, 1, 1, 1)
        h, c = h * keep, c * keep
        chunk = grouped[:, step]
        inputs = chunk if per_token else chunk.flatten(1)[:, None]  # each token, or the whole chunk
        readers = chunk if per_token else chunk[:, :1]
        x_write = memory.write_proj(inputs)
        values, write_loc, sigma, strength = memory.write_terms(x_write)
        read, h, c = memory_step(
            h,
            c,
            (memory.coordinates(readers)[:, :, None] + memory.read_offsets).flatten(1, 2),
            values,
            write_loc,
            sigma,
            memory.update.weights(),
            radius=1,
            strength=strength,
            gate_inputs=memory.gate_proj(x_write).sum(1) if gates else None,
            backend="torch",
        )
        reads.append(read.reshape(2, 1, len(readers[0]), -1))  # the read cube's 8 reads side by side per reader
    expected = memory.out_proj(memory.read_norm(torch.cat(reads, 1))).expand(-1, -1, 2, -1).flatten(1, 2)
    assert torch.allclose(out, expected, atol=1e-10)
    assert torch.allclose(new_state["h"], h, atol=1e-10) and torch.allclose(new_state["c"], c, atol=1e-10)
    params = [tokens, *memory.parameters()]
    cotangents = [torch.randn_like(t) for t in (out, h, c)]

    def gradients(*outputs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return torch.autograd.grad(outputs, params, cotangents, retain_graph=True, allow_unused=True)

    for a, b in zip(gradients(out, new_state["h"], new_state["c"]), gradients(expected, h, c), strict=True):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-9))


def test_write_gates_equal_the_reference_input_gates(depthwise_form):
    torch.manual_seed(2)
    update = FactorizedGateConv(CHANNELS, forget_bias=1.0).double()
    with torch.no_grad():
        for param in update.parameters():
            param.add_(torch.randn_like(param))
    volumes = torch.randn(5, CHANNELS, *GRID, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(5, 4 * CHANNELS, *GRID, dtype=torch.float64)
    params = [volumes, *update.parameters()]
    weights = update.weights()
    fast = write_gates(volumes, weights, dense_operator(weights.depthwise(slice(0, CHANNELS)), GRID))
    reference = input_gates(volumes, weights)
    assert torch.allclose(fast, reference, atol=1e-12)
    for a, b in zip(
        torch.autograd.grad(fast, params, cotangent), torch.autograd.grad(reference, params, cotangent), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-10)


def test_float32_kernel_matches_the_float64_pytorch_form(monkeypatch, after_write):
    if not cpu_kernel.available(torch.zeros(1)):
        pytest.skip("no C compiler: the recurrence runs its PyTorch form")
    inputs, _, fast = _with_masses("local", after_write)
    single = [t.detach().float().requires_grad_() for t in inputs]
    out_single = fast(*single)
    cotangents = [torch.randn_like(t) for t in out_single]
    grads_single = torch.autograd.grad(out_single, single, cotangents)
    monkeypatch.setenv("TMEM_CPU_KERNEL", "0")
    out_double = fast(*inputs)
    grads_double = torch.autograd.grad(out_double, inputs, [t.double() for t in cotangents])
    for a, b in zip((*out_single, *grads_single), (*out_double, *grads_double), strict=True):
        assert torch.allclose(a.double(), b, atol=1e-4, rtol=1e-4)


def test_without_a_compiler_the_recurrence_warns_once_and_runs_its_pytorch_form(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("TMEM_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_kernel, "_FAILURES", [])
    cpu_kernel._library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not be built.*Install a C compiler") as caught:
            assert not cpu_kernel.available(torch.zeros(1))
            inputs, plain, fast = _with_masses("global")
            for a, b in zip(plain(*inputs), fast(*inputs), strict=True):
                assert torch.allclose(a, b, atol=1e-12)
        assert len(caught) == 1
    finally:
        cpu_kernel._library.cache_clear()
