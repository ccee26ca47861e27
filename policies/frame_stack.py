"""The frame-stack baseline: the last ``k`` observations, carried as the state."""

from __future__ import annotations

import gymnasium as gym
import torch
from gymnasium import spaces
from stable_baselines3.common.preprocessing import get_flattened_obs_dim, is_image_space
from stable_baselines3.common.torch_layers import NatureCNN
from tensordict import TensorDict

from tmem_agents.policies.base import Obs, RecurrentFeaturesExtractor
from tmem_agents.policies.encoders import check_observation_space, mlp


class FrameStackExtractor(RecurrentFeaturesExtractor):
    """Stacks the last ``n_frames`` preprocessed observations (zeros before the episode start).

    Vector and dict observations are flattened and concatenated into an MLP; images are stacked on the
    channel axis into a Nature CNN. State: ``{"frames": (B, n_frames, *frame_shape)}``, oldest first.
    """

    def __init__(self, observation_space: gym.Space, features_dim: int = 64, n_frames: int = 4) -> None:
        super().__init__(observation_space, features_dim)
        check_observation_space(observation_space)
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        self.n_frames = n_frames
        self.image = not isinstance(observation_space, spaces.Dict) and is_image_space(
            observation_space, check_channels=False
        )
        if self.image:
            channels, height, width = observation_space.shape
            self.frame_shape = (channels, height, width)
            stacked = spaces.Box(0, 255, (channels * n_frames, height, width), dtype="uint8")
            self.encoder = NatureCNN(stacked, features_dim=features_dim)
        else:
            subspaces = (
                observation_space.spaces.values() if isinstance(observation_space, spaces.Dict) else [observation_space]
            )
            self.frame_shape = (int(sum(get_flattened_obs_dim(sub) for sub in subspaces)),)
            self.encoder = mlp(self.frame_shape[0] * n_frames, (features_dim, features_dim))

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> TensorDict:
        frames = torch.zeros(batch_size, self.n_frames, *self.frame_shape, device=device or self._device())
        return TensorDict({"frames": frames}, batch_size=[batch_size], device=device)

    def _frame(self, obs: Obs) -> torch.Tensor:
        if isinstance(obs, dict):
            return torch.cat([obs[key].flatten(1) for key in self._observation_space.spaces], dim=1)
        return obs if self.image else obs.flatten(1)

    def forward_step(self, obs: Obs, state: TensorDict) -> tuple[torch.Tensor, TensorDict]:
        frames = torch.cat([state["frames"][:, 1:], self._frame(obs).unsqueeze(1)], dim=1)
        stacked = frames.flatten(1, 2)
        features = self.encoder(stacked)
        return features, TensorDict({"frames": frames}, batch_size=state.batch_size, device=state.device)
