"""The memoryless baseline: SB3's encoder and an MLP, no state."""

from __future__ import annotations

import gymnasium as gym
import torch
from tensordict import TensorDict
from torch import nn

from tmem_agents.policies.base import Obs, RecurrentFeaturesExtractor, map_obs
from tmem_agents.policies.encoders import base_encoder, image_encoders, mlp


class StatelessExtractor(RecurrentFeaturesExtractor):
    """No memory: SB3's encoder (flatten, an image encoder or combined) then ``Linear -> ReLU`` to ``features_dim``.

    Its state is empty, and its sequence form runs all ``T * B`` observations in one batch.
    """

    def __init__(self, observation_space: gym.Space, features_dim: int = 64, image_encoder: str = "nature_cnn") -> None:
        super().__init__(observation_space, features_dim)
        self.encoder = base_encoder(observation_space, image_kind=image_encoder)
        self.head = mlp(self.encoder.features_dim, (features_dim,))

    def image_encoders(self) -> dict[str | None, nn.Module]:
        return image_encoders(self.encoder)

    def forward_step(self, obs: Obs, state: TensorDict) -> tuple[torch.Tensor, TensorDict]:
        return self.head(self.encoder(obs)), state

    def sequence(self, obs: Obs, state: TensorDict, episode_starts: torch.Tensor) -> tuple[torch.Tensor, TensorDict]:
        steps, batch = episode_starts.shape
        flat = map_obs(lambda x: x.reshape(steps * batch, *x.shape[2:]), obs)
        features, state = self.forward_step(flat, state)
        return features.view(steps, batch, -1), state
