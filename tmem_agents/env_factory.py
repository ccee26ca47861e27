"""Vectorized envs from an env config: the Gymnasium id, its kwargs, occlusion wrappers and VecNormalize."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
from gymnasium.wrappers import FlattenObservation, TimeLimit
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize

import tmem_agents.envs  # noqa: F401  (registers the task suite)
from tmem_agents.envs.wrappers import BlockOcclusion, Flicker, MaskObservation, PixelOccluder, SensorDropout

WRAPPERS: dict[str, Callable[..., gym.Env]] = {
    "mask": MaskObservation,
    "block_occlusion": BlockOcclusion,
    "flicker": Flicker,
    "sensor_dropout": SensorDropout,
    "pixel_occluder": PixelOccluder,
    "flatten": FlattenObservation,
}


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def _as_tuples(value: Any) -> Any:
    """YAML lists become tuples (the task and wrapper signatures take ranges and sizes as tuples)."""
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _as_tuples(v) for k, v in value.items()}
    return value


def env_builder(env_cfg: DictConfig | Mapping[str, Any], render_mode: str | None = None) -> Callable[[], gym.Env]:
    """A function making one env: ``gym.make(id, **kwargs)``, the time limit, then the wrappers in order."""
    env_id = str(env_cfg["id"])
    kwargs = _as_tuples(_plain(env_cfg["kwargs"]) or {})
    wrappers = [(name, _as_tuples(_plain(args) or {})) for name, args in _plain(env_cfg["wrappers"]).items()]
    max_steps = env_cfg["max_episode_steps"]

    def make() -> gym.Env:
        extra = {} if render_mode is None else {"render_mode": render_mode}
        env = gym.make(env_id, **kwargs, **extra)
        if max_steps is not None:
            env = TimeLimit(env, max_episode_steps=max_steps)
        for name, args in wrappers:
            env = WRAPPERS[name](env, **args)
        return env

    return make


def make_envs(
    env_cfg: DictConfig | Mapping[str, Any],
    n_envs: int,
    seed: int,
    vec_env: str = "dummy",
    render_mode: str | None = None,
) -> VecEnv:
    """``n_envs`` copies in a DummyVecEnv (or SubprocVecEnv), each Monitor-wrapped, seeded ``seed + rank``."""
    vec_env_cls = SubprocVecEnv if vec_env == "subproc" else DummyVecEnv
    return make_vec_env(env_builder(env_cfg, render_mode), n_envs=n_envs, seed=seed, vec_env_cls=vec_env_cls)


def vector_keys(observation_space: gym.Space) -> list[str] | None:
    """The entries VecNormalize may normalize: a dict's non-image keys (sorted), ``[]`` for an image alone,
    ``None`` (the whole observation) otherwise."""
    if isinstance(observation_space, gym.spaces.Dict):
        return sorted(k for k, sub in observation_space.spaces.items() if not is_image_space(sub, check_channels=False))
    return [] if is_image_space(observation_space, check_channels=False) else None


def normalize(venv: VecEnv, algo_cfg: DictConfig, stats: Path | None = None, training: bool = True) -> VecEnv:
    """Wrap in VecNormalize as ``algo`` asks (statistics loaded from ``stats`` when given); else unchanged.

    Images are never normalized (the policy scales them to ``[0, 1]``): with ``norm_obs`` a dict observation has
    its other entries normalized (:func:`vector_keys`), an image alone is left as it is. With ``training=False``
    the statistics stay frozen and rewards are returned unnormalized, for evaluation.
    """
    if stats is not None and stats.is_file():
        wrapped = VecNormalize.load(str(stats), venv)
    elif algo_cfg.normalize:
        keys = vector_keys(venv.observation_space) if algo_cfg.norm_obs else None
        wrapped = VecNormalize(
            venv,
            norm_obs=algo_cfg.norm_obs and keys != [],
            norm_reward=algo_cfg.norm_reward,
            clip_obs=algo_cfg.clip_obs,
            norm_obs_keys=keys or None,
        )
    else:
        return venv
    if not training:
        wrapped.training = False
        wrapped.norm_reward = False
    return wrapped
