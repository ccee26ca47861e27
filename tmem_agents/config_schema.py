"""Structured config schemas of ``tmem-train`` and ``tmem-eval``, registered in Hydra's ConfigStore.

Hydra checks every key and type against these dataclasses while composing, so a typo or a bad type fails
before anything runs, naming the key. :func:`validate_train` and :func:`validate_eval` then check the
values (ranges, names, paths); :func:`compose` builds a config from the shipped yamls without
Hydra's app, so the commands can check it before any folder is created.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value is out of range, unknown or inconsistent; the message names the key and the value."""


def exit_refused(program: str, error: Exception) -> NoReturn:
    """End a console script that refuses its command line: ``<program>: <error>`` on stderr, exit status 2."""
    print(f"{program}: {error}", file=sys.stderr)
    sys.exit(2)


@dataclass
class EnvConfig:
    """The task: a registered Gymnasium id (``module:EnvId`` imports ``module`` first) and its wrappers.

    ``wrappers`` maps a wrapper name (see :data:`tmem_agents.env_factory.WRAPPERS`) to its keyword
    arguments; they are applied in the order given.
    """

    id: str = MISSING
    kwargs: dict[str, Any] = field(default_factory=dict)
    wrappers: dict[str, Any] = field(default_factory=dict)
    max_episode_steps: int | None = None


@dataclass
class AlgoConfig:
    """MemoryPPO hyperparameters, the number of envs, and optional VecNormalize."""

    name: str = "ppo"
    n_envs: int = 8
    vec_env: str = "dummy"
    learning_rate: float = 3e-4
    lr_schedule: str = "constant"
    n_steps: int = 128
    batch_size: int = 256
    n_epochs: int = 4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    clip_range_vf: float | None = None
    normalize_advantage: bool = True
    ent_coef: float = 0.0
    log_std_init: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float | None = None
    bptt_len: int = 32
    reconstruction_coef: float = 0.0
    reconstruction_lags: list[int] = field(default_factory=lambda: [1])
    reconstruction_standardize: bool = False
    image_reconstruction_coef: float = 0.0
    normalize: bool = False
    norm_obs: bool = True
    norm_reward: bool = True
    clip_obs: float = 10.0


@dataclass
class ModelConfig:
    """The policy's feature extractor (``name``, a key of ``tmem_agents.policies.EXTRACTORS``) and heads."""

    name: str = MISSING
    features_dim: int = 64
    net_arch: list[int] | None = None
    share_features_extractor: bool = True
    whiten_features: bool = False


@dataclass
class MemoryGridConfig:
    """Fields of :class:`tmem_agents.memory.TensorMemoryConfig` exposed to configs (``None``: its default)."""

    grid: list[int] = field(default_factory=lambda: [4, 4, 4])
    channels: int = 16
    chunk_size: int | None = None
    sigma_scale: float = 1.0
    write_radius: int | None = None
    gate_init: float = 0.0
    forget_bias_init: float = 3.0
    forget_timescale_max: float | None = None
    local_update: bool = True
    strength_bias_init: float = -2.0
    input_gates: bool = False
    read_norm: bool = True
    read_standardize: bool = False
    read_cube: float = 0.0
    read_grid: bool = False
    read_after_write: bool = False
    per_token: bool = False
    inner_places: bool = False
    write_from: str = "block_input"
    write_grad: bool = True
    backend: str = "auto"


@dataclass
class TensorMemoryModelConfig(ModelConfig):
    name: str = "tensor_memory"
    token_dim: int = 32
    n_layers: int = 1
    heads: int = 2
    group_size: int = 4
    pool: str = "auto"
    image_stem: str = "auto"
    image_tokens: int = 8
    head_activation: str = "relu"
    read_to_head: bool = False
    head_norm: bool = False
    tokens_to_head: bool = False
    block_grad: bool = True
    memory_features: int = 0
    memory: MemoryGridConfig = field(default_factory=MemoryGridConfig)


@dataclass
class EncodedModelConfig(ModelConfig):
    """A baseline on SB3's encoders, whose images take ``image_encoder`` (``nature_cnn`` or ``spatial_softmax``)."""

    image_encoder: str = "nature_cnn"


@dataclass
class LSTMModelConfig(EncodedModelConfig):
    name: str = "lstm"
    forget_bias: float | None = None
    forget_timescale_max: float | None = None


@dataclass
class FrameStackModelConfig(ModelConfig):
    name: str = "frame_stack"
    n_frames: int = 4


@dataclass
class TrainConfig:
    """``tmem-train``: what to train, for how long, and what the run folder receives."""

    env: EnvConfig = field(default_factory=EnvConfig)
    model: Any = MISSING
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    seed: int = 0
    total_timesteps: int = 100_000
    device: str = "auto"
    torch_threads: int = 1
    resume: str | None = None
    progress_bar: bool = True
    log_formats: list[str] = field(default_factory=lambda: ["stdout", "csv", "tensorboard"])
    log_interval: int = 1
    checkpoint_freq: int = 25_000
    keep_checkpoints: int = 3
    eval_freq: int = 10_000
    eval_episodes: int = 10
    eval_envs: int = 4
    final_eval_episodes: int = 20
    deterministic_eval: bool = True


@dataclass
class EvalConfig:
    """``tmem-eval``: which saved model of a run folder to roll out, and what to write back into it."""

    run_dir: str = MISSING
    checkpoint: str = "final"
    episodes: int = 10
    n_envs: int = 1
    deterministic: bool = True
    memory_ablation: bool = False
    video: bool = False
    memory_video: bool = False
    video_episodes: int = 1
    video_format: str = "mp4"
    fps: int = 30
    seed: int | None = None
    device: str = "auto"
    torch_threads: int = 1
    progress_bar: bool = True
    output: str = "eval.json"


MODEL_SCHEMAS: dict[str, type[ModelConfig]] = {
    "tensor_memory": TensorMemoryModelConfig,
    "lstm": LSTMModelConfig,
    "gru": EncodedModelConfig,
    "mlp": EncodedModelConfig,
    "frame_stack": FrameStackModelConfig,
}
LOG_FORMATS = ("stdout", "csv", "tensorboard", "log", "json")
VEC_ENVS = ("dummy", "subproc")
LR_SCHEDULES = ("constant", "linear")
VIDEO_FORMATS = ("mp4", "gif")
CONFIG_MODULE = "tmem_agents.configs"


def register_configs() -> None:
    """Store the schemas: ``train_schema``, ``eval_schema`` and ``schema/model/<name>`` for the model yamls."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="eval_schema", node=EvalConfig)
    for name, schema in MODEL_SCHEMAS.items():
        store.store(group="schema/model", name=name, node=schema)


def _fail(key: str, value: Any, requirement: str) -> None:
    raise ConfigError(f"{key}={value!r}: {requirement}")


def _at_least(cfg: DictConfig, prefix: str, names: tuple[str, ...], minimum: float) -> None:
    for name in names:
        value = cfg[name]
        if value < minimum:
            _fail(f"{prefix}{name}", value, f"must be >= {minimum}")


def _one_of(key: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        _fail(key, value, f"must be one of {sorted(allowed)}")


def memory_options(memory: dict[str, Any]) -> dict[str, Any]:
    """The Tensor Memory options a model config sets (``null`` leaves the memory's default)."""
    return {key: value for key, value in memory.items() if value is not None}


def _check_memory(memory: DictConfig) -> None:
    """The memory options make a valid :class:`~tmem_agents.memory.TensorMemoryConfig` (``null``: its default)."""
    from tmem_agents.memory import TensorMemoryConfig

    try:
        TensorMemoryConfig.from_options(memory_options(OmegaConf.to_container(memory)))
    except ValueError as error:
        raise ConfigError(f"model.memory: {error}") from None


def _check_lstm_starts(model: DictConfig) -> None:
    """The LSTM's gate starts: ``forget_timescale_max`` finite and >= 2, and not beside ``forget_bias``."""
    from tmem_agents.gate_init import is_timescale

    timescale = model.forget_timescale_max
    if timescale is None:
        return
    if not is_timescale(timescale):
        _fail("model.forget_timescale_max", timescale, "must be a finite number of steps >= 2 (or null)")
    if model.forget_bias is not None:
        _fail("model.forget_timescale_max", timescale, "replaces model.forget_bias: set model.forget_bias=null")


def _check_reconstruction(algo: DictConfig) -> None:
    """The reconstruction loss's lags suit ``algo`` (:func:`~tmem_agents.algos.memory_ppo.check_reconstruction`)."""
    from tmem_agents.algos.memory_ppo import check_reconstruction

    lags = list(algo.reconstruction_lags)
    try:
        check_reconstruction(algo.reconstruction_coef, lags, algo.bptt_len)
    except ValueError:
        _fail(
            "algo.reconstruction_lags",
            lags,
            f"must be distinct steps back, each in [1, algo.bptt_len) = [1, {algo.bptt_len}), when "
            "algo.reconstruction_coef > 0 (distinct ints >= 1 always)",
        )


def _check_device(key: str, device: str) -> None:
    import torch

    try:
        torch.device(device if device != "auto" else "cpu")
    except RuntimeError:
        _fail(key, device, "is not a torch device (use auto, cpu, cuda or cuda:N)")


def _check_keywords(key: str, target: Callable[..., Any], given: Iterable[str], skip: int = 0) -> None:
    """The keyword arguments ``given`` are ones ``target`` takes (past its first ``skip`` parameters); any are
    when it takes ``**kwargs``."""
    params = list(inspect.signature(target).parameters.values())[skip:]
    if any(param.kind is param.VAR_KEYWORD for param in params):
        return
    names = sorted(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ConfigError(f"{key}: unknown keyword argument(s) {unknown}; {target.__name__} takes {names}")


def validate_env(env: DictConfig) -> None:
    """The env id is registered (importing ``module`` of ``module:EnvId``), the wrappers are known, and the env
    and each wrapper take the keyword arguments given."""
    import gymnasium as gym
    from gymnasium.envs.registration import load_env_creator

    import tmem_agents.envs  # noqa: F401  (registers the task suite)
    from tmem_agents.env_factory import WRAPPERS

    module, _, name = env.id.rpartition(":")
    try:
        if module:
            importlib.import_module(module)
        spec = gym.spec(name)
    except (gym.error.Error, ModuleNotFoundError) as error:
        _fail("env.id", env.id, f"is not a registered Gymnasium env ({error})")
    creator = load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else spec.entry_point
    _check_keywords("env.kwargs", creator, env.kwargs or {})
    for name in env.wrappers:
        _one_of(f"env.wrappers.{name}", name, list(WRAPPERS))
        if not isinstance(env.wrappers[name], (DictConfig, dict)) and env.wrappers[name] is not None:
            _fail(f"env.wrappers.{name}", env.wrappers[name], "must be a mapping of keyword arguments (or null)")
        _check_keywords(f"env.wrappers.{name}", WRAPPERS[name], env.wrappers[name] or {}, skip=1)
    if env.max_episode_steps is not None and env.max_episode_steps < 1:
        _fail("env.max_episode_steps", env.max_episode_steps, "must be >= 1 or null")


def _check_declared(node: DictConfig, prefix: str = "") -> None:
    """Every key of a structured config node is one its schema declares (``+key=`` adds any key; nothing reads
    an undeclared one); free-form nodes (``env.kwargs``, ``env.wrappers``) are left alone."""
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return
    declared = {f.name for f in dataclasses.fields(schema)}
    for key in node.keys():
        if key not in declared:
            raise ConfigError(
                f"{prefix}{key}: no such option (a '+' adds a key nothing reads); valid: {sorted(declared)}"
            )
        if not OmegaConf.is_missing(node, key) and isinstance(node[key], DictConfig):
            _check_declared(node[key], f"{prefix}{key}.")


def validate_train(cfg: DictConfig) -> None:
    """Check the values of a composed ``tmem-train`` config; raise :class:`ConfigError` naming the key."""
    from tmem_agents.policies import EXTRACTORS

    _check_declared(cfg)
    _at_least(cfg, "", ("total_timesteps", "torch_threads", "log_interval", "checkpoint_freq"), 1)
    _at_least(cfg, "", ("seed", "keep_checkpoints", "eval_freq", "final_eval_episodes"), 0)
    _at_least(cfg, "", ("eval_episodes", "eval_envs"), 1)
    for fmt in cfg.log_formats:
        _one_of("log_formats", fmt, LOG_FORMATS)
    _check_device("device", cfg.device)
    algo = cfg.algo
    _at_least(algo, "algo.", ("n_envs", "n_steps", "batch_size", "n_epochs", "bptt_len"), 1)
    _at_least(
        algo,
        "algo.",
        (
            "learning_rate",
            "clip_range",
            "ent_coef",
            "vf_coef",
            "max_grad_norm",
            "clip_obs",
            "reconstruction_coef",
            "image_reconstruction_coef",
        ),
        0,
    )
    _one_of("algo.vec_env", algo.vec_env, VEC_ENVS)
    _one_of("algo.lr_schedule", algo.lr_schedule, LR_SCHEDULES)
    for name in ("gamma", "gae_lambda"):
        if not 0 <= algo[name] <= 1:
            _fail(f"algo.{name}", algo[name], "must lie in [0, 1]")
    if not math.isfinite(algo.log_std_init):
        _fail(
            "algo.log_std_init",
            algo.log_std_init,
            "must be a finite number (the policy's log std at the start)",
        )
    for name in ("clip_range_vf", "target_kl"):
        if algo[name] is not None and not algo[name] > 0:
            _fail(f"algo.{name}", algo[name], "must be > 0, or null to turn it off")
    if algo.batch_size < algo.bptt_len:
        _fail("algo.batch_size", algo.batch_size, f"counts steps and must be >= algo.bptt_len ({algo.bptt_len})")
    if algo.bptt_len > algo.n_steps:
        _fail(
            "algo.bptt_len",
            algo.bptt_len,
            f"must be <= algo.n_steps ({algo.n_steps}): each chunk is cut from one rollout of n_steps steps per env",
        )
    _check_reconstruction(algo)
    model = cfg.model
    if model.name not in EXTRACTORS:
        _fail("model.name", model.name, f"is not a model; available: {', '.join(sorted(EXTRACTORS))}")
    _at_least(model, "model.", ("features_dim",), 1)
    if model.net_arch is not None and any(width < 1 for width in model.net_arch):
        _fail("model.net_arch", list(model.net_arch), "layer widths must be >= 1")
    if model.name == "tensor_memory":
        from tmem_agents.policies.tensor_memory_extractor import HEAD_ACTIVATIONS, POOLS
        from tmem_agents.policies.tokenizers import IMAGE_STEMS

        _one_of("model.pool", model.pool, POOLS)
        _one_of("model.image_stem", model.image_stem, IMAGE_STEMS)
        _one_of("model.head_activation", model.head_activation, tuple(HEAD_ACTIVATIONS))
        _at_least(model, "model.", ("token_dim", "n_layers", "heads", "group_size", "image_tokens"), 1)
        if model.token_dim % model.heads:
            _fail("model.heads", model.heads, f"must divide model.token_dim ({model.token_dim})")
        _check_memory(model.memory)
    if "image_encoder" in model:
        from tmem_agents.policies.encoders import IMAGE_ENCODERS

        _one_of("model.image_encoder", model.image_encoder, IMAGE_ENCODERS)
    if model.name == "lstm":
        _check_lstm_starts(model)
    validate_env(cfg.env)
    if cfg.resume is not None:
        from tmem_agents.run_folder import RunFolder

        _, steps = RunFolder(Path(cfg.resume)).resume_point("resume")
        if cfg.total_timesteps <= steps:
            raise ConfigError(
                f"total_timesteps={cfg.total_timesteps}: the run has already trained {steps} timesteps; "
                "pass a larger total_timesteps to continue it"
            )


def validate_eval(cfg: DictConfig) -> None:
    """Check the values of a composed ``tmem-eval`` config; raise :class:`ConfigError` naming the key."""
    from tmem_agents.run_folder import RunFolder

    _check_declared(cfg)
    if OmegaConf.is_missing(cfg, "run_dir"):
        raise ConfigError("run_dir is required: tmem-eval run_dir=<run folder written by tmem-train>")
    _at_least(cfg, "", ("episodes", "n_envs", "video_episodes", "fps", "torch_threads"), 1)
    _one_of("video_format", cfg.video_format, VIDEO_FORMATS)
    _check_device("device", cfg.device)
    if cfg.seed is not None and cfg.seed < 0:
        _fail("seed", cfg.seed, "must be >= 0 or null")
    if Path(cfg.output).name != cfg.output or not cfg.output.endswith(".json"):
        _fail("output", cfg.output, "must be a file name ending in .json (it is written into the run folder)")
    if cfg.output == "summary.json":
        _fail("output", cfg.output, "is the training run's final evaluation; name another file (e.g. eval_final.json)")
    run = RunFolder(Path(cfg.run_dir))
    run.require_config("run_dir")
    run.model_path(cfg.checkpoint)


def compose(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose ``train`` or ``eval`` from the shipped configs with command-line ``overrides`` (no run folder)."""
    register_configs()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides)
