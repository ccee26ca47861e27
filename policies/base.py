"""The recurrent feature-extractor protocol shared by every memory and baseline.

An extractor maps observations and a state to features and a new state:

* ``initial_state(batch_size)`` -> ``TensorDict(batch_size=[B])`` (empty for stateless extractors);
* ``step(obs, state, episode_starts)`` -> ``(features (B, F), state)``: one env step, zeroing the
  state of envs whose episode starts here;
* ``sequence(obs, state, episode_starts)`` -> ``(features (T, B, F), state)``: ``T`` steps from ``state``,
  for training on stored chunks.

Observations arrive preprocessed by SB3 (images scaled to ``[0, 1]``, discrete spaces one-hot).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from tensordict import TensorDict
from torch import nn

from tmem_agents.state import reset_state

Obs = torch.Tensor | dict[str, torch.Tensor]


def map_obs(fn: Callable[[torch.Tensor], torch.Tensor], obs: Obs) -> Obs:
    """Apply ``fn`` to an observation tensor, or to each entry of a dict observation."""
    if isinstance(obs, dict):
        return {key: fn(value) for key, value in obs.items()}
    return fn(obs)


def obs_batch_size(obs: Obs) -> int:
    """Leading dimension of an observation batch."""
    return next(iter(obs.values())).shape[0] if isinstance(obs, dict) else obs.shape[0]


class RecurrentFeaturesExtractor(BaseFeaturesExtractor):
    """Base class of the extractors: subclasses implement ``initial_state`` and ``forward_step``.

    ``forward(obs)`` (SB3's stateless call) runs one step from the initial state.
    """

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> TensorDict:
        """State at an episode start for ``batch_size`` envs."""
        return TensorDict({}, batch_size=[batch_size], device=device)

    def restore_initialisation(self) -> None:
        """Give back the parts of the extractor whose own start SB3's orthogonal initialisation overwrites.

        ``ActorCriticPolicy`` redraws every ``nn.Linear`` of the extractor orthogonally (gain ``sqrt(2)``, zero
        biases); :class:`~tmem_agents.policies.recurrent_policy.RecurrentActorCriticPolicy` calls this right
        after. Default: nothing.
        """

    def apply_sb3_initialisation(self, restore: bool = True) -> None:
        """Draw the initialisation an ``ActorCriticPolicy`` with ``ortho_init`` gives its extractor (every
        ``nn.Linear`` and conv orthogonal with gain ``sqrt(2)``, zero biases), then, with ``restore``,
        :meth:`restore_initialisation` as :class:`~tmem_agents.policies.recurrent_policy.RecurrentActorCriticPolicy`
        does: the extractor as a policy starts it, for use outside one."""
        self.apply(functools.partial(BasePolicy.init_weights, gain=math.sqrt(2)))
        if restore:
            self.restore_initialisation()

    def image_encoders(self) -> dict[str | None, nn.Module]:
        """The modules that encode each image of the observation into a vector ``(B, C, H, W)`` -> ``(B, E)`` (with
        ``features_dim`` E), by observation key (``None`` for an image observation). Default: none."""
        return {}

    def forward_step(self, obs: Obs, state: TensorDict) -> tuple[torch.Tensor, TensorDict]:
        """One step from a state already reset where episodes start: obs ``(B, ...)`` -> features ``(B, F)``."""
        raise NotImplementedError

    def step(self, obs: Obs, state: TensorDict, episode_starts: torch.Tensor) -> tuple[torch.Tensor, TensorDict]:
        """One env step: obs ``(B, ...)``, state ``[B]``, episode_starts ``(B,)`` -> (features ``(B, F)``, state)."""
        return self.forward_step(obs, reset_state(state, episode_starts))

    def sequence(self, obs: Obs, state: TensorDict, episode_starts: torch.Tensor) -> tuple[torch.Tensor, TensorDict]:
        """``T`` steps: obs ``(T, B, ...)``, state ``[B]``, episode_starts ``(T, B)``.

        Returns (features ``(T, B, F)``, state).
        """
        features = []
        for t in range(episode_starts.shape[0]):
            out, state = self.step(map_obs(lambda x, t=t: x[t], obs), state, episode_starts[t])
            features.append(out)
        return torch.stack(features), state

    def episodes(self, obs: Obs) -> torch.Tensor:
        """Features ``(T, B, F)`` of ``B`` whole episodes, obs ``(T, B, ...)`` starting at ``t = 0``, run from the
        initial state."""
        steps, batch = obs_batch_size(obs), obs_batch_size(map_obs(lambda x: x[0], obs))
        starts = torch.zeros(steps, batch, device=self._device())
        starts[0] = 1.0
        features, _ = self.sequence(obs, self.initial_state(batch, self._device()), starts)
        return features

    def forward(self, observations: Obs) -> torch.Tensor:
        batch = obs_batch_size(observations)
        features, _ = self.forward_step(observations, self.initial_state(batch, self._device()))
        return features

    def _device(self) -> torch.device:
        return next(self.parameters()).device
