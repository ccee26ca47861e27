"""Training callbacks: atomic periodic checkpoints, and periodic evaluation that keeps the best model.

Both act at the start of a rollout, right after a policy update, so a checkpoint's parameters, optimizer
state and timestep counter belong together.
"""

from __future__ import annotations

import json
import logging
from abc import abstractmethod
from pathlib import Path

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, sync_envs_normalization

from tmem_agents.evaluation import evaluate
from tmem_agents.run_folder import RunFolder, atomic_write, normalization_path, write_json

log = logging.getLogger(__name__)


def save_model(model: BaseAlgorithm, path: Path) -> None:
    """Save ``model`` (and its VecNormalize statistics, if any) atomically at ``path``."""
    atomic_write(path, lambda tmp: model.save(tmp))
    vec_normalize = model.get_vec_normalize_env()
    if vec_normalize is not None:
        atomic_write(normalization_path(path), lambda tmp: vec_normalize.save(str(tmp)))


class _Periodic(BaseCallback):
    """Runs :meth:`_fire` at the first rollout start after every ``every`` timesteps."""

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = every
        self._last_mark = 0

    def _on_training_start(self) -> None:
        self._last_mark = self.model.num_timesteps // self.every

    def _on_rollout_start(self) -> None:
        mark = self.model.num_timesteps // self.every
        if mark > self._last_mark:
            self._last_mark = mark
            self._fire()

    def _on_step(self) -> bool:
        return True

    @abstractmethod
    def _fire(self) -> None:
        """The periodic action."""


class CheckpointCallback(_Periodic):
    """Every ``every`` timesteps, save ``checkpoints/step_<N>.zip`` atomically; keep the newest ``keep``."""

    def __init__(self, run: RunFolder, every: int, keep: int = 0) -> None:
        super().__init__(every)
        self.run = run
        self.keep = keep

    def _fire(self) -> None:
        path = self.run.checkpoint_path(self.model.num_timesteps)
        save_model(self.model, path)
        log.info("checkpoint %s", path)
        if self.keep:
            for _, old in self.run.list_checkpoints()[: -self.keep]:
                old.unlink(missing_ok=True)
                normalization_path(old).unlink(missing_ok=True)


class EvalCallback(_Periodic):
    """Every ``every`` timesteps, evaluate with the state carried and save the best model in ``best/``.

    Records ``eval/mean_return``, ``eval/std_return`` and the task metrics to the logger.
    """

    def __init__(self, run: RunFolder, eval_env: VecEnv, every: int, episodes: int, deterministic: bool) -> None:
        super().__init__(every)
        self.run = run
        self.eval_env = eval_env
        self.episodes = episodes
        self.deterministic = deterministic
        self.best_mean = float("-inf")

    def _on_training_start(self) -> None:
        super()._on_training_start()
        best = self.run.best / "eval.json"
        if best.is_file():
            self.best_mean = json.loads(best.read_text())["mean_return"]

    def _fire(self) -> None:
        sync_envs_normalization(self.training_env, self.eval_env)
        summary = evaluate(self.model, self.eval_env, self.episodes, self.deterministic).summary()
        for key, value in summary.items():
            self.logger.record(f"eval/{key}", value)
        log.info("eval at %d steps: mean return %.3f", self.model.num_timesteps, summary["mean_return"])
        if summary["mean_return"] > self.best_mean:
            self.best_mean = summary["mean_return"]
            save_model(self.model, self.run.best / "model.zip")
            write_json(self.run.best / "eval.json", {**summary, "timesteps": self.model.num_timesteps})
