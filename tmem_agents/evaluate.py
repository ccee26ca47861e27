"""``tmem-eval``: roll out a trained run's model with its state carried; write results into the run folder.

``tmem-eval run_dir=<dir> episodes=20 memory_ablation=true video=true memory_video=true``. See ``docs/cli.md``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from tqdm import tqdm

from tmem_agents.algos import MemoryPPO, NonFiniteError
from tmem_agents.config_schema import ConfigError, compose, exit_refused, register_configs, validate_eval
from tmem_agents.env_factory import env_builder, make_envs, normalize
from tmem_agents.evaluation import evaluate
from tmem_agents.memory_viz import MemoryRecorder, write_video
from tmem_agents.policies import TensorMemoryExtractor
from tmem_agents.run_folder import RunFolder, normalization_path, write_json
from tmem_agents.train import EVAL_SEED_OFFSET

log = logging.getLogger(__name__)
register_configs()


class EpisodeProgress(VecEnvWrapper):
    """Advances a progress bar by one for every finished episode."""

    def __init__(self, venv: VecEnv, bar: tqdm) -> None:
        super().__init__(venv)
        self.bar = bar

    def reset(self) -> Any:
        return self.venv.reset()

    def step_wait(self) -> Any:
        obs, rewards, dones, infos = self.venv.step_wait()
        self.bar.update(int(np.sum(dones)))
        return obs, rewards, dones, infos


def eval_env(train_cfg: DictConfig, model_path: Path, n_envs: int, seed: int, render_mode: str | None = None) -> VecEnv:
    """``n_envs`` envs as the run trained on, with the normalization statistics saved beside ``model_path`` frozen
    (when it normalized; missing statistics are an error)."""
    stats = normalization_path(model_path)
    if train_cfg.algo.normalize and not stats.is_file():
        raise ConfigError(f"checkpoint={str(model_path)!r}: the run normalized observations but {stats} is missing")
    venv = make_envs(train_cfg.env, n_envs, seed, render_mode=render_mode)
    return normalize(venv, train_cfg.algo, stats=stats, training=False)


def _render(venv: VecEnv, env_id: str) -> np.ndarray:
    try:
        return venv.get_images()[0]
    except gym.error.DependencyNotInstalled as error:
        raise ConfigError(f"video=true: env {env_id!r} cannot render here: {error}") from error


def _renders(cfg: DictConfig, train_cfg: DictConfig) -> bool:
    """Whether the run's env draws ``rgb_array`` frames; raise :class:`ConfigError` for ``video=true`` if it
    cannot (checked before any episode is scored)."""
    probe = env_builder(train_cfg.env)()
    render_modes = probe.metadata.get("render_modes", [])
    probe.close()
    if cfg.video and "rgb_array" not in render_modes:
        raise ConfigError(
            f"video=true: env {train_cfg.env.id!r} cannot render rgb_array (modes: {render_modes}); "
            "drop video=true (memory_video=true draws the memory without frames)"
        )
    return "rgb_array" in render_modes


def _record_videos(
    cfg: DictConfig, model: MemoryPPO, train_cfg: DictConfig, model_path: Path, seed: int, renders: bool
) -> list[Path]:
    """Render ``video_episodes`` episodes into ``videos/``: the frames (``renders``) and/or the memory pictures."""
    run = RunFolder(cfg.run_dir)
    venv = eval_env(train_cfg, model_path, 1, seed, "rgb_array" if renders else None)
    recorder = MemoryRecorder() if cfg.memory_video else None
    frames: list[np.ndarray] = []
    obs, state, starts, episodes = venv.reset(), None, np.ones(1, dtype=bool), 0
    while episodes < cfg.video_episodes:
        frame = _render(venv, train_cfg.env.id) if renders else None
        actions, state = model.predict(obs, state=state, episode_start=starts, deterministic=cfg.deterministic)
        if frame is not None and cfg.video:
            frames.append(frame)
        if recorder is not None:
            recorder.add(state["pi", "h"][0].cpu().numpy(), frame)
        obs, _, starts, _ = venv.step(actions)
        episodes += int(starts[0])
    venv.close()
    written = []
    if cfg.video:
        path = run.videos / f"episode.{cfg.video_format}"
        write_video(path, frames, cfg.fps)
        written.append(path)
    if recorder is not None:
        written.append(recorder.write_animation(run.videos / f"memory.{cfg.video_format}", cfg.fps))
        written.append(recorder.write_summary(run.videos / "memory.png"))
    return written


def _score(model: MemoryPPO, venv: VecEnv, cfg: DictConfig, ablation: bool) -> dict[str, Any]:
    """Summary of ``cfg.episodes`` episodes, the state carried (or reset at every step with ``ablation``)."""
    label = "episodes (state reset every step)" if ablation else "episodes"
    with tqdm(total=cfg.episodes, desc=label, disable=not cfg.progress_bar) as bar:
        return evaluate(model, EpisodeProgress(venv, bar), cfg.episodes, cfg.deterministic, ablation).summary()


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the run folder's model as ``cfg`` says; write and return the results (``<run_dir>/<output>``)."""
    validate_eval(cfg)
    torch.set_num_threads(cfg.torch_threads)
    run = RunFolder(cfg.run_dir)
    train_cfg = OmegaConf.load(run.config)
    model_path = run.model_path(cfg.checkpoint)
    if cfg.memory_video and train_cfg.model.name != "tensor_memory":
        raise ConfigError(f"memory_video=true: the run's model is {train_cfg.model.name!r}, not tensor_memory")
    renders = (cfg.video or cfg.memory_video) and _renders(cfg, train_cfg)
    seed = train_cfg.seed + EVAL_SEED_OFFSET if cfg.seed is None else cfg.seed
    model = MemoryPPO.load(model_path, device=cfg.device)
    if cfg.memory_video and not isinstance(model.policy.features_extractor, TensorMemoryExtractor):
        raise ConfigError(f"memory_video=true: {model_path} has no Tensor Memory extractor")
    venv = eval_env(train_cfg, model_path, cfg.n_envs, seed, None)
    results: dict[str, Any] = _score(model, venv, cfg, ablation=False)
    if cfg.memory_ablation:
        venv.close()
        venv = eval_env(train_cfg, model_path, cfg.n_envs, seed, None)
        ablation = _score(model, venv, cfg, ablation=True)
        results["ablation"] = ablation
        results["memory_gain"] = results["mean_return"] - ablation["mean_return"]
    venv.close()
    results.update(
        checkpoint=run.relative(model_path),
        timesteps=model.num_timesteps,
        deterministic=cfg.deterministic,
        seed=seed,
        env=train_cfg.env.id,
        model=train_cfg.model.name,
    )
    if cfg.video or cfg.memory_video:
        results["videos"] = [
            run.relative(path) for path in _record_videos(cfg, model, train_cfg, model_path, seed, renders)
        ]
    write_json(run.root / cfg.output, results)
    return results


def main(argv: list[str] | None = None) -> None:
    """Console script ``tmem-eval key=value ...``: overrides of ``configs/eval.yaml`` (``--help`` shows it)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if any(arg in ("-h", "--help") for arg in args):
        print(__doc__.strip(), "\n\nOptions (configs/eval.yaml):\n")
        print(OmegaConf.to_yaml(compose("eval", [])))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        cfg = compose("eval", args)
        results = run_eval(cfg)
    except (ConfigError, NonFiniteError, OmegaConfBaseException, HydraException) as error:
        exit_refused("tmem-eval", error)
    line = (
        f"mean return {results['mean_return']:.3f} +- {results['std_return']:.3f} over {results['episodes']} episodes"
    )
    if "ablation" in results:
        line += f"; state reset every step: {results['ablation']['mean_return']:.3f}"
    log.info(line)
    log.info("results: %s", Path(cfg.run_dir) / cfg.output)
    for path in results.get("videos", []):
        log.info("video: %s", Path(cfg.run_dir) / path)


if __name__ == "__main__":
    main()
