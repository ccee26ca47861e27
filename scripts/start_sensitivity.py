"""How much a freshly initialised agent's memory carries on spatial recall, where PPO starts.

For each seed, builds the policy exactly as ``tmem-train`` does (SB3's orthogonal initialisation, then the
extractor's ``restore_initialisation``) and runs episodes of ``tmem/SpatialRecall-v0`` through its features
extractor. Two measures per seed:

* the shown objects' share: over 32 episodes, the gradient of the query-step features ``|f|^2`` with respect
  to the observations of the 3 steps that show the objects, over that with respect to the query's
  observation. Near 0 the memory starts silent and PPO's gradient cannot reach it;
* the readout R^2: a ridge regression from the query-step features to the 6 shown coordinates, fitted on
  1,024 episodes and scored on 1,024 others. 1 means a linear head (the policy's and the critic's) can read
  where every object was from the first update on.

and one on long cue recall (``tmem/CueRecall-v0`` with 4 cues and 32 blank steps, an agent built for it from
the same seed and overrides):

* the cue kept: the mean distance between the 4 cues' mean features at the answer step, over the mean change
  the answer step's query makes to the features. Near 0 the blank steps have buried the cue before PPO
  starts; the LSTM with forget bias 3 keeps about 1.5.

With ``--trained RUN_DIR ...`` it measures trained spatial-recall agents instead (their final models), on
2,048 episodes: the readout R^2 of the shown coordinates and of the named object's position from the
query-step features, and how far the policy's answer lands from that position.

    python scripts/start_sensitivity.py model=tensor_memory --seeds 16
    python scripts/start_sensitivity.py model=tensor_memory --sb3-init     # the memory's heads as SB3 draws them
    python scripts/start_sensitivity.py model=lstm model.forget_bias=3.0
    python scripts/start_sensitivity.py --trained runs/spatial_tm_s0 runs/spatial_lstm_s0
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from omegaconf import OmegaConf

from tmem_agents.algos import MemoryPPO
from tmem_agents.config_schema import compose
from tmem_agents.env_factory import make_envs, normalize
from tmem_agents.envs.spatial_recall import SpatialRecallEnv
from tmem_agents.policies.base import RecurrentFeaturesExtractor
from tmem_agents.readout import ridge_r2
from tmem_agents.run_folder import RunFolder
from tmem_agents.train import build_model

EPISODES = 32
READOUT_EPISODES = 2048
CUES, CUE_DELAY = 4, 32


def episodes(batch: int) -> torch.Tensor:
    """Observations ``(14, batch, 11)`` of spatial-recall episodes (seeds ``0..batch-1``); the first step
    shows the objects' coordinates in its first 6 entries."""
    envs = [SpatialRecallEnv() for _ in range(batch)]
    steps = [np.stack([env.reset(seed=i)[0] for i, env in enumerate(envs)])]
    while len(steps) < envs[0].show_steps + envs[0].delay + 1:
        steps.append(np.stack([env.step(np.zeros(2))[0] for env in envs]))
    return torch.tensor(np.stack(steps))


def cue_episodes(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Observations ``(CUE_DELAY + 2, batch, CUES + 1)`` of long cue recall, cue ``i % CUES`` in episode ``i``,
    and the cues ``(batch,)``: the one-hot cue first, blank steps, then the query flag."""
    cues = torch.arange(batch) % CUES
    obs = torch.zeros(CUE_DELAY + 2, batch, CUES + 1)
    obs[0, torch.arange(batch), cues] = 1.0
    obs[-1, :, CUES] = 1.0
    return obs, cues


def fresh_extractor(
    overrides: list[str], seed: int, sb3_init: bool = False, task: str = "spatial_recall"
) -> RecurrentFeaturesExtractor:
    """The features extractor of the policy ``tmem-train`` would build from ``seed`` for spatial recall
    (``task="cue_recall_long"``: for long cue recall).

    ``sb3_init`` draws SB3's orthogonal initialisation over the whole extractor again, without the
    extractor's ``restore_initialisation``: the start the Tensor Memory had before its heads were restored.
    """
    algo = "ppo_recall_long" if task == "cue_recall_long" else "ppo_recall"
    cfg = compose("train", [f"env={task}", f"algo={algo}", *overrides, f"seed={seed}"])
    env = normalize(make_envs(cfg.env, 1, cfg.seed, "dummy"), cfg.algo)
    extractor = build_model(cfg, env).policy.features_extractor
    env.close()
    if sb3_init:
        extractor.apply_sb3_initialisation(restore=False)
    return extractor


def query_features(extractor: RecurrentFeaturesExtractor, obs: torch.Tensor) -> torch.Tensor:
    """Features ``(B, F)`` at the last step of episodes ``(T, B, obs_dim)`` run from the initial state."""
    return extractor.episodes(obs)[-1]


def shown_share(extractor: RecurrentFeaturesExtractor, obs: torch.Tensor) -> float:
    """Gradient of the query-step features w.r.t. the shown steps, over that w.r.t. the query step."""
    obs = obs.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(query_features(extractor, obs).pow(2).sum(), obs)
    return (grad[:3].abs().mean() / grad[-1].abs().mean()).item()


def named_positions(obs: torch.Tensor) -> torch.Tensor:
    """The position ``(B, 2)`` of the object each episode's query names, from episodes ``(T, B, obs_dim)``."""
    named = obs[-1, :, 6:9].argmax(dim=1)
    return obs[0, :, :6].view(-1, 3, 2)[torch.arange(obs.shape[1]), named]


def readout_r2(extractor: RecurrentFeaturesExtractor, obs: torch.Tensor) -> float:
    """:func:`ridge_r2` of the 6 shown coordinates from the query-step features of episodes ``(T, B, obs_dim)``."""
    with torch.no_grad():
        return ridge_r2(query_features(extractor, obs), obs[0, :, :6])


def cue_kept(extractor: RecurrentFeaturesExtractor, obs: torch.Tensor, cues: torch.Tensor) -> float:
    """Mean distance between the cues' mean answer-step features over the query's mean change to the features,
    for long cue recall episodes ``(T, B, CUES + 1)`` (:func:`cue_episodes`)."""
    with torch.no_grad():
        features = extractor.episodes(obs)
    means = torch.stack([features[-1][cues == cue].mean(0) for cue in range(CUES)])
    separation = torch.cdist(means, means).sum() / (CUES * (CUES - 1))
    return (separation / (features[-1] - features[-2]).norm(dim=1).mean()).item()


def trained_readout(run_dir: str, obs: torch.Tensor) -> dict[str, float]:
    """For the final model of a spatial-recall run folder: the readout R^2 of the shown coordinates
    (``shown``) and of the named object's position (``named``) from its query-step features, and the mean
    distance from that position to its deterministic answer (``distance``), over episodes ``(T, B, obs_dim)``."""
    run = RunFolder(run_dir)
    run.require_config("--trained")
    env_id = OmegaConf.load(run.config).env.id
    if env_id != "tmem/SpatialRecall-v0":
        raise SystemExit(f"--trained {run_dir}: the run trained on {env_id}, not tmem/SpatialRecall-v0")
    policy = MemoryPPO.load(run.model_path("final"), device="cpu").policy
    extractor = policy.pi_features_extractor
    target = named_positions(obs)
    with torch.no_grad():
        features = query_features(extractor, obs)
        answer = policy.action_net(policy.mlp_extractor.forward_actor(features))
    return {
        "shown": ridge_r2(features, obs[0, :, :6]),
        "named": ridge_r2(features, target),
        "distance": (answer.clamp(-1.0, 1.0) - target).norm(dim=1).mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="tmem-train overrides, e.g. model=lstm model.forget_bias=3.0")
    parser.add_argument("--seeds", type=int, default=16, help="seeds 0..N-1")
    parser.add_argument(
        "--sb3-init", action="store_true", help="SB3's orthogonal init on the whole extractor, heads not restored"
    )
    parser.add_argument("--trained", nargs="+", metavar="RUN_DIR", help="measure these trained spatial-recall runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.trained:
        readout_obs = episodes(READOUT_EPISODES)
        for run_dir in args.trained:
            measured = trained_readout(run_dir, readout_obs)
            print(
                f"{run_dir}: readout R^2 of the shown coordinates {measured['shown']:.2f}, of the named object's "
                f"position {measured['named']:.2f}; the answer's mean distance from it {measured['distance']:.3f}"
            )
        return
    obs, readout_obs = episodes(EPISODES), episodes(READOUT_EPISODES)
    extractors = [fresh_extractor(args.overrides, seed, args.sb3_init) for seed in range(args.seeds)]
    shares = np.array([shown_share(extractor, obs) for extractor in extractors])
    r2 = np.array([readout_r2(extractor, readout_obs) for extractor in extractors])
    cue_obs, cues = cue_episodes(1024)
    kept = np.array(
        [
            cue_kept(fresh_extractor(args.overrides, seed, args.sb3_init, "cue_recall_long"), cue_obs, cues)
            for seed in range(args.seeds)
        ]
    )
    print(" ".join(args.overrides) or "defaults", "(SB3's init on the whole extractor)" if args.sb3_init else "")
    print("per seed: " + " ".join(f"{share:.1e}" for share in shares))
    print(
        f"median {np.median(shares):.2e}, min {shares.min():.1e}, silent (< 1e-6): {(shares < 1e-6).sum()}/{args.seeds}"
    )
    print("readout R^2 per seed: " + " ".join(f"{value:.2f}" for value in r2))
    print(f"readout R^2 median {np.median(r2):.2f}, min {r2.min():.2f}")
    print(f"cue kept over {CUE_DELAY} blank steps per seed: " + " ".join(f"{value:.2f}" for value in kept))
    print(f"cue kept median {np.median(kept):.2f}, min {kept.min():.2f}")


if __name__ == "__main__":
    main()
