"""Observations to tokens ``(B, N, d)`` for the Tensor Memory extractor.

* vectors: consecutive groups of ``group_size`` dims, each group with its own projection;
* images, ``image_stem="nature_cnn"``: SB3's Nature CNN, the baselines' encoder, its features cut into
  ``image_tokens`` tokens; ``"spatial_softmax"``: the same with the keypoint encoder
  (:class:`~tmem_agents.policies.encoders.SpatialSoftmaxCNN`); ``image_stem="patches"``: a stride-2 conv stem
  down to at most 8x8 cells, one token per cell, plus learned positions; ``image_stem="cells"``: the Nature
  CNN's convolutions, one token per cell of their last map, each with its place in the image; ``"auto"`` (the
  default): the Nature CNN where the image is at least 36x36 pixels, the patches below;
* dicts: each key tokenized, plus a learned key embedding, all concatenated.

A tokenizer whose tokens stand for places in the observation gives them as ``places`` ``(N, 3)``: each token's
``(x, y, 0)`` in ``[-1, 1]`` (the image's width and height), NaN for a token without a place
(:func:`token_places`); the Tensor Memory can write each token at its place (``memory.per_token``).
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.preprocessing import get_flattened_obs_dim, is_image_space, is_image_space_channels_first
from torch import nn

from tmem_agents.policies.encoders import check_observation_space, image_encoder

MAX_IMAGE_GRID = 8
IMAGE_STEMS = ("auto", "nature_cnn", "spatial_softmax", "patches", "cells")
NATURE_CNN_MIN_SIZE = 36


def image_chw(observation_space: spaces.Box) -> tuple[int, int, int]:
    """``(C, H, W)`` of an image space, channels first or last."""
    shape = observation_space.shape
    return shape if is_image_space_channels_first(observation_space) else (shape[2], shape[0], shape[1])


def has_image(observation_space: gym.Space) -> bool:
    """Whether a space is an image, or a dict with an image among its entries."""
    if isinstance(observation_space, spaces.Dict):
        return any(has_image(sub) for sub in observation_space.spaces.values())
    return is_image_space(observation_space, check_channels=False)


class VectorTokenizer(nn.Module):
    """``(B, obs_dim)`` -> ``(B, ceil(obs_dim / group_size), d)``; zero-pads the last group.

    The biases start at zero, so a group that reads all zeros (a blank or occluded sensor) starts as a zero
    token, which the Tensor Memory then writes as nothing (:meth:`TensorMemory.reset_write_heads`).
    """

    def __init__(self, obs_dim: int, token_dim: int, group_size: int = 4) -> None:
        super().__init__()
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.obs_dim = obs_dim
        self.group_size = min(group_size, obs_dim)
        self.num_tokens = math.ceil(obs_dim / self.group_size)
        bound = 1.0 / math.sqrt(self.group_size)
        self.weight = nn.Parameter(torch.empty(self.num_tokens, self.group_size, token_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(self.num_tokens, token_dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        flat = obs.reshape(obs.shape[0], -1)
        flat = F.pad(flat, (0, self.num_tokens * self.group_size - self.obs_dim))
        groups = flat.view(-1, self.num_tokens, self.group_size)
        return torch.einsum("bng,ngd->bnd", groups, self.weight) + self.bias


class ConvCellTokenizer(nn.Module):
    """Images ``(B, C, H, W)`` (or HWC, transposed here) -> a conv ``stem`` -> a token per cell of its last map
    ``(B, h' * w', d)``, plus learned positions; ``map_size`` is ``(h', w')``."""

    def __init__(self, observation_space: spaces.Box, token_dim: int, stem: nn.Module) -> None:
        super().__init__()
        self.channels_first = is_image_space_channels_first(observation_space)
        self.stem = stem
        with torch.no_grad():
            self.map_size = tuple(self.stem(torch.zeros(1, *image_chw(observation_space))).shape[2:])
        self.num_tokens = self.map_size[0] * self.map_size[1]
        self.position = nn.Parameter(torch.randn(self.num_tokens, token_dim) * 0.02)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.channels_first:
            obs = obs.permute(0, 3, 1, 2)
        return self.stem(obs).flatten(2).transpose(1, 2) + self.position


class ImageTokenizer(ConvCellTokenizer):
    """Images -> patch tokens ``(B, h' * w', d)`` with positions: stride-2 convolutions down to at most 8x8 cells."""

    def __init__(self, observation_space: spaces.Box, token_dim: int) -> None:
        channels, height, width = image_chw(observation_space)
        layers: list[nn.Module] = []
        in_ch = channels
        while max(height, width) > MAX_IMAGE_GRID:
            layers += [nn.Conv2d(in_ch, token_dim, kernel_size=4, stride=2, padding=1), nn.ReLU()]
            in_ch = token_dim
            height, width = height // 2, width // 2  # kernel 4, stride 2, padding 1 halves, rounding down
        layers += [nn.Conv2d(in_ch, token_dim, kernel_size=1)]
        super().__init__(observation_space, token_dim, nn.Sequential(*layers))


class CNNTokenizer(nn.Module):
    """Images ``(B, C, H, W)`` (or HWC, transposed here) -> an image encoder -> ``num_tokens`` tokens ``(B, n, d)``.

    ``kind="nature_cnn"``: SB3's Nature CNN, whose last linear layer reads every cell of its final feature map,
    so where a small object lies reaches every feature, as it does for the baselines that use the same
    encoder; the patch stem's tokens carry it only in which token lights up. ``kind="spatial_softmax"``:
    :class:`~tmem_agents.policies.encoders.SpatialSoftmaxCNN`, whose features are linear in its keypoints'
    positions. The ``n * d`` features are cut into ``n`` tokens of ``d``.
    """

    def __init__(
        self, observation_space: spaces.Box, token_dim: int, num_tokens: int = 8, kind: str = "nature_cnn"
    ) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"image_tokens must be >= 1, got {num_tokens}")
        self.channels_first = is_image_space_channels_first(observation_space)
        shape = image_chw(observation_space)
        if not self.channels_first:
            observation_space = spaces.Box(0, 255, shape, observation_space.dtype)
        if kind == "nature_cnn" and min(shape[1:]) < NATURE_CNN_MIN_SIZE:
            raise ValueError(
                f"image_stem='nature_cnn' needs images of at least {NATURE_CNN_MIN_SIZE}x{NATURE_CNN_MIN_SIZE} "
                f"pixels, got {shape[1]}x{shape[2]}; use image_stem='patches' for smaller images"
            )
        self.num_tokens = num_tokens
        self.token_dim = token_dim
        self.cnn = image_encoder(observation_space, num_tokens * token_dim, kind)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.channels_first:
            obs = obs.permute(0, 3, 1, 2)
        return self.cnn(obs).view(obs.shape[0], self.num_tokens, self.token_dim)


class CellTokenizer(ConvCellTokenizer):
    """Images -> the Nature CNN's three convolutions -> a token per cell of their last map ``(B, h' * w', d)`` (a
    1x1 convolution of its 64 channels, plus learned positions).

    The Nature CNN's last linear layer mixes every cell into every feature; here each cell stays a token of its
    own, with its place in the image (``places``, the cell's centre), so a small object reaches the token of
    the cell it lies in. A 64x64 frame gives a 4x4 map, 16 tokens.
    """

    def __init__(self, observation_space: spaces.Box, token_dim: int) -> None:
        chw = image_chw(observation_space)
        if min(chw[1:]) < NATURE_CNN_MIN_SIZE:
            raise ValueError(
                f"image_stem='cells' needs images of at least {NATURE_CNN_MIN_SIZE}x{NATURE_CNN_MIN_SIZE} pixels, "
                f"got {chw[1]}x{chw[2]}; use image_stem='patches' for smaller images"
            )
        stem = nn.Sequential(
            nn.Conv2d(chw[0], 32, kernel_size=8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1),
            nn.ReLU(),
            nn.Conv2d(64, token_dim, kernel_size=1),
        )
        super().__init__(observation_space, token_dim, stem)
        ys, xs = (torch.arange(n, dtype=torch.float32).add(0.5).mul(2.0 / n).sub(1.0) for n in self.map_size)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        places = torch.stack((grid_x.flatten(), grid_y.flatten(), torch.zeros(self.num_tokens)), dim=-1)
        self.register_buffer("places", places, persistent=False)


def token_places(tokenizer: nn.Module) -> torch.Tensor | None:
    """Each token's place ``(N, 3)`` in ``[-1, 1]``, NaN where a token has none; ``None`` when no token has one."""
    places = getattr(tokenizer, "places", None)
    if isinstance(tokenizer, DictTokenizer):
        parts = {key: token_places(part) for key, part in tokenizer.parts.items()}
        if any(part is not None for part in parts.values()):
            places = torch.cat(
                [
                    torch.full((tokenizer.parts[key].num_tokens, 3), float("nan")) if part is None else part
                    for key, part in parts.items()
                ]
            )
    return None if places is None else places.detach().cpu()


class DictTokenizer(nn.Module):
    """Each key tokenized on its own, tagged with a learned key embedding, then concatenated."""

    def __init__(self, observation_space: spaces.Dict, token_dim: int, group_size: int = 4, **image: Any) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(
            {key: make_tokenizer(sub, token_dim, group_size, **image) for key, sub in observation_space.spaces.items()}
        )
        self.key_embedding = nn.Parameter(torch.randn(len(self.parts), token_dim) * 0.02)
        self.num_tokens = sum(part.num_tokens for part in self.parts.values())

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = [part(obs[key]) + self.key_embedding[i] for i, (key, part) in enumerate(self.parts.items())]
        return torch.cat(tokens, dim=1)


def make_tokenizer(
    observation_space: gym.Space,
    token_dim: int,
    group_size: int = 4,
    image_stem: str = "auto",
    image_tokens: int = 8,
) -> nn.Module:
    """The tokenizer for a space; each has ``num_tokens`` and maps a preprocessed batch to ``(B, N, d)``.

    ``image_stem`` (one of :data:`IMAGE_STEMS`) picks the images' tokenizer; ``image_tokens`` is the number of
    tokens of the ``nature_cnn`` and ``spatial_softmax`` stems (``cells`` and ``patches`` make one per cell).
    Supervised, the Nature CNN finds a small object in a 64x64 frame where the patch stem's averaged tokens do
    not, and it trains several times faster (``scripts/image_stem_check.py``).
    """
    check_observation_space(observation_space)
    if image_stem not in IMAGE_STEMS:
        raise ValueError(f"image_stem must be one of {IMAGE_STEMS}, got {image_stem!r}")
    if isinstance(observation_space, spaces.Dict):
        return DictTokenizer(observation_space, token_dim, group_size, image_stem=image_stem, image_tokens=image_tokens)
    if is_image_space(observation_space, check_channels=False):
        if image_stem == "auto":
            small = min(image_chw(observation_space)[1:]) < NATURE_CNN_MIN_SIZE
            image_stem = "patches" if small else "nature_cnn"
        if image_stem == "patches":
            return ImageTokenizer(observation_space, token_dim)
        if image_stem == "cells":
            return CellTokenizer(observation_space, token_dim)
        return CNNTokenizer(observation_space, token_dim, image_tokens, image_stem)
    return VectorTokenizer(get_flattened_obs_dim(observation_space), token_dim, group_size)
