"""The Tensor Memory feature extractor: tokens through pre-norm blocks that share one Tensor Memory."""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import torch
from tensordict import TensorDict
from tmem_agents.policies.base import Obs, RecurrentFeaturesExtractor
from tmem_agents.policies.tokenizers import make_tokenizer
from torch import nn

from tmem_agents.memory import MemoryBlock, TensorMemory, TensorMemoryConfig
from tmem_agents.transformer import PreNormBlock

# Sized for CPU training of small control tasks; the module's own defaults (8x8x8, C=16) suit GPUs.
EXTRACTOR_MEMORY_DEFAULTS: dict[str, Any] = {"grid": (4, 4, 4), "channels": 8}


class TensorMemoryExtractor(RecurrentFeaturesExtractor):
    """obs -> tokens ``(B, N, d)`` -> ``n_layers`` x [pre-norm block + shared Tensor Memory] -> mean pool ->
    ``Linear -> ReLU`` -> features ``(B, features_dim)``.

    The whole observation is one chunk by default (``chunk_size = N``), so every block makes one memory
    step per env step. State: the memory's ``{"h", "c"}``, each ``(B, C, D, H, W)``.

    Args:
        memory: a :class:`TensorMemoryConfig` or a dict of its fields (defaults: 4x4x4 grid, 8 channels).
    """

    def __init__(
        self,
        observation_space: gym.Space,
        features_dim: int = 64,
        token_dim: int = 32,
        n_layers: int = 1,
        heads: int = 2,
        group_size: int = 4,
        memory: TensorMemoryConfig | dict[str, Any] | None = None,
    ) -> None:
        super().__init__(observation_space, features_dim)
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.tokenizer = make_tokenizer(observation_space, token_dim, group_size)
        if not isinstance(memory, TensorMemoryConfig):
            fields = {**EXTRACTOR_MEMORY_DEFAULTS, "chunk_size": self.tokenizer.num_tokens, **(memory or {})}
            known = {f.name for f in dataclasses.fields(TensorMemoryConfig)}
            unknown = sorted(set(fields) - known)
            if unknown:
                raise ValueError(f"unknown memory option(s) {unknown}; valid: {sorted(known)}")
            memory = TensorMemoryConfig(**fields)
        self.memory = TensorMemory(memory, token_dim)
        self.layers = nn.ModuleList(MemoryBlock(PreNormBlock(token_dim, heads), self.memory) for _ in range(n_layers))
        self.norm = nn.LayerNorm(token_dim)
        self.head = nn.Sequential(nn.Linear(token_dim, features_dim), nn.ReLU())

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> TensorDict:
        return self.memory.init_state(batch_size, device=device or self._device())

    def forward_step(self, obs: Obs, state: TensorDict) -> tuple[torch.Tensor, TensorDict]:
        x = self.tokenizer(obs)
        for layer in self.layers:
            x, state = layer(x, state)
        return self.head(self.norm(x).mean(dim=1)), state
