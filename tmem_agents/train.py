"""``tmem-train``: train a memory agent with MemoryPPO from a Hydra config into a run folder.

``tmem-train env=cartpole_occluded model=lstm seed=1``; ``tmem-train -m seed=0,1,2 model=tensor_memory,lstm``
sweeps (in parallel through the joblib launcher); ``tmem-train resume=<run_dir>`` continues a stopped run in
its folder from its newest checkpoint. See ``docs/cli.md``.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from stable_baselines3.common.logger import configure
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecEnv, sync_envs_normalization

from tmem_agents.algos import MemoryPPO
from tmem_agents.callbacks import CheckpointCallback, EvalCallback, save_model
from tmem_agents.config_schema import (
    ConfigError,
    compose,
    exit_refused,
    memory_options,
    register_configs,
    validate_train,
)
from tmem_agents.env_factory import make_envs, normalize
from tmem_agents.evaluation import evaluate
from tmem_agents.policies import EXTRACTORS
from tmem_agents.run_folder import RunFolder, atomic_write, normalization_path, write_json

CONFIG_PATH = "pkg://tmem_agents.configs"
EVAL_SEED_OFFSET = 10_000
HYDRA_FILES = {".hydra", "train.log"}

log = logging.getLogger(__name__)
register_configs()


def extractor_kwargs(model_cfg: DictConfig) -> dict[str, Any]:
    """Keyword arguments of the model's feature extractor, from its config (heads' options left out)."""
    options = OmegaConf.to_container(model_cfg, resolve=True)
    for key in ("name", "net_arch", "share_features_extractor", "whiten_features"):
        options.pop(key)
    memory = options.get("memory")
    if memory is not None:
        options["memory"] = memory_options(memory)
    return options


def policy_name(env: VecEnv) -> str:
    """SB3's policy alias for the observation space (MemoryPPO uses one recurrent policy for all)."""
    space = env.observation_space
    if space.__class__.__name__ == "Dict":
        return "MultiInputPolicy"
    return "CnnPolicy" if is_image_space(space, check_channels=False) else "MlpPolicy"


def learning_rate(initial: float, schedule: str) -> float | Schedule:
    """A constant rate, or one decaying linearly to 0 over the run (``schedule="linear"``)."""
    return initial if schedule == "constant" else LinearSchedule(initial, 0.0, 1.0)


def build_model(cfg: DictConfig, env: VecEnv) -> MemoryPPO:
    """A fresh MemoryPPO for ``env`` with the config's model and algorithm."""
    algo = cfg.algo
    policy_kwargs: dict[str, Any] = {
        "features_extractor_class": EXTRACTORS[cfg.model.name],
        "features_extractor_kwargs": extractor_kwargs(cfg.model),
        "share_features_extractor": cfg.model.share_features_extractor,
        "log_std_init": algo.log_std_init,
        "whiten_features": cfg.model.whiten_features,
    }
    if cfg.model.net_arch is not None:
        policy_kwargs["net_arch"] = list(cfg.model.net_arch)
    return MemoryPPO(
        policy_name(env),
        env,
        learning_rate=learning_rate(algo.learning_rate, algo.lr_schedule),
        n_steps=algo.n_steps,
        batch_size=algo.batch_size,
        n_epochs=algo.n_epochs,
        gamma=algo.gamma,
        gae_lambda=algo.gae_lambda,
        clip_range=algo.clip_range,
        clip_range_vf=algo.clip_range_vf,
        normalize_advantage=algo.normalize_advantage,
        ent_coef=algo.ent_coef,
        vf_coef=algo.vf_coef,
        max_grad_norm=algo.max_grad_norm,
        target_kl=algo.target_kl,
        bptt_len=algo.bptt_len,
        reconstruction_coef=algo.reconstruction_coef,
        reconstruction_lags=tuple(algo.reconstruction_lags),
        reconstruction_standardize=algo.reconstruction_standardize,
        image_reconstruction_coef=algo.image_reconstruction_coef,
        policy_kwargs=policy_kwargs,
        seed=cfg.seed,
        device=cfg.device,
    )


def _set_aside_progress(run: RunFolder) -> None:
    """Keep the CSV log of the stopped run as ``progress.<k>.csv``; the resumed run writes a fresh one."""
    progress = run.logs / "progress.csv"
    if progress.is_file():
        k = 0
        while (run.logs / f"progress.{k}.csv").exists():
            k += 1
        progress.rename(run.logs / f"progress.{k}.csv")


def train(cfg: DictConfig, run: RunFolder) -> dict[str, Any]:
    """Train as ``cfg`` says into ``run``; return the final evaluation summary (also in ``summary.json``)."""
    validate_train(cfg)
    torch.set_num_threads(cfg.torch_threads)
    check_output_folder(cfg, run.root)
    checkpoint = None if cfg.resume is None else RunFolder(cfg.resume).resume_point("resume")[0]
    try:
        env = make_envs(cfg.env, cfg.algo.n_envs, cfg.seed, cfg.algo.vec_env)
        eval_env = make_envs(cfg.env, cfg.eval_envs, cfg.seed + EVAL_SEED_OFFSET)
        eval_env = normalize(eval_env, cfg.algo, training=False)
        if checkpoint is None:
            env = normalize(env, cfg.algo)
            model = build_model(cfg, env)
        else:
            env = normalize(env, cfg.algo, stats=normalization_path(checkpoint))
            model = MemoryPPO.load(checkpoint, env=env, device=cfg.device)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"the envs or the model could not be built from this config: {error}") from error
    if checkpoint is not None:
        log.info("resuming from %s at %d timesteps", checkpoint, model.num_timesteps)
        _set_aside_progress(run)
    run.summary.unlink(missing_ok=True)
    atomic_write(run.config, lambda tmp: tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True)))
    model.set_logger(configure(str(run.logs), list(cfg.log_formats)))
    callbacks = [CheckpointCallback(run, cfg.checkpoint_freq, cfg.keep_checkpoints)]
    if cfg.eval_freq > 0:
        callbacks.append(EvalCallback(run, eval_env, cfg.eval_freq, cfg.eval_episodes, cfg.deterministic_eval))
    model.learn(
        cfg.total_timesteps - model.num_timesteps,
        callback=callbacks,
        log_interval=cfg.log_interval,
        reset_num_timesteps=checkpoint is None,
        progress_bar=cfg.progress_bar,
    )
    save_model(model, run.final_model)
    summary: dict[str, Any] = {}
    if cfg.final_eval_episodes > 0:
        sync_envs_normalization(env, eval_env)
        summary = evaluate(model, eval_env, cfg.final_eval_episodes, cfg.deterministic_eval).summary()
    summary.update(
        seed=cfg.seed,
        timesteps=model.num_timesteps,
        deterministic=cfg.deterministic_eval,
        env=cfg.env.id,
        model=cfg.model.name,
    )
    write_json(run.summary, summary)
    env.close()
    eval_env.close()
    return summary


def check_output_folder(cfg: DictConfig, folder: Path) -> None:
    """Raise :class:`ConfigError` if ``folder`` already holds a run other than the one ``cfg`` resumes."""
    if cfg.resume is None or folder.resolve() != Path(cfg.resume).resolve():
        RunFolder(folder).require_unused("hydra.run.dir")


def _remove_if_unused(folder: Path) -> None:
    """Remove a run folder that holds nothing but Hydra's own files (a run that failed at start)."""
    if folder.is_dir() and {path.name for path in folder.iterdir()} <= HYDRA_FILES:
        shutil.rmtree(folder)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def hydra_train(cfg: DictConfig) -> float | None:
    """Hydra task: one training run in Hydra's output dir. Returns the final mean return (for sweepers)."""
    folder = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = train(cfg, RunFolder(folder))
    except BaseException as error:
        _remove_if_unused(folder)
        if isinstance(error, ConfigError) and HydraConfig.get().mode == RunMode.RUN:
            exit_refused("tmem-train", error)
        raise
    log.info("run folder: %s", folder)
    if "mean_return" in summary:
        log.info(
            "mean return %.3f +- %.3f over %d episodes",
            summary["mean_return"],
            summary["std_return"],
            summary["episodes"],
        )
    return summary.get("mean_return")


def resume_arguments(args: list[str]) -> list[str]:
    """Expand ``resume=<run_dir>``: the run's own overrides first, then ``args``, and the run folder as output.

    The resumed run thus composes the same config as the stopped one (later overrides such as
    ``total_timesteps=`` still apply) and writes into the same folder. Other arguments pass unchanged.
    """
    values = [arg.split("=", 1)[1] for arg in args if arg.startswith("resume=")]
    if not values or values[-1] in ("null", ""):
        return args
    if any(arg in ("-m", "--multirun") for arg in args):
        raise ConfigError(f"resume={values[-1]!r}: cannot be used with --multirun; resume one run at a time")
    run = RunFolder(Path(values[-1]).expanduser().resolve())
    run.resume_point("resume")
    saved = run.root / ".hydra" / "overrides.yaml"
    previous = [str(o) for o in OmegaConf.load(saved)] if saved.is_file() else []
    previous = [o for o in previous if not o.startswith("resume=")]
    current = [f"resume={run.root}" if arg.startswith("resume=") else arg for arg in args]
    output = [] if any(arg.startswith("hydra.run.dir=") for arg in args) else [f"hydra.run.dir={run.root}"]
    return [*previous, *current, *output]


def task_overrides(args: list[str]) -> list[str] | None:
    """The overrides of a single run's own config, or None when ``args`` hold Hydra flags (multirun, help)."""
    if any(arg.startswith("-") for arg in args):
        return None
    return [arg for arg in args if not arg.lstrip("+~").startswith(("hydra.", "hydra/"))]


def main(argv: list[str] | None = None) -> None:
    """Console script ``tmem-train``: Hydra's command line, with ``resume=<run_dir>`` expanded first.

    A single run's config is composed and checked before Hydra starts, so a bad value fails without
    creating a run folder; the jobs of a multirun check theirs when they start.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        args = resume_arguments(args)
        overrides = task_overrides(args)
        if overrides is not None:
            cfg = compose("train", overrides)
            validate_train(cfg)
            run_dirs = [arg.split("=", 1)[1] for arg in args if arg.startswith("hydra.run.dir=")]
            if run_dirs:
                check_output_folder(cfg, Path(run_dirs[-1]))
    except ConfigError as error:
        exit_refused("tmem-train", error)
    except (OmegaConfBaseException, HydraException):
        pass  # Hydra's own run reports composition errors with their context
    sys.argv = [sys.argv[0], *args]
    hydra_train()


if __name__ == "__main__":
    main()
