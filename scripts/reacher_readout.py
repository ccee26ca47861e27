"""Where trained memory-reacher agents keep the hidden target: a readout of its position from their features.

On ``tmem/MemoryReacherHold-v0`` and ``tmem/PixelMemoryReacher-v0`` the arm is held for the first 15 steps, so what
an agent observes in those steps does not depend on what it does. Those observations are made once per run, with
zero actions, for ``--episodes`` episodes (seeds 0 onwards, normalised with the run's saved statistics where it kept
them), and run through the final model's (``--checkpoint``: another saved model's) actor features extractor from its
initial state. At every held step t a ridge regression from the features to the target's (x, y), fitted on half the
episodes and scored on the other half, gives the held-out R^2: at the last step the target is shown (t = 4) it says
whether the agent sees where the target is; at the last held step (t = 14) whether its memory still carries it, 10
steps after it was hidden. A memoryless agent reads about 0 there. With ``--grid`` the readout is of a Tensor
Memory's grid ``h`` after each step instead (every cell and channel, standardized, ridge 1): whether the memory
holds the target where the features have lost it; with ``--stem`` of the frames' encoder's output (a pixel task's):
whether the agent's image encoder sees the target at all; with ``--writes`` a Tensor Memory's writes at each held
step, in place of a readout: their mean strength and spread ``sigma`` (whether it writes harder or narrower while
the target is shown), how far their locations move across episodes and how much of the target a readout finds in
them (whether where it writes depends on where the target is), and the most of any cell a write reaches and the
share of the cells it reaches at half that (whether different cells can hold different things). The count of features
that are 0 at every held step of every episode (a ReLU unit that no longer fires) and the share of features beyond
+-tanh(2) (a saturated ``tanh`` unit) close each run's report, with, for features bounded as a ``tanh``'s, the
readout of their ``atanh`` (a ``tanh`` head's pre-activations). With ``--acting`` the policy acts
(deterministically, its state carried) through whole episodes and the readout is of its features at every step:
whether they keep the target once the arm moves and what it sees of the arm is written over it; a second line reads
the fingertip-to-target vector from them at every step, what the policy must act on (the target where the arm is), a
third says what share of the features' variance across episodes that vector explains (a layer trained by gradient
on top learns directions of little variance late; the features as the heads see them, whitened where the policy
whitens them), and the fingertip's mean distance from the target at the end closes the report.

    python scripts/reacher_readout.py results/full/pixel_memory/tm_s0 results/full/pixel_memory/lstm_fb3_s0
    python scripts/reacher_readout.py --grid <a tensor_memory run>
    python scripts/reacher_readout.py --stem <pixel memory reacher runs>
    python scripts/reacher_readout.py --writes <tensor_memory runs>
    python scripts/reacher_readout.py --acting --episodes 512 <runs>
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from functools import partial

import numpy as np
import torch
from omegaconf import OmegaConf
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.vec_env import VecEnv
from tensordict import TensorDict

from tmem_agents.algos import MemoryPPO
from tmem_agents.evaluate import eval_env
from tmem_agents.ops import write_mass
from tmem_agents.policies import TensorMemoryExtractor
from tmem_agents.policies.base import Obs, RecurrentFeaturesExtractor, map_obs, obs_batch_size
from tmem_agents.policies.recurrent_policy import RecurrentActorCriticPolicy
from tmem_agents.readout import ridge_r2, variance_share
from tmem_agents.run_folder import RunFolder

TASKS = ("tmem/MemoryReacherHold-v0", "tmem/PixelMemoryReacher-v0")
BATCH = 64
SOURCES = ("features", "grid", "stem", "writes")
ACTING_MARKS = (4, 14, 20, 30, 45, 59)


def _batch(venv: VecEnv, seed: int) -> tuple[list, np.ndarray]:
    """The held steps' observations (a list of ``hold_steps`` VecEnv batches) and the targets ``(n, 2)``."""
    venv.seed(seed)
    steps = [venv.reset()]
    hold_steps = venv.get_attr("unwrapped")[0].hold_steps
    zeros = np.zeros((venv.num_envs, *venv.action_space.shape), dtype=venv.action_space.dtype)
    for _ in range(hold_steps - 1):
        steps.append(venv.step(zeros)[0])
    targets = np.stack([env.get_body_com("target")[:2] for env in venv.get_attr("unwrapped")])
    return steps, targets


def step_states(extractor: TensorMemoryExtractor, obs: Obs) -> Iterator[TensorDict]:
    """The state after each step as ``extractor`` runs episodes ``obs`` ``(T, B, ...)`` one step at a time from its
    initial state."""
    state = extractor.initial_state(obs_batch_size(map_obs(lambda x: x[0], obs)))
    for t in range(obs_batch_size(obs)):
        _, state = extractor.forward_step(map_obs(lambda x, t=t: x[t], obs), state)
        yield state


def memory_grids(extractor: TensorMemoryExtractor, obs: Obs) -> torch.Tensor:
    """A Tensor Memory extractor's grid ``h`` after each step of episodes ``obs`` ``(T, B, ...)`` run from its
    initial state, flattened: ``(T, B, C * D * H * W)``."""
    return torch.stack([state["h"].flatten(1) for state in step_states(extractor, obs)])


def writes(extractor: TensorMemoryExtractor, obs: Obs) -> torch.Tensor:
    """The writes a Tensor Memory extractor makes at each step of episodes ``obs`` ``(T, B, ...)`` run from its
    initial state: ``(T, B, n, 7)`` for its ``n`` writes a step (one per chunk and layer, one per token with
    ``per_token``), each its strength (NaN without ``local_update``), spread ``sigma``, location ``(x, y, z)``
    (the grid's coordinates, each axis in ``[-1, 1]``), the most it reaches of any cell (its mass at the
    nearest cell, the strength times the Gaussian there; without ``local_update`` the Gaussian alone) and the
    share of the grid's cells it reaches at half that or more (1: a write that lands on every cell alike)."""
    memory = extractor.memory
    write_inputs, steps = [], []  # each memory call's write inputs x_w, as its write_proj makes them
    handle = memory.write_proj.register_forward_hook(lambda _m, _i, out: write_inputs.append(out))
    try:
        for _ in step_states(extractor, obs):
            terms = []
            for x_w in write_inputs:  # (B, K, inputs, d): K chunks of a step, one or chunk_size inputs each
                _, location, sigma, strength = memory.write_terms(x_w)
                mass = write_mass(
                    torch.ones_like(sigma).view(-1, 1) if strength is None else strength.reshape(-1, 1),
                    location.reshape(-1, 1, 3),
                    sigma.reshape(-1, 1),
                    grid=memory.config.grid,
                    radius=memory.config.write_radius,
                ).flatten(1)
                peak = mass.amax(dim=1)
                half = ((mass >= peak.unsqueeze(1) / 2) & (mass > 0)).float().mean(dim=1)  # 0: reaches no cell
                strength = torch.full_like(sigma, float("nan")) if strength is None else strength
                scalars = [strength, sigma, *location.unbind(-1), peak.view_as(sigma), half.view_as(sigma)]
                terms.append(torch.stack(scalars, dim=-1).flatten(1, -2))
            steps.append(torch.cat(terms, dim=1))
            write_inputs.clear()
    finally:
        handle.remove()
    return torch.stack(steps)


def _load(run_dir: str, checkpoint: str = "final") -> tuple[RecurrentActorCriticPolicy, VecEnv]:
    """A run's policy (``checkpoint``: ``final``, ``best``, ``last`` or a saved model's path) and ``BATCH`` envs of
    its task, normalised as that model was trained."""
    run = RunFolder(run_dir)
    run.require_config("run_dir")
    train_cfg = OmegaConf.load(run.config)
    if train_cfg.env.id not in TASKS:
        raise SystemExit(f"{run_dir}: the run trained on {train_cfg.env.id}; this readout needs one of {TASKS}")
    model_path = run.model_path(checkpoint)
    policy = MemoryPPO.load(model_path, device="cpu").policy
    return policy, eval_env(train_cfg, model_path, BATCH, seed=0)


def _obs_tensor(policy: RecurrentActorCriticPolicy, observation: np.ndarray | dict[str, np.ndarray]) -> Obs:
    """VecEnv observations as the features extractor takes them (images scaled to [0, 1])."""
    flat = policy.obs_to_tensor(observation)[0]
    return preprocess_obs(flat, policy.observation_space, normalize_images=policy.normalize_images)


def image_stem(extractor: RecurrentFeaturesExtractor) -> torch.nn.Module:
    """The module that encodes a pixel task's frames (the ``pixels`` key) into a vector: a Tensor Memory's image
    tokenizer's CNN or a baseline's."""
    encoders = extractor.image_encoders()
    if "pixels" not in encoders:
        raise SystemExit(f"--stem reads the frames' encoder; this run's {type(extractor).__name__} encodes no frames")
    return encoders["pixels"]


def stem_outputs(extractor: torch.nn.Module, obs: Obs) -> torch.Tensor:
    """The image stem's output ``(T, B, F)`` as ``extractor`` runs episodes ``obs`` ``(T, B, ...)``."""
    outputs: list[torch.Tensor] = []
    handle = image_stem(extractor).register_forward_hook(lambda _m, _i, out: outputs.append(out.flatten(1)))
    try:
        extractor.episodes(obs)
    finally:
        handle.remove()
    return torch.cat(outputs).view(obs_batch_size(obs), obs_batch_size(map_obs(lambda x: x[0], obs)), -1)


def heads_input(policy: RecurrentActorCriticPolicy, features: torch.Tensor) -> torch.Tensor:
    """The actor's features ``(..., F)`` as its heads see them: whitened where the policy whitens them."""
    whitening = policy.features_whitening
    return features if whitening is None else whitening["pi"](features)


def hold_features(
    run_dir: str, episodes: int, source: str = "features", checkpoint: str = "final"
) -> tuple[torch.Tensor, torch.Tensor]:
    """What a run's model (``checkpoint``, as :func:`_load` takes it) holds over the held steps
    ``(hold_steps, episodes, F)``: its actor features (before any whitening, which a ridge readout's fit hardly
    depends on and the ``tanh`` head's saturation does), its Tensor Memory's grids (``source="grid"``,
    :func:`memory_grids`), its image stem's output (``"stem"``, :func:`stem_outputs`) or its writes (``"writes"``,
    :func:`writes`, ``(hold_steps, episodes, n, 7)``); and the targets ``(episodes, 2)``."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    policy, venv = _load(run_dir, checkpoint)
    extractor = policy.pi_features_extractor
    if source in ("grid", "writes") and not isinstance(extractor, TensorMemoryExtractor):
        raise SystemExit(f"--{source} reads a Tensor Memory; this run's extractor is {type(extractor).__name__}")
    read = {
        "features": extractor.episodes,
        "grid": partial(memory_grids, extractor),
        "stem": partial(stem_outputs, extractor),
        "writes": partial(writes, extractor),
    }
    features, targets = [], []
    for first in range(0, episodes, BATCH):
        steps, batch_targets = _batch(venv, first)
        obs = map_obs(
            lambda x: x.view(-1, BATCH, *x.shape[1:]),
            _obs_tensor(
                policy,
                {key: np.concatenate([step[key] for step in steps]) for key in steps[0]}
                if isinstance(steps[0], dict)
                else np.concatenate(steps),
            ),
        )
        with torch.no_grad():
            features.append(read[source](obs))
        targets.append(torch.as_tensor(batch_targets))
    venv.close()
    return torch.cat(features, dim=1)[:, :episodes], torch.cat(targets)[:episodes]


def acting_features(
    run_dir: str, episodes: int, checkpoint: str = "final"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Actor features ``(T, episodes, F)``, as its heads see them, at every step of whole episodes in which the
    run's policy acts (deterministically, its state carried), the targets ``(episodes, 2)``, the
    fingertip-to-target vectors as each step is observed ``(T, episodes, 2)`` and the fingertip's distance from
    the target at the end ``(episodes,)``: whether the features keep the target once the arm moves, and the
    target where the arm is."""
    policy, venv = _load(run_dir, checkpoint)
    extractor = policy.pi_features_extractor
    features, targets, offsets, distances = [], [], [], []
    for first in range(0, episodes, BATCH):
        venv.seed(first)
        observation = venv.reset()
        envs = venv.get_attr("unwrapped")
        targets.append(torch.as_tensor(np.stack([env.get_body_com("target")[:2] for env in envs])))
        state, features_state, steps, step_offsets = None, extractor.initial_state(BATCH), [], []
        done = np.zeros(BATCH, dtype=bool)
        while not done.all():
            with torch.no_grad():
                step_features, features_state = extractor.forward_step(_obs_tensor(policy, observation), features_state)
            steps.append(heads_input(policy, step_features))
            tips = np.stack([env.get_body_com("target")[:2] - env.get_body_com("fingertip")[:2] for env in envs])
            step_offsets.append(torch.as_tensor(tips))
            actions, state = policy.predict(observation, state, deterministic=True)
            observation, _, done, infos = venv.step(actions)
        features.append(torch.stack(steps))
        offsets.append(torch.stack(step_offsets))
        distances.append(torch.as_tensor([info["final_distance"] for info in infos]))
    venv.close()
    return (
        torch.cat(features, dim=1)[:, :episodes],
        torch.cat(targets)[:episodes],
        torch.cat(offsets, dim=1)[:, :episodes],
        torch.cat(distances)[:episodes],
    )


def r2_by_step(features: torch.Tensor, targets: torch.Tensor, grid: bool = False) -> list[float]:
    """Held-out R^2 of ``targets`` ``(B, 2)`` from ``features`` ``(T, B, F)`` at each step (a grid's numbers
    standardized, ridge 1)."""
    if grid:
        return [ridge_r2((step - step.mean(0)) / (step.std(0) + 1e-6), targets, ridge=1.0) for step in features]
    return [ridge_r2(step, targets) for step in features]


def readout(run_dir: str, episodes: int, source: str = "features") -> list[float]:
    """Held-out R^2 of the target's (x, y) from the features (or the memory's grid, or the image stem's output:
    :func:`hold_features`) at each held step, for one run."""
    return r2_by_step(*hold_features(run_dir, episodes, source), source == "grid")


def never_active(features: torch.Tensor) -> int:
    """How many of the features ``(T, B, F)`` are exactly 0 at every step of every episode (dead ReLU units)."""
    return int((features != 0).flatten(0, 1).any(0).logical_not().sum())


def saturated(features: torch.Tensor, bound: float = math.tanh(2.0)) -> float:
    """Fraction of the features ``(T, B, F)`` beyond ``bound`` in magnitude over every step and episode: a
    ``tanh`` unit whose pre-activation lies beyond +-2 passes on less than 7% of a change in its input."""
    return float((features.abs() > bound).float().mean())


def unsquashed(features: torch.Tensor) -> torch.Tensor | None:
    """``atanh`` of features ``(T, B, F)`` bounded as a ``tanh``'s are (signed, none beyond 1 in magnitude): a
    ``tanh`` head's pre-activations, what the target moved before the ``tanh`` flattened it; ``None`` for other
    features (a ReLU head's)."""
    if features.min() >= 0 or features.abs().max() > 1:
        return None
    return torch.atanh(features.clamp(-1 + 1e-6, 1 - 1e-6))


def report_writes(run_dir: str, terms: torch.Tensor, targets: torch.Tensor) -> None:
    """Print what :func:`writes` ``(T, B, n, 7)`` found over the held steps of one run."""
    strength, sigma, location, peak, half = terms[..., 0], terms[..., 1], terms[..., 2:5], terms[..., 5], terms[..., 6]
    by_step = strength.mean(dim=(1, 2))
    has_strength = not bool(by_step.isnan().all())  # NaN throughout without local_update
    line = " ".join(f"{v:.3f}" for v in by_step) if has_strength else "none (local_update=false)"
    print(f"{run_dir}: mean write strength by held step: {line}")
    print("  mean write spread (sigma) by held step: " + " ".join(f"{v:.2f}" for v in sigma.mean(dim=(1, 2))))
    last = len(terms) - 1
    moved = " ".join(f"t = {t}: {location[t].std(dim=0).mean():.3f}" for t in (4, last))
    found = " ".join(f"t = {t}: {ridge_r2(location[t].flatten(1), targets):.2f}" for t in (4, last))
    print(f"  write locations' spread across episodes: {moved}; R^2 of the target from them: {found}")
    mass = "strength x its Gaussian" if has_strength else "its Gaussian"
    print(
        f"  the most of any cell a write reaches: {peak.mean():.3f} ({mass} at the nearest cell); "
        f"cells it reaches at half that or more: {half.mean():.0%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders of the two memory reachers")
    parser.add_argument("--episodes", type=int, default=1024, help="episodes (a multiple of 64 is used whole)")
    parser.add_argument("--grid", action="store_true", help="read a Tensor Memory's grid h, not the features")
    parser.add_argument("--stem", action="store_true", help="read the frames' encoder's output, not the features")
    parser.add_argument(
        "--writes", action="store_true", help="report a Tensor Memory's writes: strength, spread, place"
    )
    parser.add_argument(
        "--checkpoint", default="final", help="the model read: final, best, last or a saved model's path"
    )
    parser.add_argument(
        "--acting", action="store_true", help="read the features at every step of episodes the policy acts in"
    )
    args = parser.parse_args()
    if args.episodes < 2 * BATCH:
        parser.error(f"--episodes must be at least {2 * BATCH}, got {args.episodes}")
    if args.grid + args.stem + args.writes + args.acting > 1:
        parser.error("--grid, --stem, --writes and --acting read different things; pass one of them")
    source = "grid" if args.grid else "stem" if args.stem else "writes" if args.writes else "features"
    torch.set_num_threads(1)
    for run_dir in args.runs:
        if args.acting:
            features, targets, offsets, distances = acting_features(run_dir, args.episodes, args.checkpoint)
            marks = [t for t in ACTING_MARKS if t < len(features)]
            target_r2 = " ".join(f"t = {t}: {ridge_r2(features[t], targets):.2f}" for t in marks)
            print(f"{run_dir}: R^2 of the target from its features as it acts: {target_r2}")
            vector_r2 = " ".join(f"t = {t}: {ridge_r2(features[t], offsets[t]):.2f}" for t in marks)
            print(f"  of the fingertip-to-target vector: {vector_r2}")
            shares = " ".join(f"t = {t}: {variance_share(features[t], offsets[t]):.2f}" for t in marks)
            print(f"  share of the features' variance that vector explains: {shares}")
            print(f"  final distance {distances.mean():.3f} (median {distances.median():.3f})")
            continue
        features, targets = hold_features(run_dir, args.episodes, source, args.checkpoint)
        if source == "writes":
            report_writes(run_dir, features, targets)
            continue
        r2 = r2_by_step(features, targets, args.grid)
        print(f"{run_dir}: R^2 of the target from its {source} by held step: " + " ".join(f"{v:.2f}" for v in r2))
        print(f"  shown (t = 4): {r2[4]:.2f}; hidden 10 steps (t = {len(r2) - 1}): {r2[-1]:.2f}")
        if source == "features":
            print(f"  features never active on the held steps: {never_active(features)} of {features.shape[-1]}")
            print(f"  features beyond +-tanh(2) on the held steps: {saturated(features):.0%}")
            pre = unsquashed(features)
            if pre is not None:
                r2_pre = r2_by_step(pre, targets)
                print(f"  unsquashed (atanh), shown (t = 4): {r2_pre[4]:.2f}; hidden 10 steps: {r2_pre[-1]:.2f}")


if __name__ == "__main__":
    main()
