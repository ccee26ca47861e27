"""Supervised recall probes: how well a memory carries what it saw across a delay, without RL in the way.

The extractor runs its training form (``sequence``) on whole episodes of a recall task, and a linear
readout of its features at the query step is trained on the answer. This measures what backpropagation
through the memory can learn, separate from PPO's credit assignment and exploration.

* ``--task cue``: one of ``n_cues`` one-hot cues at the first step, ``delay`` blank steps, a query flag;
  cross-entropy on the cue. Score: accuracy (chance ``1 / n_cues``).
* ``--task spatial``: the observations of ``tmem/SpatialRecall-v0`` (3 objects at uniform positions in
  ``[-1, 1]^2`` shown for 3 steps, ``delay`` blank steps, a one-hot query naming one); squared error on
  the named object's position. Score: ``1 - distance``, the env's reward (pointing at the centre: 0.24).
* ``--task pixel``: the held steps of ``tmem/PixelMemoryReacher-v0`` (64x64 frames and joint readings, the
  target drawn in the first 5 of 15, the arm still), made once with zero actions: 1,536 episodes to train
  on and 512 to score (``--delay`` does not apply: the env hides the target for the last 10). Squared
  error on the target's (x, y). Score: R^2 of the answer, 0 for the mean position. With ``--query 4`` the
  answer is read at the last shown step instead: what the image encoder sees, without the memory. With
  ``--every-step`` the squared error is summed over all 15 held steps, as a policy's loss comes at every
  step (the score stays the query step's).

Prints the score on 512 fresh episodes every ``--every`` iterations.

    python scripts/probe_recall.py --model tensor_memory --delay 32 --normalize --seeds 0 1 2
    python scripts/probe_recall.py --memory local_update=true read_norm=true forget_bias_init=3 --normalize
    python scripts/probe_recall.py --model lstm --kwargs forget_bias=3 --normalize
    python scripts/probe_recall.py --task spatial --delay 10 --model tensor_memory
    python scripts/probe_recall.py --task spatial --delay 10 --model lstm --kwargs forget_bias=3 --ortho-init --frozen
    python scripts/probe_recall.py --task spatial --delay 10 --ortho-init --reinforce every-step --batch 64
    python scripts/probe_recall.py --task pixel --model lstm --kwargs forget_bias=3 --iterations 300 --every 50
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

SPATIAL_OBJECTS, SPATIAL_SHOW_STEPS = 3, 3
PIXEL_TRAIN, PIXEL_SCORE = 1536, 512


def cue_episodes(
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


def spatial_episodes(delay: int, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Observations ``(3 + delay + 1, B, 11)`` laid out as ``SpatialRecallEnv``'s, and the named object's
    position ``(B, 2)``."""
    n = SPATIAL_OBJECTS
    positions = torch.rand(batch, n, 2, generator=generator) * 2 - 1
    query = torch.randint(n, (batch,), generator=generator)
    obs = torch.zeros(SPATIAL_SHOW_STEPS + delay + 1, batch, 3 * n + 2)
    obs[:SPATIAL_SHOW_STEPS, :, : 2 * n] = positions.view(batch, -1)
    obs[:SPATIAL_SHOW_STEPS, :, -2] = 1.0
    obs[-1, torch.arange(batch), 2 * n + query] = 1.0
    obs[-1, :, -1] = 1.0
    return obs, positions[torch.arange(batch), query]


def pixel_episodes(count: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The held steps of ``count`` PixelMemoryReacher episodes (seeds ``seed`` on): ``pixels (T, B, 3, 64, 64)``
    uint8 and ``proprio (T, B, 7)``, and the targets ``(B, 2)``."""
    from tmem_agents.envs.pixel_reacher import PixelMemoryReacherEnv

    env = PixelMemoryReacherEnv()
    pixels, proprio, targets = [], [], []
    for episode in range(count):
        steps = [env.reset(seed=seed + episode)[0]]
        steps += [env.step(np.zeros(2))[0] for _ in range(env.hold_steps - 1)]
        pixels.append(np.stack([step["pixels"].transpose(2, 0, 1) for step in steps]))
        proprio.append(np.stack([step["proprio"] for step in steps]))
        targets.append(env.target_position())
    env.close()
    obs = {"pixels": torch.tensor(np.stack(pixels, axis=1)), "proprio": torch.tensor(np.stack(proprio, axis=1))}
    return obs, torch.tensor(np.stack(targets), dtype=torch.float32)


class Probe:
    """One recall task: its episodes, the readout's size, the training loss and the score.

    The readout sees the features of every step, ``out (T, B, out_dim)``; the supervised loss and the score
    use the last step's. With ``--reinforce`` the spatial readout is the mean of a Gaussian policy
    (``log_std`` learned, starting at 0 as in SB3): REINFORCE on the reward ``1 - distance`` with the batch's
    normalized reward as advantage and SB3's entropy bonus of ``ppo_recall``, 0.01. ``query`` credits the
    query step's action only; ``every-step`` samples an action at every step and credits each with the
    episode's advantage, as PPO's GAE with ``gae_lambda`` near 1 does when the actions before the query
    change nothing.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.spatial = args.task == "spatial"
        self.pixel = args.task == "pixel"
        if args.reinforce and not self.spatial:
            raise SystemExit("--reinforce needs --task spatial (a continuous action)")
        if args.every_step and not self.pixel:
            raise SystemExit("--every-step needs --task pixel (the other tasks answer at their last step only)")
        if self.pixel:
            self.space = gym.spaces.Dict(
                {
                    "pixels": gym.spaces.Box(0, 255, (3, 64, 64), np.uint8),
                    "proprio": gym.spaces.Box(-np.inf, np.inf, (7,), np.float32),
                }
            )
            self.pool = pixel_episodes(PIXEL_TRAIN + PIXEL_SCORE, seed=0)
        else:
            obs_dim = 3 * SPATIAL_OBJECTS + 2 if self.spatial else args.n_cues + 1
            self.space = gym.spaces.Box(-1.0, 1.0, shape=(obs_dim,), dtype=np.float32)
        self.query = args.query if self.pixel else -1
        self.out_dim = 2 if self.spatial or self.pixel else args.n_cues
        self.log_std = nn.Parameter(torch.zeros(self.out_dim))

    def _from_pool(self, index: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        obs, targets = self.pool
        return {"pixels": obs["pixels"][:, index].float() / 255, "proprio": obs["proprio"][:, index]}, targets[index]

    def episodes(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pixel:
            return self._from_pool(torch.randint(PIXEL_TRAIN, (batch,), generator=generator))
        if self.spatial:
            return spatial_episodes(self.args.delay, batch, generator)
        return cue_episodes(self.args.n_cues, self.args.delay, batch, generator, self.args.normalize)

    def score_episodes(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """512 episodes to score on: fresh ones, or for ``pixel`` the pool's held-out ones."""
        if self.pixel:
            return self._from_pool(torch.arange(PIXEL_TRAIN, PIXEL_TRAIN + PIXEL_SCORE))
        return self.episodes(512, generator)

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.args.reinforce:
            return self._policy_gradient_loss(out, target)
        if self.pixel and self.args.every_step:
            return (out - target).pow(2).sum(-1).mean()
        if self.spatial or self.pixel:
            return (out[self.query] - target).pow(2).sum(-1).mean()
        return nn.functional.cross_entropy(out[-1], target)

    def _policy_gradient_loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.args.reinforce == "query":
            out = out[-1:]
        policy = torch.distributions.Normal(out, self.log_std.exp())
        actions = policy.sample()
        reward = 1 - (actions[-1].clamp(-1, 1) - target).norm(dim=-1)
        advantage = (reward - reward.mean()) / (reward.std() + 1e-8)
        log_prob = policy.log_prob(actions).sum(-1)
        return -(advantage * log_prob).mean() - 0.01 * policy.entropy().sum(-1).mean()

    def score(self, out: torch.Tensor, target: torch.Tensor) -> float:
        if self.pixel:
            residual = (out[self.query] - target).pow(2).sum()
            return (1 - residual / (target - target.mean(0)).pow(2).sum()).item()
        if self.spatial:
            return (1 - (out[-1].clamp(-1, 1) - target).norm(dim=-1)).mean().item()
        return (out[-1].argmax(-1) == target).float().mean().item()


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


def answer(extractor: nn.Module, readout: nn.Module, obs: torch.Tensor) -> torch.Tensor:
    """The readout of the features at every step of episodes ``obs (T, B, ...)`` -> ``(T, B, out_dim)``."""
    return readout(extractor.episodes(obs))


def train(probe: Probe, seed: int) -> list[tuple[int, float]]:
    """Train one extractor and readout from ``seed``; returns ``(iteration, score)`` pairs."""
    args = probe.args
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    kwargs = {"features_dim": 64, **options(args.kwargs)}
    if args.memory:
        kwargs["memory"] = options(args.memory)
    extractor = EXTRACTORS[args.model](probe.space, **kwargs)
    if args.ortho_init:
        extractor.apply_sb3_initialisation()
    extractor.requires_grad_(not args.frozen)
    readout = nn.Linear(64, probe.out_dim)
    params = [p for p in (*extractor.parameters(), *readout.parameters()) if p.requires_grad]
    if args.reinforce:
        with torch.no_grad():
            probe.log_std.zero_()
        params.append(probe.log_std)
    optimizer = torch.optim.Adam(params, lr=args.lr)
    curve = []
    for iteration in range(1, args.iterations + 1):
        obs, target = probe.episodes(args.batch, generator)
        loss = probe.loss(answer(extractor, readout, obs), target)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 0.5)
        optimizer.step()
        if iteration % args.every == 0:
            with torch.no_grad():
                obs, target = probe.score_episodes(generator)
                curve.append((iteration, probe.score(answer(extractor, readout, obs), target)))
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="cue", choices=("cue", "spatial", "pixel"))
    parser.add_argument("--model", default="tensor_memory", choices=sorted(EXTRACTORS))
    parser.add_argument("--kwargs", nargs="*", default=[], help="extractor options as key=value")
    parser.add_argument("--memory", nargs="*", default=[], help="Tensor Memory options as key=value")
    parser.add_argument("--normalize", action="store_true", help="cue task: standardized observations")
    parser.add_argument("--n-cues", type=int, default=4)
    parser.add_argument("--delay", type=int, default=32)
    parser.add_argument("--query", type=int, default=14, choices=(4, 14), help="pixel task: the step answered")
    parser.add_argument(
        "--every-step", action="store_true", help="pixel task: the squared error at every held step, not one"
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--ortho-init",
        action="store_true",
        help="re-initialise the extractor as the policy does (SB3's orthogonal init, then restore_initialisation)",
    )
    parser.add_argument(
        "--frozen",
        action="store_true",
        help="train the readout only: what the extractor carries at its initialisation, where PPO starts",
    )
    parser.add_argument(
        "--reinforce",
        choices=("query", "every-step"),
        help="spatial task: train by REINFORCE instead of squared error, crediting the query step's action "
        "only or every step's (see Probe)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    probe = Probe(args)
    settings = " ".join(
        [
            args.model,
            *args.kwargs,
            *args.memory,
            *(["--ortho-init"] if args.ortho_init else []),
            *(["--frozen"] if args.frozen else []),
            *(["--every-step"] if args.every_step else []),
            *([f"--reinforce {args.reinforce}"] if args.reinforce else []),
        ]
    )
    where = f"answer at step {args.query}" if args.task == "pixel" else f"delay {args.delay}"
    print(f"{args.task} recall, {where}{' (normalized)' if args.normalize else ''}: {settings}")
    for seed in args.seeds:
        start = time.perf_counter()
        curve = train(probe, seed)
        points = "  ".join(f"{i}: {score:.2f}" for i, score in curve)
        print(f"seed {seed}  {points}  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
