"""Stateless observation encoders for the baselines: flatten for vectors, a CNN for images, both for dicts.

Images take SB3's Nature CNN or :class:`SpatialSoftmaxCNN`, whose features are the positions of learned
keypoints (``image_encoder``, one of :data:`IMAGE_ENCODERS`).
"""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import torch
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, FlattenExtractor, NatureCNN
from torch import nn

SUPPORTED_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary, spaces.Dict)
IMAGE_ENCODERS = ("nature_cnn", "spatial_softmax")


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
    shape = observation_space.shape or ()
    flat = isinstance(observation_space, spaces.Box) and not is_image_space(observation_space, check_channels=False)
    if flat and len(shape) == 3:
        warnings.warn(
            f"observation space {observation_space} is encoded as a flat vector of {math.prod(shape)} values, not as "
            "an image: SB3 takes a Box as an image only with dtype uint8 and bounds [0, 255]; give frames as uint8 "
            "to encode them with an image stem",
            stacklevel=2,
        )


class SpatialSoftmaxCNN(BaseFeaturesExtractor):
    """Images ``(B, C, H, W)`` -> ``keypoints`` conv maps ``(B, K, H / 4, W / 4)`` -> the softmax-weighted mean
    ``(x, y)`` of each map in ``[-1, 1]`` ``(B, 2K)`` -> ``Linear`` -> ``(B, features_dim)``.

    The spatial softmax of deep visuomotor policies (Levine et al., 2016): each map's softmax over its cells,
    sharpened by a learned temperature, says where its feature lies, so a small object's place is a linear
    function of the features from the start, where a CNN with a flattening linear layer must learn it cell by
    cell. Channels first, scaled to ``[0, 1]`` (SB3's preprocessing does both).
    """

    def __init__(self, observation_space: spaces.Box, features_dim: int = 256, keypoints: int = 32) -> None:
        super().__init__(observation_space, features_dim)
        if keypoints < 1:
            raise ValueError(f"keypoints must be >= 1, got {keypoints}")
        channels = observation_space.shape[0]
        self.cnn = nn.Sequential(
            nn.Conv2d(channels, 32, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, keypoints, kernel_size=3, stride=1, padding=1),
        )
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.linear = nn.Linear(2 * keypoints, features_dim)

    def keypoints(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> each map's expected position ``(B, K, 2)`` as ``(x, y)`` in ``[-1, 1]``."""
        maps = self.cnn(images)
        height, width = maps.shape[-2:]
        weights = torch.softmax(maps.flatten(2) / self.log_temperature.exp(), dim=-1).view_as(maps)
        xs = torch.linspace(-1.0, 1.0, width, device=maps.device, dtype=maps.dtype)
        ys = torch.linspace(-1.0, 1.0, height, device=maps.device, dtype=maps.dtype)
        return torch.stack(((weights.sum(2) * xs).sum(-1), (weights.sum(3) * ys).sum(-1)), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(self.keypoints(images).flatten(1))


def image_encoder(observation_space: spaces.Box, features_dim: int, kind: str = "nature_cnn") -> BaseFeaturesExtractor:
    """An image encoder of ``kind`` (one of :data:`IMAGE_ENCODERS`) for a channels-first image space."""
    if kind not in IMAGE_ENCODERS:
        raise ValueError(f"image_encoder must be one of {IMAGE_ENCODERS}, got {kind!r}")
    if not is_image_space_channels_first(observation_space):
        raise ValueError(
            f"image space of shape {observation_space.shape} is channels-last; the image encoders take "
            "channels-first (C, H, W) frames, as SB3's algorithms give them (VecTransposeImage): transpose the "
            "space and its frames"
        )
    encoder = NatureCNN if kind == "nature_cnn" else SpatialSoftmaxCNN
    return encoder(observation_space, features_dim=features_dim)


def base_encoder(
    observation_space: gym.Space, cnn_features: int = 256, image_kind: str = "nature_cnn"
) -> BaseFeaturesExtractor:
    """SB3's encoder for a space: an image encoder of ``image_kind`` for images (each image of a dict too,
    beside its flattened vectors), else flatten."""
    check_observation_space(observation_space)
    if isinstance(observation_space, spaces.Dict):
        encoder = CombinedExtractor(observation_space, cnn_output_dim=cnn_features)
        if image_kind != "nature_cnn":  # SB3 builds a Nature CNN per image; swap in the other encoder
            for key, sub in observation_space.spaces.items():
                if isinstance(encoder.extractors[key], NatureCNN):
                    encoder.extractors[key] = image_encoder(sub, cnn_features, image_kind)
        return encoder
    if is_image_space(observation_space, check_channels=False):
        return image_encoder(observation_space, cnn_features, image_kind)
    return FlattenExtractor(observation_space)


def image_encoders(encoder: nn.Module) -> dict[str | None, BaseFeaturesExtractor]:
    """The image encoders inside an encoder from :func:`base_encoder`, by observation key (``None`` for an image
    observation); each maps ``(B, C, H, W)`` to ``(B, features_dim)``. Empty where no image is encoded."""
    if isinstance(encoder, CombinedExtractor):
        return {key: sub for key, sub in encoder.extractors.items() if isinstance(sub, (NatureCNN, SpatialSoftmaxCNN))}
    return {None: encoder} if isinstance(encoder, (NatureCNN, SpatialSoftmaxCNN)) else {}


def mlp(in_dim: int, hidden: tuple[int, ...], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """``Linear -> activation`` layers through ``hidden``."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), activation()]
        in_dim = width
    return nn.Sequential(*layers)
