"""sb3-contrib's RecurrentPPO next to MemoryPPO (LSTM and Tensor Memory) on velocity-masked CartPole.

All three use rl-zoo3's ``ppo_lstm`` CartPoleNoVel settings: 8 envs, VecNormalize, n_steps 32, batch 256,
20 epochs, gamma 0.98, GAE lambda 0.8, learning rate and clip range decaying linearly from 1e-3 and 0.2,
ReLU, ``pi=[64], vf=[64]``. sb3-contrib runs an LSTM of 64 for the actor and one for the critic; MemoryPPO's
LSTM baseline does the same (``share_features_extractor=False``); its Tensor Memory is shared by both heads.
One torch thread. Prints steps per second, the recurrent-state bytes the rollout buffer holds, and the
final evaluation return (20 episodes, deterministic, state carried).

    python scripts/compare_recurrent_ppo.py --timesteps 100000 --seed 0
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

from tmem_agents import MemoryPPO
from tmem_agents.envs.wrappers import MaskObservation
from tmem_agents.policies import LSTMExtractor, TensorMemoryExtractor

SETTINGS = {
    "n_steps": 32,
    "batch_size": 256,
    "n_epochs": 20,
    "gamma": 0.98,
    "gae_lambda": 0.8,
    "ent_coef": 0.0,
    "learning_rate": lambda progress: 1e-3 * progress,
    "clip_range": lambda progress: 0.2 * progress,
}
MODELS = ("sb3-contrib RecurrentPPO (LSTM)", "MemoryPPO + LSTMExtractor", "MemoryPPO + TensorMemoryExtractor")
HEADS = {"ortho_init": False, "activation_fn": nn.ReLU, "net_arch": {"pi": [64], "vf": [64]}}


def cartpole_no_velocity() -> gym.Env:
    return MaskObservation(gym.make("CartPole-v1"), hide=[1, 3])


def _envs(seed: int) -> VecNormalize:
    return VecNormalize(make_vec_env(cartpole_no_velocity, n_envs=8, seed=seed), norm_reward=True)


def build(name: str, seed: int):
    env = _envs(seed)
    if name == "sb3-contrib RecurrentPPO (LSTM)":
        return RecurrentPPO(
            "MlpLstmPolicy",
            env,
            seed=seed,
            **SETTINGS,
            policy_kwargs={**HEADS, "lstm_hidden_size": 64, "enable_critic_lstm": True},
        )
    if name == "MemoryPPO + LSTMExtractor":
        extractor = {
            "features_extractor_class": LSTMExtractor,
            "features_extractor_kwargs": {"features_dim": 64},
            "share_features_extractor": False,
        }
    else:
        extractor = {
            "features_extractor_class": TensorMemoryExtractor,
            "features_extractor_kwargs": {"features_dim": 64},
        }
    return MemoryPPO("MlpPolicy", env, seed=seed, bptt_len=32, **SETTINGS, policy_kwargs={**HEADS, **extractor})


def state_bytes(model) -> int:
    """Bytes of recurrent state held by the rollout buffer."""
    buffer = model.rollout_buffer
    if isinstance(model, MemoryPPO):
        return buffer.states.bytes()
    return sum(
        getattr(buffer, key).nbytes
        for key in ("hidden_states_pi", "cell_states_pi", "hidden_states_vf", "cell_states_vf")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.models:
        model = build(name, args.seed)
        start = time.perf_counter()
        model.learn(args.timesteps)
        speed = args.timesteps / (time.perf_counter() - start)
        eval_env = _envs(args.seed + 100)
        eval_env.obs_rms = model.get_env().obs_rms
        eval_env.training, eval_env.norm_reward = False, False
        mean, std = evaluate_policy(model, eval_env, n_eval_episodes=args.episodes, deterministic=True)
        rows.append((name, speed, state_bytes(model), mean, std))
        print(
            f"{name}: {speed:.0f} steps/s, buffer state {state_bytes(model):,} B, return {mean:.1f} +- {std:.1f}",
            flush=True,
        )
    print(f"\n{args.timesteps} steps, seed {args.seed}, velocity-masked CartPole-v1, one thread\n")
    print("| model | steps/s | recurrent state in the rollout buffer (bytes) | final return |")
    print("|---|---|---|---|")
    for name, speed, nbytes, mean, std in rows:
        print(f"| {name} | {speed:.0f} | {nbytes:,} | {mean:.1f} +- {std:.1f} |")
    if len(rows) > 1 and rows[0][0] == MODELS[0] and rows[1][0] == MODELS[1]:
        print(f"\nper-step / chunked state storage: {rows[0][2] / rows[1][2]:.1f}x (the same LSTM states)")


if __name__ == "__main__":
    main()
