"""How much a freshly initialised agent's memory carries on spatial recall, where PPO starts.

For each seed, builds the policy exactly as ``tmem-train`` does (SB3's orthogonal initialisation included),
runs 32 episodes of ``tmem/SpatialRecall-v0`` through its features extractor, and compares two gradients of
the query-step features ``|f|^2``: with respect to the observations of the 3 steps that show the objects,
and with respect to the query's observation. Their ratio is the shown objects' share of what the features
respond to, 13 steps later; a ratio near 0 means the memory starts silent and PPO's gradient cannot reach it.

    python scripts/start_sensitivity.py model=tensor_memory model.memory.local_update=true --seeds 16
    python scripts/start_sensitivity.py model=lstm model.forget_bias=3.0
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from tmem_agents.config_schema import compose
from tmem_agents.env_factory import make_envs, normalize
from tmem_agents.envs.spatial_recall import SpatialRecallEnv
from tmem_agents.train import build_model

EPISODES = 32


def episodes(batch: int) -> torch.Tensor:
    """Observations ``(14, batch, 11)`` of spatial-recall episodes (seeds ``0..batch-1``)."""
    envs = [SpatialRecallEnv() for _ in range(batch)]
    steps = [np.stack([env.reset(seed=i)[0] for i, env in enumerate(envs)])]
    while len(steps) < envs[0].show_steps + envs[0].delay + 1:
        steps.append(np.stack([env.step(np.zeros(2))[0] for env in envs]))
    return torch.tensor(np.stack(steps))


def shown_share(overrides: list[str], seed: int, obs: torch.Tensor) -> float:
    """Gradient of the query-step features w.r.t. the shown steps, over that w.r.t. the query step."""
    cfg = compose("train", ["env=spatial_recall", "algo=ppo_recall", *overrides, f"seed={seed}"])
    env = normalize(make_envs(cfg.env, 1, cfg.seed, "dummy"), cfg.algo)
    extractor = build_model(cfg, env).policy.features_extractor
    env.close()
    obs = obs.clone().requires_grad_(True)
    starts = torch.zeros(obs.shape[:2])
    starts[0] = 1.0
    features, _ = extractor.sequence(obs, extractor.initial_state(obs.shape[1]), starts)
    (grad,) = torch.autograd.grad(features[-1].pow(2).sum(), obs)
    return (grad[:3].abs().mean() / grad[-1].abs().mean()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="tmem-train overrides, e.g. model=lstm model.forget_bias=3.0")
    parser.add_argument("--seeds", type=int, default=16, help="seeds 0..N-1")
    args = parser.parse_args()
    torch.set_num_threads(1)
    obs = episodes(EPISODES)
    shares = np.array([shown_share(args.overrides, seed, obs) for seed in range(args.seeds)])
    print(" ".join(args.overrides) or "defaults")
    print("per seed: " + " ".join(f"{share:.1e}" for share in shares))
    print(
        f"median {np.median(shares):.2e}, min {shares.min():.1e}, silent (< 1e-6): {(shares < 1e-6).sum()}/{args.seeds}"
    )


if __name__ == "__main__":
    main()
