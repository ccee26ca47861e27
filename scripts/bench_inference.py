"""Single-env ``predict`` latency for each extractor, as on a robot's control loop (one CPU thread).

For a vector task (velocity-masked CartPole, 4 dims) and a 64x64 RGB pixel task, prints p50 and p99
latency of ``model.predict(obs, state, episode_start)`` over many calls with the state carried, and
the state bytes per env. A 100 Hz loop leaves 10 ms per step.

    python scripts/bench_inference.py --calls 2000
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv

from tmem_agents import MemoryPPO
from tmem_agents.policies import EXTRACTORS


class _SpaceEnv(gym.Env):
    """An env that only carries spaces (predict needs no stepping)."""

    def __init__(self, observation_space: spaces.Space) -> None:
        self.observation_space = observation_space
        self.action_space = spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def latency(model: MemoryPPO, observation_space: spaces.Space, calls: int) -> tuple[float, float, int]:
    obs = observation_space.sample()[None]
    state, start = None, np.ones(1, dtype=bool)
    times = []
    for _ in range(calls + 50):
        begin = time.perf_counter()
        _, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
        times.append(time.perf_counter() - begin)
        start = np.zeros(1, dtype=bool)
    times = np.array(times[50:]) * 1e3
    return float(np.percentile(times, 50)), float(np.percentile(times, 99)), state.bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tasks = {
        "vector (4)": spaces.Box(-1, 1, (4,), np.float32),
        "pixels (64x64x3)": spaces.Box(0, 255, (64, 64, 3), np.uint8),
    }
    print("| task | extractor | p50 (ms) | p99 (ms) | state bytes / env |")
    print("|---|---|---|---|---|")
    for task, space in tasks.items():
        for name, extractor in EXTRACTORS.items():
            env = DummyVecEnv([lambda space=space: _SpaceEnv(space)])
            policy = "CnnPolicy" if len(space.shape) == 3 else "MlpPolicy"
            model = MemoryPPO(policy, env, policy_kwargs={"features_extractor_class": extractor}, seed=0)
            p50, p99, nbytes = latency(model, env.observation_space, args.calls)
            print(f"| {task} | {name} | {p50:.3f} | {p99:.3f} | {nbytes:,} |", flush=True)


if __name__ == "__main__":
    main()
