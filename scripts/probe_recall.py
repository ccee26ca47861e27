"""Supervised recall probe: how well a memory carries a cue across a delay, without RL in the way.

Each sequence shows one of ``n_cues`` one-hot cues at its first step, then ``delay`` blank steps, then a
query flag; the extractor's features at the query step go through a linear readout trained with
cross-entropy to name the cue (chance ``1 / n_cues``). The extractor runs its training form
(``sequence``) on whole sequences, so this measures what backpropagation through the memory can learn,
separate from PPO's credit assignment. Prints the accuracy on fresh sequences during training.

    python scripts/probe_recall.py --model tensor_memory --delay 32 --seeds 0 1 2
    python scripts/probe_recall.py --model tensor_memory --memory local_update=true forget_bias_init=3
    python scripts/probe_recall.py --model lstm --delay 32 --kwargs forget_bias=3
"""

from __future__ import annotations

import argparse
import ast
import time

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from tmem_agents.policies import EXTRACTORS


def sequences(
    n_cues: int, delay: int, batch: int, generator: torch.Generator, normalize: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Observations ``(delay + 2, B, n_cues + 1)`` and the cues ``(B,)``. ``normalize`` standardizes each
    observation dim with its mean and standard deviation over the episode and clips at 10, as SB3's
    ``VecNormalize`` ends up doing in training (the rare cue and query entries become large)."""
    cues = torch.randint(n_cues, (batch,), generator=generator)
    obs = torch.zeros(delay + 2, batch, n_cues + 1)
    obs[0, torch.arange(batch), cues] = 1.0
    obs[-1, :, -1] = 1.0
    if normalize:
        rate = torch.full((n_cues + 1,), 1.0 / (delay + 2))
        rate[:n_cues] /= n_cues
        obs = ((obs - rate) / (rate * (1 - rate)).sqrt()).clamp(-10.0, 10.0)
    return obs, cues


def options(pairs: list[str]) -> dict:
    """``key=value`` pairs (Python literals, or ``true``/``false``) -> a dict."""
    options = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not value:
            raise SystemExit(f"options are key=value pairs, got {pair!r}")
        try:
            options[key] = ast.literal_eval(value.replace("true", "True").replace("false", "False"))
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def probe(args: argparse.Namespace, seed: int) -> list[tuple[int, float]]:
    """Train one extractor and readout from ``seed``; returns ``(iteration, accuracy)`` pairs."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    space = gym.spaces.Box(0.0, 1.0, shape=(args.n_cues + 1,), dtype=np.float32)
    kwargs = {"features_dim": 64, **options(args.kwargs)}
    if args.memory:
        kwargs["memory"] = options(args.memory)
    extractor = EXTRACTORS[args.model](space, **kwargs)
    readout = nn.Linear(64, args.n_cues)
    optimizer = torch.optim.Adam([*extractor.parameters(), *readout.parameters()], lr=args.lr)
    steps = args.delay + 2
    curve = []
    for iteration in range(1, args.iterations + 1):
        obs, cues = sequences(args.n_cues, args.delay, args.batch, generator, args.normalize)
        starts = torch.zeros(steps, args.batch)
        starts[0] = 1.0
        features, _ = extractor.sequence(obs, extractor.initial_state(args.batch), starts)
        logits = readout(features[-1])
        loss = nn.functional.cross_entropy(logits, cues)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_([*extractor.parameters(), *readout.parameters()], 0.5)
        optimizer.step()
        if iteration % args.every == 0:
            with torch.no_grad():
                obs, cues = sequences(args.n_cues, args.delay, 512, generator, args.normalize)
                starts = torch.zeros(steps, 512)
                starts[0] = 1.0
                features, _ = extractor.sequence(obs, extractor.initial_state(512), starts)
                accuracy = (readout(features[-1]).argmax(-1) == cues).float().mean().item()
            curve.append((iteration, accuracy))
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tensor_memory", choices=sorted(EXTRACTORS))
    parser.add_argument("--kwargs", nargs="*", default=[], help="extractor options as key=value")
    parser.add_argument("--memory", nargs="*", default=[], help="Tensor Memory options as key=value")
    parser.add_argument("--normalize", action="store_true", help="standardized observations, as VecNormalize")
    parser.add_argument("--n-cues", type=int, default=4)
    parser.add_argument("--delay", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    options_text = " ".join(args.kwargs + args.memory)
    print(f"{args.model} {options_text}: {args.n_cues} cues, delay {args.delay} (chance {1 / args.n_cues:.2f})")
    for seed in args.seeds:
        start = time.perf_counter()
        curve = probe(args, seed)
        points = "  ".join(f"{i}: {acc:.2f}" for i, acc in curve)
        print(f"seed {seed}  {points}  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
