"""Time one Tensor Memory step on the CPU and check long-run stability of the state.

    python scripts/bench_memory.py                 # timing table (markdown) + state bytes per env
    python scripts/bench_memory.py --sides 4 8 --batches 1 64
    python scripts/bench_memory.py --stability 100000

Timing: one memory step (16 tokens in one chunk, C=16) without gradients, and forward+backward
through a 32-step sequence, for B in {1, 64, 1024} and grids 4^3, 8^3 and 16^3, one torch thread.
Training is timed twice: with the recurrence's C kernel (``tmem_agents/ops/recurrence.c``) and with its
PyTorch form (``TMEM_CPU_KERNEL=0``, the path of machines without a C compiler).
Stability: random tokens for many steps under no_grad; prints the largest |h| and |c| seen.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from tmem_agents.memory import TensorMemory, TensorMemoryConfig

TOKENS, DIM, CHANNELS, SEQ = 16, 64, 16, 32
BACKWARD_BUDGET_BYTES = 6 * 2**30


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def bench(batch: int, side: int, repeats: int) -> dict:
    torch.manual_seed(0)
    memory = TensorMemory(TensorMemoryConfig(grid=(side,) * 3, channels=CHANNELS, chunk_size=TOKENS), DIM)
    tokens = torch.randn(batch, TOKENS, DIM)
    state = memory.init_state(batch)
    with torch.no_grad():
        step = _median_time(lambda: memory(tokens, state), repeats)
    # activations kept for backward: about 12 grid-sized float32 tensors of 2C..4C channels per step
    need = SEQ * 12 * batch * 4 * CHANNELS * side**3 * 4
    backward = {}
    if need <= BACKWARD_BUDGET_BYTES:
        sequence = torch.randn(batch, SEQ * TOKENS, DIM)

        def forward_backward() -> None:
            out, _ = memory(sequence, state)
            out.sum().backward()

        before = os.environ.get("TMEM_CPU_KERNEL")
        for form, flag in (("kernel", "1"), ("torch", "0")):
            os.environ["TMEM_CPU_KERNEL"] = flag
            backward[form] = _median_time(forward_backward, max(1, repeats // 4)) / SEQ
        if before is None:
            del os.environ["TMEM_CPU_KERNEL"]
        else:
            os.environ["TMEM_CPU_KERNEL"] = before
    return {
        "batch": batch,
        "grid": f"{side}^3",
        "step_ms": step * 1e3,
        "fwd_bwd_ms_per_step": {form: seconds * 1e3 for form, seconds in backward.items()},
        "state_bytes_per_env": state.bytes() // batch,
    }


def stability(steps: int, batch: int = 8) -> None:
    torch.manual_seed(0)
    memory = TensorMemory(TensorMemoryConfig(chunk_size=TOKENS), DIM)
    state = memory.init_state(batch)
    peak_h = peak_c = 0.0
    start = time.perf_counter()
    with torch.no_grad():
        for step in range(1, steps + 1):
            _, state = memory(torch.randn(batch, TOKENS, DIM) * 3.0, state)
            peak_h = max(peak_h, state["h"].abs().max().item())
            peak_c = max(peak_c, state["c"].abs().max().item())
            if step % (steps // 10 or 1) == 0:
                finite = bool(torch.isfinite(state["h"]).all() and torch.isfinite(state["c"]).all())
                print(
                    f"step {step:>7}: max|h| {peak_h:.4f}  max|c| {peak_c:.3f}  finite {finite}  "
                    f"state bytes/env {state.bytes() // batch}  ({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--sides", nargs="+", type=int, default=[4, 8, 16], help="grid sides (grid = side^3)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64, 1024])
    parser.add_argument("--stability", type=int, default=0, help="run this many no-grad steps instead of timing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.stability:
        stability(args.stability)
        return
    print(f"N={TOKENS} tokens (one chunk), C={CHANNELS}, d={DIM}, one thread, {torch.__version__}\n")
    print(
        "| B | grid | step, no grad (ms) | fwd+bwd per step, 32-step seq (ms): C kernel | PyTorch form "
        "| state bytes / env |"
    )
    print("|---|---|---|---|---|---|")
    for side in args.sides:
        for batch in args.batches:
            row = bench(batch, side, args.repeats if batch < 1024 else 2)
            times = row["fwd_bwd_ms_per_step"]
            cells = [f"{times[form]:.2f}" for form in ("kernel", "torch")] if times else ["skipped (> 6 GiB)"] * 2
            print(
                f"| {batch} | {row['grid']} | {row['step_ms']:.2f} | {' | '.join(cells)} "
                f"| {row['state_bytes_per_env']:,} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
