"""Recurrent state bytes per env against the horizon: Tensor Memory next to a sliding-window attention memory.

Both run for 100, 1,000 and 10,000 steps on random tokens; the Tensor Memory's state is its ``(h, c)``
grids, the attention memory's a KV cache of the last ``window`` steps' keys and values (one layer,
``d``-dim tokens, window = horizon, i.e. it remembers as far back as the Tensor Memory can). Prints a
table and writes ``docs/results/state_size.png``.

    python scripts/bench_state_size.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from tmem_agents.memory import TensorMemory, TensorMemoryConfig  # noqa: E402

HORIZONS = (100, 1_000, 10_000)
DIM = 64


class SlidingWindowAttentionMemory(nn.Module):
    """One attention layer over a KV cache of the last ``window`` steps: the state grows with the window."""

    def __init__(self, dim: int, window: int) -> None:
        super().__init__()
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, token: torch.Tensor, cache: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        q, k, v = self.qkv(token).chunk(3, dim=-1)
        keys = torch.cat([cache["k"], k[:, None]], dim=1)[:, -self.window :]
        values = torch.cat([cache["v"], v[:, None]], dim=1)[:, -self.window :]
        weights = torch.softmax((keys @ q[:, :, None]).squeeze(-1) / DIM**0.5, dim=-1)
        return (weights[:, :, None] * values).sum(1), {"k": keys, "v": values}


def measure(horizon: int, batch: int = 1) -> tuple[int, int]:
    memory = TensorMemory(TensorMemoryConfig(chunk_size=1), DIM)
    state = memory.init_state(batch)
    attention = SlidingWindowAttentionMemory(DIM, window=horizon)
    cache = {"k": torch.zeros(batch, 0, DIM), "v": torch.zeros(batch, 0, DIM)}
    with torch.no_grad():
        for _ in range(horizon):
            token = torch.randn(batch, 1, DIM)
            _, state = memory(token, state)
            _, cache = attention(token[:, 0], cache)
    kv_bytes = sum(t.numel() * t.element_size() for t in cache.values()) // batch
    return state.bytes() // batch, kv_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/results/state_size.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [(h, *measure(h)) for h in HORIZONS]
    print("| horizon (steps) | Tensor Memory, 8x8x8 x 16 ch (bytes/env) | attention KV cache, d=64 (bytes/env) |")
    print("|---|---|---|")
    for horizon, tm, kv in rows:
        print(f"| {horizon:,} | {tm:,} | {kv:,} |")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.loglog([r[0] for r in rows], [r[1] for r in rows], "o-", label="Tensor Memory (h, c)")
    ax.loglog([r[0] for r in rows], [r[2] for r in rows], "s--", label="attention KV cache, window = horizon")
    ax.set_xlabel("horizon (steps)")
    ax.set_ylabel("state bytes per env")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
