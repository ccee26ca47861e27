"""Frame strips of pixel tasks: a row of observations from one episode, for docs and inspection.

python -m tmem_agents.envs.frames docs/img/pixel_reacher_strip.png
python -m tmem_agents.envs.frames docs/img/pixel_memory_reacher_strip.png --task tmem/PixelMemoryReacher-v0 --every 5
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import imageio.v3 as iio
import numpy as np

from tmem_agents.envs.scripted import PixelReacherPolicy, Policy

ORACLE_KP = {"tmem/PixelReacher-v0": 2.0, "tmem/PixelMemoryReacher-v0": 0.7}
"""The pixel tasks and the stiffness of their scripted oracle (``docs/tasks.md``)."""


def frame_strip(
    env: gym.Env, policy: Policy, frames: int = 12, every: int = 4, seed: int = 0, scale: int = 2, gap: int = 2
) -> np.ndarray:
    """Every ``every``-th frame of a seeded episode, scaled up ``scale`` times, in one row ``(H, W, 3)``.

    Dict observations show their ``pixels`` entry.
    """
    obs, info = env.reset(seed=seed)
    policy.reset()
    shots = []
    for t in range(frames * every):
        if t % every == 0:
            frame = obs["pixels"] if isinstance(obs, dict) else obs
            shots.append(np.kron(frame, np.ones((scale, scale, 1), dtype=frame.dtype)))
        obs, _, terminated, truncated, info = env.step(policy.act(obs, info))
        if terminated or truncated:
            break
    height, width, channels = shots[0].shape
    strip = np.full((height, len(shots) * (width + gap) - gap, channels), 255, dtype=np.uint8)
    for i, shot in enumerate(shots):
        strip[:, i * (width + gap) : i * (width + gap) + width] = shot
    return strip


def main() -> None:
    """Write a frame strip of a pixel task, driven by its scripted oracle, to a PNG."""
    parser = argparse.ArgumentParser(description="Write a frame strip of a pixel task, driven by its scripted oracle.")
    parser.add_argument("output", help="PNG path")
    parser.add_argument("--task", choices=sorted(ORACLE_KP), default="tmem/PixelReacher-v0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--every", type=int, default=4)
    args = parser.parse_args()
    env = gym.make(args.task)
    policy = PixelReacherPolicy(env, kp=ORACLE_KP[args.task])
    iio.imwrite(args.output, frame_strip(env, policy, frames=args.frames, every=args.every, seed=args.seed))


if __name__ == "__main__":
    main()
