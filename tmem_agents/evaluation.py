"""Evaluation episodes with the recurrent state carried, and the memory ablation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from tmem_agents.algos.memory_ppo import check_finite as require_finite


@dataclass
class EvalResult:
    """Per-episode returns and lengths, and the task metrics the envs report in ``info``."""

    returns: list[float]
    lengths: list[int]
    infos: dict[str, list[float]] = field(default_factory=dict)

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std_return(self) -> float:
        return float(np.std(self.returns))

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: mean and std of the return, episodes, and the mean of each info metric."""
        out = {
            "mean_return": self.mean_return,
            "std_return": self.std_return,
            "episodes": len(self.returns),
            "mean_length": float(np.mean(self.lengths)),
        }
        out.update({f"mean_{key}": float(np.mean(values)) for key, values in self.infos.items()})
        return out


INFO_METRICS = ("is_success", "final_distance")


def evaluate(
    model: BaseAlgorithm,
    env: VecEnv,
    n_episodes: int,
    deterministic: bool = True,
    memory_ablation: bool = False,
    check_finite: bool = True,
) -> EvalResult:
    """Roll out ``n_episodes`` with ``model.predict``, carrying the state between steps.

    ``memory_ablation=True`` resets the state at every step (as if every step began an episode): the drop
    from the normal score is what the memory contributes. Episodes are spread evenly over the envs so the
    result does not favour short episodes. ``check_finite`` stops at the first NaN or infinite
    observation with a :class:`~tmem_agents.algos.NonFiniteError` naming the env and the step.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    n_envs = env.num_envs
    targets = np.array([(n_episodes + i) // n_envs for i in range(n_envs)])
    counts = np.zeros(n_envs, dtype=int)
    current_return = np.zeros(n_envs)
    current_length = np.zeros(n_envs, dtype=int)
    result = EvalResult([], [])
    obs = env.reset()
    state = None
    episode_starts = np.ones(n_envs, dtype=bool)
    step = 0
    while (counts < targets).any():
        if check_finite:
            require_finite("observation", obs, step)
        step += 1
        starts = np.ones(n_envs, dtype=bool) if memory_ablation else episode_starts
        actions, state = model.predict(obs, state=state, episode_start=starts, deterministic=deterministic)
        obs, rewards, dones, infos = env.step(actions)
        current_return += rewards
        current_length += 1
        for i in np.flatnonzero(dones):
            if counts[i] < targets[i]:
                result.returns.append(float(current_return[i]))
                result.lengths.append(int(current_length[i]))
                for key in INFO_METRICS:
                    if key in infos[i]:
                        result.infos.setdefault(key, []).append(float(infos[i][key]))
                counts[i] += 1
            current_return[i] = 0.0
            current_length[i] = 0
        episode_starts = dones
    return result
