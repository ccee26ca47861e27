"""Rollout buffer that keeps the recurrent state once per chunk of ``bptt_len`` steps, not once per step."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from tensordict import TensorDict


class SequenceBatch(NamedTuple):
    """A minibatch of ``S`` whole chunks, time-major: every tensor is ``(T, S, ...)``, ``state`` is ``[S]``."""

    observations: torch.Tensor | dict[str, torch.Tensor]
    actions: torch.Tensor
    old_values: torch.Tensor
    old_log_prob: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    episode_starts: torch.Tensor
    mask: torch.Tensor
    state: TensorDict


def _obs_tensor(space: spaces.Space, leading: tuple[int, ...], device: torch.device) -> torch.Tensor:
    dtype = torch.uint8 if space.dtype == np.uint8 else torch.float32
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        dtype = torch.long if not isinstance(space, spaces.MultiBinary) else torch.float32
    return torch.zeros(*leading, *space.shape, dtype=dtype, device=device)


class RecurrentRolloutBuffer:
    """Time-major storage of one rollout: ``(n_steps, n_envs)`` per field, plus the state at every chunk start.

    Chunk ``k`` covers steps ``[k L, (k+1) L)`` with ``L = bptt_len``; its state ``states[k]`` is the state the
    policy carried into step ``k L`` (before any episode-start reset). ``n_envs * ceil(n_steps / L)`` states
    are held, where per-step storage would hold ``n_envs * n_steps``. A last chunk shorter than ``L`` is
    padded and masked out of the losses.
    """

    def __init__(
        self,
        n_steps: int,
        n_envs: int,
        bptt_len: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: torch.device,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
    ) -> None:
        self.n_steps, self.n_envs, self.bptt_len = n_steps, n_envs, bptt_len
        self.n_chunks = math.ceil(n_steps / bptt_len)
        self.observation_space, self.action_space = observation_space, action_space
        self.device = device
        self.gamma, self.gae_lambda = gamma, gae_lambda
        self.states: TensorDict | None = None
        self.reset()

    def reset(self) -> None:
        leading = (self.n_steps, self.n_envs)
        space = self.observation_space
        if isinstance(space, spaces.Dict):
            obs = {key: _obs_tensor(sub, leading, self.device) for key, sub in space.spaces.items()}
        else:
            obs = {"obs": _obs_tensor(space, leading, self.device)}
        discrete = isinstance(self.action_space, (spaces.Discrete, spaces.MultiDiscrete))
        action_dtype = torch.long if discrete else torch.float32
        self.data = TensorDict(
            {
                "observations": TensorDict(obs, batch_size=leading),
                "actions": torch.zeros(*leading, *self.action_space.shape, dtype=action_dtype, device=self.device),
                **{
                    key: torch.zeros(leading, device=self.device)
                    for key in ("rewards", "episode_starts", "values", "log_probs", "advantages", "returns")
                },
            },
            batch_size=leading,
            device=self.device,
        )
        self.pos = 0
        self.full = False

    def add(
        self,
        obs: np.ndarray | dict[str, np.ndarray],
        actions: np.ndarray,
        rewards: np.ndarray,
        episode_starts: np.ndarray,
        values: torch.Tensor,
        log_probs: torch.Tensor,
        state: TensorDict,
    ) -> None:
        """Store step ``pos`` for every env; ``state`` is the state carried into this step."""
        if self.pos % self.bptt_len == 0:
            if self.states is None:
                self.states = state.expand(self.n_chunks, *state.batch_size).clone()
            self.states[self.pos // self.bptt_len] = state
        step = self.data[self.pos]
        obs = obs if isinstance(obs, dict) else {"obs": obs}
        for key, value in obs.items():
            step["observations", key].copy_(torch.as_tensor(np.asarray(value)).reshape(step["observations", key].shape))
        step["actions"].copy_(torch.as_tensor(np.asarray(actions)).reshape(step["actions"].shape))
        step["rewards"].copy_(torch.as_tensor(np.asarray(rewards, dtype=np.float32)))
        step["episode_starts"].copy_(torch.as_tensor(np.asarray(episode_starts, dtype=np.float32)))
        step["values"].copy_(values.flatten())
        step["log_probs"].copy_(log_probs.flatten())
        self.pos += 1
        self.full = self.pos == self.n_steps

    def compute_returns_and_advantage(self, last_values: torch.Tensor, dones: np.ndarray) -> None:
        """GAE(lambda) as in SB3; ``dones`` are the episode starts of the step after the rollout."""
        data = self.data
        next_values = last_values.flatten()
        next_non_terminal = 1.0 - torch.as_tensor(np.asarray(dones, dtype=np.float32), device=self.device)
        last_gae = torch.zeros(self.n_envs, device=self.device)
        for step in reversed(range(self.n_steps)):
            delta = data["rewards"][step] + self.gamma * next_values * next_non_terminal - data["values"][step]
            last_gae = delta + self.gamma * self.gae_lambda * next_non_terminal * last_gae
            data["advantages"][step] = last_gae
            next_values = data["values"][step]
            next_non_terminal = 1.0 - data["episode_starts"][step]
        data["returns"] = data["advantages"] + data["values"]

    def _chunked(self) -> TensorDict:
        """Rollout as ``(L, n_chunks * n_envs)`` sequences (chunk-major), with a validity mask."""
        padded_steps = self.n_chunks * self.bptt_len
        data = self.data.clone(recurse=False)
        data["mask"] = torch.ones(self.n_steps, self.n_envs, device=self.device)
        if padded_steps > self.n_steps:
            pad = data[:1].expand(padded_steps - self.n_steps, self.n_envs).clone().zero_()
            pad["episode_starts"] = torch.ones_like(pad["episode_starts"])
            data = torch.cat([data, pad], dim=0)
        data = data.reshape(self.n_chunks, self.bptt_len, self.n_envs)
        return data.permute(1, 0, 2).reshape(self.bptt_len, self.n_chunks * self.n_envs)

    def sequences(self, sequences_per_batch: int, generator: torch.Generator | None = None) -> Iterator[SequenceBatch]:
        """Minibatches of whole chunks in random order."""
        if not self.full or self.states is None:
            raise RuntimeError(f"the rollout holds {self.pos} of {self.n_steps} steps; fill it before training")
        data = self._chunked()
        states = self.states.reshape(self.n_chunks * self.n_envs)
        order = torch.randperm(self.n_chunks * self.n_envs, generator=generator).to(self.device)
        for start in range(0, len(order), sequences_per_batch):
            index = order[start : start + sequences_per_batch]
            batch = data[:, index]
            obs = batch["observations"]
            observations = obs["obs"] if not isinstance(self.observation_space, spaces.Dict) else obs.to_dict()
            yield SequenceBatch(
                observations=observations,
                actions=batch["actions"],
                old_values=batch["values"],
                old_log_prob=batch["log_probs"],
                advantages=batch["advantages"],
                returns=batch["returns"],
                episode_starts=batch["episode_starts"],
                mask=batch["mask"],
                state=states[index],
            )

    def state_numel(self) -> int:
        """Numbers held for recurrent states in this buffer."""
        return (
            0
            if self.states is None
            else sum(t.numel() for t in self.states.values(include_nested=True, leaves_only=True))
        )
