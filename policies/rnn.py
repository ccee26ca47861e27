"""LSTM and GRU baselines on the recurrent-extractor protocol."""

from __future__ import annotations

import gymnasium as gym
import torch
from tensordict import TensorDict
from torch import nn

from tmem_agents.gate_init import chrono_biases
from tmem_agents.policies.base import Obs, RecurrentFeaturesExtractor, map_obs
from tmem_agents.policies.encoders import base_encoder, image_encoders
from tmem_agents.state import reset_state


class RNNExtractor(RecurrentFeaturesExtractor):
    """SB3's encoder, then a one-layer LSTM or GRU of ``features_dim`` units; the features are its output.

    Images are encoded by ``image_encoder`` (:data:`~tmem_agents.policies.encoders.IMAGE_ENCODERS`).

    State: ``{"h": (B, F)}`` (GRU) or ``{"h", "c"}`` (LSTM). The sequence form encodes all ``T * B``
    observations in one batch and runs the cell through time, zeroing the state where episodes start.
    """

    cell_type = "lstm"

    def __init__(self, observation_space: gym.Space, features_dim: int = 64, image_encoder: str = "nature_cnn") -> None:
        super().__init__(observation_space, features_dim)
        self.encoder = base_encoder(observation_space, image_kind=image_encoder)
        rnn = nn.LSTM if self.cell_type == "lstm" else nn.GRU
        self.rnn = rnn(int(self.encoder.features_dim), features_dim)  # SB3 sums dict sizes as numpy ints
        self.keys = ("h", "c") if self.cell_type == "lstm" else ("h",)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> TensorDict:
        zeros = torch.zeros(batch_size, self.features_dim, device=device or self._device())
        return TensorDict({key: zeros.clone() for key in self.keys}, batch_size=[batch_size], device=device)

    def _run(self, encoded: torch.Tensor, state: TensorDict) -> tuple[torch.Tensor, TensorDict]:
        """``encoded (T, B, E)`` through the cell from ``state`` (no resets inside)."""
        hidden = tuple(state[key].unsqueeze(0).contiguous() for key in self.keys)
        out, hidden = self.rnn(encoded, hidden if self.cell_type == "lstm" else hidden[0])
        hidden = hidden if self.cell_type == "lstm" else (hidden,)
        new = TensorDict(
            {key: h.squeeze(0) for key, h in zip(self.keys, hidden, strict=True)}, batch_size=state.batch_size
        )
        return out, new

    def image_encoders(self) -> dict[str | None, nn.Module]:
        return image_encoders(self.encoder)

    def forward_step(self, obs: Obs, state: TensorDict) -> tuple[torch.Tensor, TensorDict]:
        out, state = self._run(self.encoder(obs).unsqueeze(0), state)
        return out.squeeze(0), state

    def sequence(self, obs: Obs, state: TensorDict, episode_starts: torch.Tensor) -> tuple[torch.Tensor, TensorDict]:
        steps, batch = episode_starts.shape
        encoded = self.encoder(map_obs(lambda x: x.reshape(steps * batch, *x.shape[2:]), obs)).view(steps, batch, -1)
        # run the fused cell over the stretches between episode starts
        starts = [0, *(episode_starts[1:].any(dim=1).nonzero().flatten() + 1).tolist(), steps]
        outputs = []
        for begin, end in zip(starts[:-1], starts[1:], strict=True):
            out, state = self._run(encoded[begin:end], reset_state(state, episode_starts[begin]))
            outputs.append(out)
        return torch.cat(outputs), state


class LSTMExtractor(RNNExtractor):
    """LSTM baseline (state ``h``, ``c``).

    Args:
        forget_bias: initial bias of the forget gate (the sum of the cell's two biases), e.g. 1 to 3 for
            long delays; ``None`` keeps PyTorch's initialisation.
        forget_timescale_max: instead of ``forget_bias``, a number ``T >= 2`` of steps: the units' forget and
            input gates start spread over timescales from ``T`` down to 2 steps (a log-spaced chrono start,
            :func:`~tmem_agents.gate_init.chrono_biases`); ``None``: no spread.
    """

    cell_type = "lstm"

    def __init__(
        self,
        observation_space: gym.Space,
        features_dim: int = 64,
        forget_bias: float | None = None,
        image_encoder: str = "nature_cnn",
        forget_timescale_max: float | None = None,
    ) -> None:
        if forget_bias is not None and forget_timescale_max is not None:
            raise ValueError(
                "LSTMExtractor takes forget_bias (one start for every unit) or forget_timescale_max (starts spread "
                f"over timescales), not both; got {forget_bias!r} and {forget_timescale_max!r}"
            )
        super().__init__(observation_space, features_dim, image_encoder)
        starts: dict[int, torch.Tensor] = {}  # gate index in PyTorch's (i, f, g, o) -> its start
        if forget_bias is not None:
            starts[1] = torch.full((features_dim,), float(forget_bias))
        if forget_timescale_max is not None:
            starts[0], starts[1] = chrono_biases(features_dim, forget_timescale_max)
        with torch.no_grad():
            for bias in (self.rnn.bias_ih_l0, self.rnn.bias_hh_l0):
                for gate, start in starts.items():
                    bias[gate * features_dim : (gate + 1) * features_dim] = start / 2


class GRUExtractor(RNNExtractor):
    """GRU baseline (state ``h``)."""

    cell_type = "gru"
