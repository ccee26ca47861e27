"""Benchmark the Triton kernels against the PyTorch reference; write docs/bench_kernels.json and docs/kernels.md.

Shapes: B in {64, 1024, 4096}, N = 16 tokens (and 16 read queries), C in {16, 32}, grids 8^3 and 16^3,
windowed write of radius 2, ``border`` read. Ops: write forward, write forward+backward, read forward,
read forward+backward, and the no-grad memory step. For each: time, the bytes the op must move (its
inputs and outputs, each once), achieved GB/s and the fraction of the device's peak bandwidth, and the
roofline time ``bytes / peak`` on an H100 (3.35 TB/s).

On a CUDA device both paths are timed. Without one, the reference is timed on the CPU (one thread) for
shapes of at most ``--cpu-max-elements`` state values (``B C D H W``), to keep the run short, and the
Triton path is proved on a tiny case through Triton's interpreter against the reference (the
interpreter's time says nothing about the GPU).

    python scripts/bench_kernels.py [--cpu-max-elements 16777216] [--out-json docs/bench_kernels.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tmem_agents.ops import reference  # noqa: E402
from tmem_agents.ops.reference import ConvWeights  # noqa: E402

H100_GBS = 3350.0
PEAK_GBS = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0}
BATCHES = (64, 1024, 4096)
CHANNELS = (16, 32)
GRIDS = (8, 16)
TOKENS = 16
RADIUS = 2
PADDING = "border"
OPS = ("write_fwd", "write_fwd_bwd", "read_fwd", "read_fwd_bwd", "step")
TARGETS = {
    "step": "fused step >= 5x the reference at B=1024, and >= 50% of peak bandwidth at B=4096",
    "write_fwd_bwd": "write forward+backward >= 3x the reference",
    "read_fwd_bwd": "read forward+backward >= 3x the reference",
}


def op_bytes(op: str, batch: int, channels: int, size: int, element: int = 4) -> int:
    """Bytes ``op`` must move at least: each input read once and each output written once.

    The read's forward reads each query's 8 corners (at most the whole grid); its backward writes the
    whole memory gradient. The step reads ``h`` and ``c`` and writes ``h_next`` and ``c_next``.
    """
    cells = size**3
    volume = batch * channels * cells * element
    tokens = batch * TOKENS * (channels + 4) * element  # values, locations, sigma
    queries = batch * TOKENS * 3 * element
    read_out = batch * TOKENS * channels * element
    corners = batch * min(8 * TOKENS * channels, channels * cells) * element
    if op == "write_fwd":
        return tokens + volume
    if op == "write_fwd_bwd":
        return (tokens + volume) + (volume + tokens + tokens)
    if op == "read_fwd":
        return queries + corners + read_out
    if op == "read_fwd_bwd":
        return (queries + corners + read_out) + (read_out + queries + corners + volume + queries)
    if op == "step":
        return 4 * volume + tokens + queries + read_out
    raise ValueError(op)


def make_case(batch: int, channels: int, size: int, device: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """Random inputs of one benchmark shape."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0, low: float = 0.0) -> torch.Tensor:
        return (low + scale * torch.randn(*shape, generator=gen)).to(device=device, dtype=dtype)

    def uniform(*shape: int, low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(*shape, generator=gen)).to(device=device, dtype=dtype)

    c2 = 2 * channels
    weights = ConvWeights(
        rnd(c2, 3, scale=0.5), rnd(c2, scale=0.1), rnd(c2, 3, scale=0.5), rnd(c2, scale=0.1),
        rnd(c2, 3, scale=0.5), rnd(c2, scale=0.1), rnd(4 * channels, c2, scale=c2**-0.5), rnd(4 * channels, scale=0.1),
    )  # fmt: skip
    return {
        "h": rnd(batch, channels, size, size, size, scale=0.5),
        "c": rnd(batch, channels, size, size, size, scale=0.5),
        "values": rnd(batch, TOKENS, channels),
        "locations": uniform(batch, TOKENS, 3, low=-1.0, high=1.0),
        "queries": uniform(batch, TOKENS, 3, low=-1.0, high=1.0),
        "sigma": uniform(batch, TOKENS, low=0.1, high=0.3),
        "weights": weights,
    }


def op_callable(op: str, case: dict, backend: str) -> Callable[[], object]:
    """A closure running ``op`` once on ``case`` with ``backend`` (``"torch"`` or ``"triton"``)."""
    if backend == "triton":
        from tmem_agents.ops import triton_read, triton_step, triton_write

        write, read, step = triton_write.splat_write, triton_read.trilinear_read, triton_step.memory_step
    else:
        write, read, step = reference.splat_write, reference.trilinear_read, reference.memory_step
    grid = tuple(case["h"].shape[2:])
    leaves = {k: case[k].detach().requires_grad_() for k in ("values", "locations", "sigma", "h", "queries")}

    def write_fwd() -> object:
        with torch.no_grad():
            return write(case["values"], case["locations"], case["sigma"], grid, RADIUS)

    def write_fwd_bwd() -> object:
        out = write(leaves["values"], leaves["locations"], leaves["sigma"], grid, RADIUS)
        return torch.autograd.grad(out, (leaves["values"], leaves["locations"], leaves["sigma"]), case["h"])

    def read_fwd() -> object:
        with torch.no_grad():
            return read(case["h"], case["queries"], PADDING)

    def read_fwd_bwd() -> object:
        out = read(leaves["h"], leaves["queries"], PADDING)
        return torch.autograd.grad(out, (leaves["h"], leaves["queries"]), case["values"])

    def step_fn() -> object:
        with torch.no_grad():
            return step(
                case["h"], case["c"], case["queries"], case["values"], case["locations"], case["sigma"],
                case["weights"], RADIUS, PADDING,
            )  # fmt: skip

    return {
        "write_fwd": write_fwd,
        "write_fwd_bwd": write_fwd_bwd,
        "read_fwd": read_fwd,
        "read_fwd_bwd": read_fwd_bwd,
        "step": step_fn,
    }[op]


def time_ms(fn: Callable[[], object], device: str, budget_s: float = 1.0) -> float:
    """Median time of ``fn`` in milliseconds (CUDA events on a GPU, wall clock on the CPU)."""
    fn()
    if device == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=int(budget_s * 400), return_mode="median"))
    times = []
    start = time.perf_counter()
    while len(times) < 3 and (not times or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def peak_gbs(device: str) -> float | None:
    """Peak memory bandwidth of the CUDA device in GB/s when known, else ``None``."""
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((gbs for key, gbs in PEAK_GBS.items() if key in name), None)


def max_error(a: object, b: object) -> float:
    """Largest absolute difference over matching tensors (or tuples of them)."""
    if isinstance(a, torch.Tensor):
        return (a.double() - b.double()).abs().max().item()
    return max(max_error(x, y) for x, y in zip(a, b, strict=True))


def interpreter_proof() -> list[dict]:
    """Each op through the Triton kernels on a tiny case (B=2, C=16, 8^3) against the reference."""
    case = make_case(2, 16, 8, "cpu", seed=1)
    rows = []
    for op in OPS:
        want = op_callable(op, case, "torch")()
        start = time.perf_counter()
        got = op_callable(op, case, "triton")()
        rows.append(
            {
                "op": op,
                "shape": "B=2, N=16, C=16, 8^3",
                "interpreter_s": round(time.perf_counter() - start, 3),
                "max_abs_error": max_error(got, want),
            }
        )
    return rows


def bench(device: str, cpu_max_elements: int) -> list[dict]:
    """Time every op and shape; on the CPU only the reference, up to ``cpu_max_elements`` state values."""
    peak = peak_gbs(device)
    rows = []
    for size in GRIDS:
        for channels in CHANNELS:
            for batch in BATCHES:
                timed = device == "cuda" or batch * channels * size**3 <= cpu_max_elements
                case = make_case(batch, channels, size, device) if timed else None
                for op in OPS:
                    nbytes = op_bytes(op, batch, channels, size)
                    row = {
                        "op": op,
                        "batch": batch,
                        "channels": channels,
                        "grid": size,
                        "bytes": nbytes,
                        "h100_roofline_ms": nbytes / (H100_GBS * 1e6),
                    }
                    backends = ("torch", "triton") if device == "cuda" else ("torch",)
                    for backend in backends:
                        if not timed:
                            row[f"{backend}_ms"] = None
                            continue
                        ms = time_ms(op_callable(op, case, backend), device)
                        row[f"{backend}_ms"] = ms
                        row[f"{backend}_gbs"] = nbytes / (ms * 1e6)
                        if peak:
                            row[f"{backend}_peak_fraction"] = nbytes / (ms * 1e6) / peak
                    if device == "cuda":
                        row["speedup"] = row["torch_ms"] / row["triton_ms"]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                del case
                if device == "cuda":
                    torch.cuda.empty_cache()
    return rows


def fmt(value: float | None, digits: int = 2) -> str:
    return "skipped" if value is None else f"{value:.{digits}f}"


def markdown(result: dict) -> str:
    """docs/kernels.md: the kernels' design, the targets, and the benchmark tables."""
    gpu = result["device"] == "cuda"
    lines = [
        "# Triton kernels",
        "",
        "`tmem_agents/ops/triton_write.py`, `triton_read.py` and `triton_step.py` hold the Triton kernels of the",
        'Tensor Memory; `tmem_agents/ops/dispatch.py` chooses them (`backend="triton"`, or `"auto"` on CUDA',
        "tensors). They compute in float32 (float64 for float64 inputs) and return the input dtype; bfloat16",
        "works. All are tested against the PyTorch reference, forward and every gradient, through Triton's",
        "interpreter on the CPU (`tests/test_triton_ops.py`).",
        "",
        "## Design",
        "",
        "- **Write** (`splat_write`, dense and windowed). Forward: one program per (env, tile of cells) builds",
        "  the weight tile `K[n, s] = exp(-|pos(s) - p_n|^2 / (2 sigma_n^2 + 1e-6))` (the product `wx wy wz`",
        "  of the per-axis Gaussians, zeroed outside the `(2R+1)^3` window around the nearest cell when",
        "  windowed) and accumulates `V[:, s] += values^T K` with `tl.dot` (IEEE fp32). Each output value is",
        "  written once by one program: no atomics, no zero-fill, deterministic. Backward: one program per",
        "  (env, split of the cells, block of tokens) reads `dL/dV` once, tile by tile, and reduces",
        "  `dL/dvalues = K (dL/dV)^T` and, from `dL/dK = values dL/dV`, the per-axis location gradients",
        "  `sum dL/dK K 2 (pos - p) / den` and the sigma gradient `sum dL/dK K |pos - p|^2 4 sigma / den^2`.",
        "  Splits write partial sums that PyTorch adds (no atomics, deterministic). The location clamp passes",
        "  gradients on `[-1, 1]` only, as `torch.clamp`. The gather costs `O(N S C)` whatever the radius:",
        "  at N=16 that is 16 FMAs per output value, under the memory time on an H100.",
        "- **Read** (`trilinear_read`, `border` and `zeros`). Forward: one program per (env, block of",
        "  queries) gathers each query's 8 corners for all channels (a masked `(queries, channels)` tile per",
        "  corner) with `grid_sample`'s weights. Backward: the memory gradient is the write's transpose,",
        "  `dL/dM[:, s] = sum_n dL/dr_n k_n(s)` with the trilinear weight `k_n(s)` (non-zero on 8 corners),",
        "  computed as a gather over cells with `tl.dot`: the whole gradient, zeros included, is written once,",
        "  without a zero-fill or atomics (the reference `grid_sample` backward uses atomics). The query",
        "  gradient gathers the corners again and differentiates the weights per axis; with `border` it is",
        "  zero where the source index is clipped or on the border, as in `grid_sample`.",
        "- **Fused step** (`memory_step`, no grad): one launch per step. One program per (env, tile of",
        "  cells) computes `h_next` and `c_next` for all channels; the first tile's programs also read the old",
        "  `h`. The written volume is never stored: the write and the depthwise convs are linear and",
        "  separable, so the conv of the volume is `sum_n v_n (dwD wz_n)(dwH wy_n)(dwW wx_n)`, 9 exponentials",
        "  per token and cell shared by all channels. On `h`'s channels the three depthwise convs are one",
        "  3x3x3 stencil with taps `td th tw` (27 masked loads, mostly from cache); the inner convs' biases",
        "  reach the output as boundary terms (zero padding included). The pointwise mix is 8 `tl.dot` of",
        "  `(C, C)` blocks, then the gates `(i, f, o, g)` update `(h, c)` one gate at a time. Traffic: `h` and",
        "  `c` read once, `h_next` and `c_next` written once.",
        "",
        "Every wrapper makes its inputs contiguous and masks every load and store (tested with NaN sentinels",
        "around the inputs and outputs). On a GPU the `(channels, cells)` tiles hold 1024 values (4 warps; 8",
        "for the fused step). Compiled for sm_90 here (no GPU needed), `ptxas` reports at most 32 bytes of",
        "register spills per thread (windowed write backward, fused step at C=32), none for the others.",
        "",
        "## Targets",
        "",
    ]
    lines += [f"- {text}" for text in TARGETS.values()]
    lines += [""]
    if gpu:
        lines += [f"Measured on {result['device_name']} (peak {fmt(result['peak_gbs'], 0)} GB/s).", ""]
    else:
        lines += [
            "**No GPU was available where these numbers were taken: the Triton kernels were not run natively,",
            "and the targets above are not yet measured.** The tables give the PyTorch reference's CPU time",
            f"(one thread, {result['cpu']}; shapes over {result['cpu_max_elements']:,} state values `B C D H W`",
            "are skipped to bound the run) and the H100 roofline estimate: the time to move each op's minimum",
            "bytes at 3.35 TB/s, the floor the kernels aim at (at B=4096 the fused step's target, 50% of peak,",
            "is twice that time). Run `python scripts/bench_kernels.py` on a CUDA machine to fill in the Triton",
            "columns.",
            "",
            "### Triton through the interpreter (correctness only)",
            "",
            "| op | shape | interpreter s | max abs error vs reference |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['op']} | {r['shape']} | {r['interpreter_s']:.2f} | {r['max_abs_error']:.2e} |"
            for r in result["interpreter_proof"]
        ]
        lines += [""]
    lines += [
        "## Results",
        "",
        f"N={TOKENS} tokens and {TOKENS} read queries per env, windowed write of radius {RADIUS},",
        f"`{PADDING}` read, float32.",
        "",
    ]
    header = "| op | B | C | grid | MB moved | H100 roofline us | reference ms | reference GB/s |"
    sep = "|---|---|---|---|---|---|---|---|"
    if gpu:
        header += " triton ms | triton GB/s | triton % peak | speedup |"
        sep += "---|---|---|---|"
    lines += [header, sep]
    for r in result["rows"]:
        cells = [
            r["op"], str(r["batch"]), str(r["channels"]), f"{r['grid']}^3", f"{r['bytes'] / 1e6:.1f}",
            f"{1e3 * r['h100_roofline_ms']:.1f}", fmt(r.get("torch_ms")), fmt(r.get("torch_gbs")),
        ]  # fmt: skip
        if gpu:
            fraction = r.get("triton_peak_fraction")
            cells += [
                fmt(r.get("triton_ms"), 3), fmt(r.get("triton_gbs"), 0),
                "n/a" if fraction is None else f"{100 * fraction:.0f}%", fmt(r.get("speedup"), 1),
            ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Bytes are the op's inputs and outputs, each moved once, in float32: the write moves its volume",
        "(and, backward, the volume's gradient); the read moves 8 corners per query forward and the whole",
        "memory gradient backward; the step moves `h`, `c`, `h_next`, `c_next`. Written by",
        "`scripts/bench_kernels.py`, with the raw numbers in `docs/bench_kernels.json`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cpu-max-elements", type=int, default=1024 * 32 * 8**3, help="largest B*C*D*H*W timed on the CPU"
    )
    parser.add_argument("--out-json", type=Path, default=Path("docs/bench_kernels.json"))
    parser.add_argument("--out-md", type=Path, default=Path("docs/kernels.md"))
    parser.add_argument("--markdown-only", action="store_true", help="rewrite --out-md from --out-json")
    args = parser.parse_args()
    if args.markdown_only:
        args.out_md.write_text(markdown(json.loads(args.out_json.read_text())))
        return
    torch.set_num_threads(1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result: dict = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "peak_gbs": peak_gbs(device),
        "cpu_max_elements": args.cpu_max_elements,
        "tokens": TOKENS,
        "radius": RADIUS,
        "padding_mode": PADDING,
        "dtype": "float32",
        "torch": torch.__version__,
        "targets": TARGETS,
    }
    if device == "cpu":
        result["note"] = (
            "no GPU: reference timed on the CPU (one thread), shapes over cpu_max_elements skipped; "
            "Triton proved on a tiny case through the interpreter"
        )
        result["interpreter_proof"] = interpreter_proof()
        for row in result["interpreter_proof"]:
            print(json.dumps(row), flush=True)
    result["rows"] = bench(device, args.cpu_max_elements)
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(result, indent=1) + "\n")
    args.out_md.write_text(markdown(result))
    print(f"wrote {args.out_json} and {args.out_md}")


if __name__ == "__main__":
    main()
