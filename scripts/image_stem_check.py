"""Can the Tensor Memory's image stems see where a small object lies? A supervised check, before any RL.

The pixel memory reacher's target is a red dot of about 3 pixels in a 64x64 frame. Each stem of the
extractor's image tokenizer (``image_stem``), with each way of pooling its tokens (``pool``), is trained
with a linear head to regress the target's (x, y) from the episode's first frame, on ``--frames`` frames of
fresh episodes (the last fifth held out, seeds 0 onwards); the held-out R^2 is printed as training goes. A
stem that cannot do this when told the answer will not learn it from PPO's reward.

    python scripts/image_stem_check.py --frames 3000 --iterations 1200
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from tmem_agents.envs.pixel_reacher import ORBIT_RADIUS, PixelMemoryReacherEnv
from tmem_agents.policies.tensor_memory_extractor import POOLS
from tmem_agents.policies.tokenizers import IMAGE_STEMS, make_tokenizer

TOKEN_DIM = 32


def first_frames(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First frames ``(count, 3, 64, 64)`` in [0, 1] of episodes seeded 0 onwards, and the targets ``(count, 2)``
    scaled by the largest orbit radius."""
    env = PixelMemoryReacherEnv()
    frames, targets = [], []
    for seed in range(count):
        obs, _ = env.reset(seed=seed)
        frames.append(obs["pixels"])
        targets.append(env.target_position())
    env.close()
    pixels = torch.as_tensor(np.array(frames)).permute(0, 3, 1, 2).float() / 255
    return pixels, torch.as_tensor(np.array(targets)).float() / ORBIT_RADIUS[1]


def stem_r2(
    stem: str,
    pool: str,
    frames: torch.Tensor,
    targets: torch.Tensor,
    iterations: int,
    report: int,
    batch: int = 64,
    lr: float = 3e-4,
    seed: int = 0,
) -> list[tuple[int, float]]:
    """Train ``stem`` + ``pool`` + a linear head on the first 80% of ``frames`` ``(n, 3, H, W)`` -> ``targets``
    ``(n, 2)``; the held-out R^2 (mean over x and y) every ``report`` iterations, as ``(iteration, R^2)``."""
    torch.manual_seed(seed)
    space = spaces.Box(0, 255, tuple(frames.shape[1:]), np.uint8)
    tokenizer = make_tokenizer(space, TOKEN_DIM, image_stem=stem)
    head = nn.Linear(TOKEN_DIM * (tokenizer.num_tokens if pool == "flatten" else 1), targets.shape[1])

    def predict(x: torch.Tensor) -> torch.Tensor:
        tokens = tokenizer(x)
        return head(tokens.flatten(1) if pool == "flatten" else tokens.mean(dim=1))

    optimizer = torch.optim.Adam([*tokenizer.parameters(), *head.parameters()], lr=lr)
    split = int(0.8 * len(frames))
    held_x, held_y = frames[split:], targets[split:]
    generator = torch.Generator().manual_seed(seed)
    scores = []
    for iteration in range(1, iterations + 1):
        index = torch.randint(split, (batch,), generator=generator)
        loss = (predict(frames[index]) - targets[index]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if iteration % report == 0 or iteration == iterations:
            with torch.no_grad():
                residual = (predict(held_x) - held_y).pow(2).sum(0)
            r2 = (1 - residual / (held_y - held_y.mean(0)).pow(2).sum(0)).mean().item()
            scores.append((iteration, r2))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=3000, help="episodes' first frames (the last fifth scores)")
    parser.add_argument("--iterations", type=int, default=1200, help="Adam steps per stem")
    parser.add_argument("--report", type=int, default=200, help="iterations between held-out scores")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-4)
    stems = [stem for stem in IMAGE_STEMS if stem != "auto"]
    parser.add_argument("--stems", nargs="+", default=stems, choices=stems)
    parser.add_argument("--pools", nargs="+", default=list(POOLS), choices=POOLS)
    args = parser.parse_args()
    if args.frames < 10 or args.iterations < 1 or args.report < 1 or args.batch < 1:
        parser.error("--frames must be >= 10, and --iterations, --report and --batch >= 1")
    torch.set_num_threads(1)
    frames, targets = first_frames(args.frames)
    for stem, pool in itertools.product(args.stems, args.pools):
        scores = stem_r2(stem, pool, frames, targets, args.iterations, args.report, args.batch, args.lr)
        print(f"image_stem={stem} pool={pool}: held-out R^2 " + " ".join(f"{it}:{r2:.2f}" for it, r2 in scores))


if __name__ == "__main__":
    main()
