"""Stateless observation encoders for the baselines: MLP for vectors, Nature CNN for images, both for dicts."""

from __future__ import annotations

import gymnasium as gym
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, FlattenExtractor, NatureCNN
from torch import nn

SUPPORTED_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary, spaces.Dict)


def check_observation_space(observation_space: gym.Space) -> None:
    """Raise a clear error for observation spaces the extractors cannot encode."""
    if not isinstance(observation_space, SUPPORTED_SPACES):
        raise TypeError(
            f"unsupported observation space {observation_space}: the extractors take Box (vectors or images), "
            "Discrete, MultiDiscrete, MultiBinary or a Dict of those; wrap the env (e.g. "
            "gymnasium.wrappers.FlattenObservation) to turn it into one"
        )
    if isinstance(observation_space, spaces.Dict):
        for key, sub in observation_space.spaces.items():
            if isinstance(sub, spaces.Dict):
                raise TypeError(f"nested Dict observation under key {key!r} is not supported: flatten it first")
            check_observation_space(sub)


def base_encoder(observation_space: gym.Space, cnn_features: int = 256) -> BaseFeaturesExtractor:
    """SB3's own encoder for a space: Nature CNN for images, a combined one for dicts, else flatten."""
    check_observation_space(observation_space)
    if isinstance(observation_space, spaces.Dict):
        return CombinedExtractor(observation_space, cnn_output_dim=cnn_features)
    if is_image_space(observation_space, check_channels=False):
        return NatureCNN(observation_space, features_dim=cnn_features)
    return FlattenExtractor(observation_space)


def mlp(in_dim: int, hidden: tuple[int, ...], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """``Linear -> activation`` layers through ``hidden``."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), activation()]
        in_dim = width
    return nn.Sequential(*layers)
