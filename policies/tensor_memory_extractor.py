"""The Tensor Memory feature extractor: tokens through pre-norm blocks that share one Tensor Memory."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from tensordict import TensorDict
from torch import nn

from tmem_agents.memory import MemoryBlock, TensorMemory, TensorMemoryConfig
from tmem_agents.policies.base import Obs, RecurrentFeaturesExtractor, map_obs
from tmem_agents.policies.tokenizers import CNNTokenizer, DictTokenizer, has_image, make_tokenizer, token_places
from tmem_agents.state import reset_state
from tmem_agents.transformer import PreNormBlock

# Sized for CPU training of small control tasks; the module's own defaults (8x8x8, C=16) suit GPUs.
# Trained from scratch by PPO, the memory starts open and holding (docs/results.md): the fusion gate at
# sigmoid(0) = 0.5 and the forget gate's bias at 3 (the reference's sigmoid(-2) and 0 left delayed recall
# at chance), only the cells a write reaches take their update, writes start quiet (strength sigmoid(-2))
# and the read is layer-normed. With the memory's own write heads (restore_initialisation) this setting
# learns cue recall in about half the samples of the earlier defaults (8 channels, forget bias 1). The
# memory writes from the tokens as the tokenizer makes them (write_from="block_input"): a blank step then
# writes nothing, where the layer-normed tokens wrote a full-size blank at every step that buried the cue
# of long cue recall.
EXTRACTOR_MEMORY_DEFAULTS: dict[str, Any] = {
    "grid": (4, 4, 4),
    "channels": 16,
    "gate_init": 0.0,
    "forget_bias_init": 3.0,
    "local_update": True,
    "strength_bias_init": -2.0,
    "read_norm": True,
    "write_from": "block_input",
}
POOLS = ("auto", "mean", "flatten")
HEAD_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class TensorMemoryExtractor(RecurrentFeaturesExtractor):
    """obs -> tokens ``(B, N, d)`` -> ``n_layers`` x [pre-norm block + shared Tensor Memory] -> pool ->
    ``Linear -> ReLU`` (or ``Tanh``) -> features ``(B, features_dim)``.

    ``pool="mean"`` averages the ``N`` tokens ``(B, d)``; ``pool="flatten"`` concatenates them ``(B, N * d)``,
    so the head sees which token carries what, as SB3's Nature CNN sees which cell of its last feature map
    does; ``pool="auto"`` (the default) flattens where the observation holds an image and averages otherwise.
    Trained to recall the pixel memory reacher's hidden target, the extractor carries it through 10 hidden
    frames with the concatenation, and learns it later or not at all with the mean
    (``scripts/probe_recall.py --task pixel``).

    The whole observation is one chunk by default (``chunk_size = N``), so every block makes one memory
    step per env step. State: the memory's ``{"h", "c"}``, each ``(B, C, D, H, W)``.

    ``image_stem="nature_cnn"`` gives an image ``image_tokens`` tokens cut from SB3's Nature CNN, the encoder
    the baselines use, whose features see where a small object lies; ``"patches"`` one token per cell of an
    8x8 conv grid; ``"cells"`` one token per cell of the Nature CNN's last convolution map, which with
    ``memory.per_token`` reads and writes at the cell's place in the grid (:class:`TensorMemory`'s ``places``):
    where in the image a thing was seen is where the memory keeps it; ``"auto"`` the Nature CNN for images of at
    least 36x36 pixels, else the patches (:mod:`tmem_agents.policies.tokenizers`).

    ``read_to_head=True`` hands the memory's read to the head beside the pooled tokens: the last layer's read
    ``(B, N, d)``, averaged over the step's tokens (the chunk's read itself when one chunk reads for the whole
    observation), is concatenated to the pooled tokens, so the head reads the memory without the fusion gate,
    the block's MLP and the final LayerNorm in between.

    ``head_activation="tanh"`` bounds the features as an LSTM's output is bounded, where a ReLU unit that
    stops firing stays dead: on the pixel memory reacher 49-55 of the 64 ReLU features never fired on the held
    steps after 300k PPO steps with the reconstruction loss, 26 without it (``docs/results.md``).

    ``tokens_to_head=True`` hands the tokenizer's tokens themselves, flattened ``(B, N * d)``, to the head as
    well, so the image encoder learns through one linear map to the features, as an LSTM's encoder does through
    its gates, beside the path through the block, its LayerNorms and the memory (on the pixel memory reacher the
    CNN did not see the target better for it, ``docs/results.md``).

    ``block_grad=False`` stops the gradient of the tokens where they enter the block (and the head, with
    ``tokens_to_head``) but not where the memory writes from them, so the tokenizer, and the image encoder in it,
    learns only through what the memory stores, as an LSTM's encoder learns only through its cell; the block
    still sees the step's tokens. It needs the memory to write from the tokens with their gradient
    (``write_from="block_input"``, ``write_grad=True``), which is the mirror of ``memory.write_grad=False``.

    ``head_norm=True`` puts a LayerNorm between the head's linear map and its activation (the trunk of pixel
    SAC-AE and DrQ agents: linear, LayerNorm, tanh). Without it the pre-activations drift to a large offset
    shared by every episode: on the pixel memory reacher, after 300k PPO steps, 57-64% of the ``tanh`` head's
    pre-activations lay beyond +-2 (84-90% with ``read_to_head``), so the features barely varied with what
    the tokens saw and their gradient vanished (``docs/results.md``).

    ``memory_features=M`` (``0 < M <= features_dim``) gives the memory's read a head of its own: the last ``M``
    features are ``Linear -> (LayerNorm) -> activation`` of the read alone (averaged over the step's tokens as
    with ``read_to_head``), the first ``features_dim - M`` the head of the pooled tokens. With one shared head
    the step's tokens set most of the features' spread: on the pixel memory reacher the arm's joints explained
    75% of the features' variance across episodes and the hidden target 5%, though a linear readout found the
    target at ``R^2`` 0.78 (``docs/results.md``). A head of its own gives what the memory holds a fixed share
    of the features, each half normed on its own with ``head_norm``. The read is the state before the step's
    write, so the memory's features lag the observation by a step; the tokens' half carries the step itself.
    Trained by PPO on that task (``M = 32``, three seeds) it scored level with one head, its CNN seeing the target
    less and the target's share of the features falling. ``M = features_dim`` takes every feature from the read,
    as an LSTM's features are its state; it needs ``memory.read_after_write`` so that the read holds the step.
    The block's tokens then serve only the memory's write and read location (its MLP and final LayerNorm go
    unused); with one layer, ``memory.read_grid`` and ``memory.write_from="block_input"`` nothing the block
    computes reaches the features, and its attention is skipped (its weights stay, so saved models load).
    On the pixel memory reacher (three seeds) it scored behind one head with the reference's update of every
    cell; with ``memory.input_gates``, the local update, writes starting at half strength and the gates started
    over timescales (``+experiment=pixel_memory_reacher_tensor_memory``) it scores level with the LSTM given the
    same start over seventeen seeds (``docs/results.md``).

    Args:
        memory: a dict of :class:`TensorMemoryConfig` fields, applied over :data:`EXTRACTOR_MEMORY_DEFAULTS` and
            ``chunk_size = N``; or a complete :class:`TensorMemoryConfig`, used as it is.
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
        pool: str = "auto",
        image_stem: str = "auto",
        image_tokens: int = 8,
        head_activation: str = "relu",
        read_to_head: bool = False,
        head_norm: bool = False,
        tokens_to_head: bool = False,
        block_grad: bool = True,
        memory_features: int = 0,
    ) -> None:
        super().__init__(observation_space, features_dim)
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if head_activation not in HEAD_ACTIVATIONS:
            raise ValueError(f"head_activation must be one of {tuple(HEAD_ACTIVATIONS)}, got {head_activation!r}")
        if isinstance(memory_features, bool) or not isinstance(memory_features, int):
            raise ValueError(f"memory_features must be an int, got {memory_features!r}")
        if not 0 <= memory_features <= features_dim:
            raise ValueError(
                f"memory_features must be in [0, features_dim={features_dim}], got {memory_features}: the memory's "
                "read has a head of its own for that many features, the step's tokens the rest"
            )
        self.tokenizer = make_tokenizer(observation_space, token_dim, group_size, image_stem, image_tokens)
        if not isinstance(memory, TensorMemoryConfig):
            fields = {**EXTRACTOR_MEMORY_DEFAULTS, "chunk_size": self.tokenizer.num_tokens, **(memory or {})}
            memory = TensorMemoryConfig.from_options(fields)
        num_tokens = self.tokenizer.num_tokens
        if num_tokens % memory.chunk_size:
            raise ValueError(
                f"memory chunk_size {memory.chunk_size} must divide the {num_tokens} tokens of an observation"
            )
        if not block_grad and (memory.write_from != "block_input" or not memory.write_grad):
            raise ValueError(
                "block_grad=false trains the tokenizer only through the memory's write, which needs "
                f"memory.write_from='block_input' and memory.write_grad=true (got {memory.write_from!r} and "
                f"{memory.write_grad}): the tokenizer would learn nothing"
            )
        if memory_features == features_dim and not memory.read_after_write:
            raise ValueError(
                f"memory_features={memory_features} takes every feature from the memory's read, which then never "
                "sees the step's observation: set memory.read_after_write=true (each step reads the state after "
                "its write), or leave some features to the tokens' head"
            )
        places = token_places(self.tokenizer) if memory.per_token else None
        if places is not None and memory.chunk_size != num_tokens:
            raise ValueError(
                f"the tokens' places (image_stem='cells') tie each of the {num_tokens} tokens of an observation to "
                f"its place in the grid, which needs them in one chunk: leave memory.chunk_size unset (got "
                f"{memory.chunk_size})"
            )
        self.chunks_per_step = num_tokens // memory.chunk_size
        self.block_unused = (
            n_layers == 1
            and memory_features == features_dim
            and memory.read_grid
            and memory.write_from == "block_input"
        )
        self.memory = TensorMemory(memory, token_dim, places)
        self.layers = nn.ModuleList(MemoryBlock(PreNormBlock(token_dim, heads), self.memory) for _ in range(n_layers))
        self.norm = nn.LayerNorm(token_dim)
        self.pool = ("flatten" if has_image(observation_space) else "mean") if pool == "auto" else pool
        self.read_to_head = read_to_head
        self.tokens_to_head = tokens_to_head
        self.block_grad = block_grad
        flat = token_dim * num_tokens
        pooled = (flat if self.pool == "flatten" else token_dim) + (token_dim if read_to_head else 0)
        pooled += flat if tokens_to_head else 0

        def head(width_in: int, width_out: int) -> nn.Sequential:
            norm = [nn.LayerNorm(width_out)] if head_norm else []
            return nn.Sequential(nn.Linear(width_in, width_out), *norm, HEAD_ACTIVATIONS[head_activation]())

        self.head = head(pooled, features_dim - memory_features) if memory_features < features_dim else None
        self.memory_head = head(token_dim, memory_features) if memory_features else None

    def restore_initialisation(self) -> None:
        """Give the memory back its own coordinate, content, spread and strength heads
        (:meth:`TensorMemory.reset_write_heads`). Under SB3's rows of norm ``sqrt(2)`` reads and writes start
        pinned to the grid's corners, each write at its own spread and strength, with contents the gates
        saturate on: the grid then holds a write by where it landed more than by what it carried, and a linear
        head reads little of it (``scripts/start_sensitivity.py``, ``docs/results.md``).
        """
        self.memory.reset_write_heads()

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> TensorDict:
        return self.memory.init_state(batch_size, device=device or self._device())

    def _unroll(
        self, tokens: torch.Tensor, state: TensorDict, episode_starts: torch.Tensor | None
    ) -> tuple[torch.Tensor, TensorDict]:
        """Tokens ``(T, B, N, d)`` through the layers -> features ``(T, B, F)``.

        Only the memory is recurrent, so the first layer's pre-memory half and the last layer's
        post-memory half (with the pooling head) run on all ``T * B`` steps at once. With one layer the
        memory's inputs are then known for every step, and a single memory call runs all ``T`` steps.
        """
        steps, batch, num, dim = tokens.shape
        first, last = self.layers[0], self.layers[-1]
        seen = tokens if self.block_grad else tokens.detach()
        x = seen if self.block_unused else first.pre(seen.flatten(0, 1)).view(tokens.shape)
        if len(self.layers) == 1:
            chunk_starts = None
            if episode_starts is not None:
                chunk_starts = torch.zeros(batch, steps, self.chunks_per_step, device=tokens.device)
                chunk_starts[:, :, 0] = episode_starts.T
                chunk_starts = chunk_starts.flatten(1)
            x_seq, tokens_seq = (z.transpose(0, 1).reshape(batch, steps * num, dim) for z in (x, tokens))
            y, read, state = first.fuse(x_seq, state, tokens_seq, chunk_starts)
            y, read = (z.view(batch, steps, num, dim).transpose(0, 1) for z in (y, read))
        else:
            outputs, reads = [], []
            for t in range(steps):
                if episode_starts is not None:
                    state = reset_state(state, episode_starts[t])
                y = tokens[t]
                for layer in self.layers:
                    pre = x[t] if layer is first else layer.pre(y)
                    y, read, state = layer.fuse(pre, state, y)
                    y = y if layer is last else layer.post(y)
                outputs.append(y)
                reads.append(read)
            y, read = torch.stack(outputs), torch.stack(reads)
        read = read.flatten(0, 1).mean(dim=1)
        if self.head is None:
            return self.memory_head(read).view(steps, batch, -1), state
        y = self.norm(last.post(y.flatten(0, 1)))
        pooled = y.flatten(1) if self.pool == "flatten" else y.mean(dim=1)
        if self.read_to_head:
            pooled = torch.cat([pooled, read], dim=-1)
        if self.tokens_to_head:
            pooled = torch.cat([pooled, seen.flatten(0, 1).flatten(1)], dim=-1)
        features = self.head(pooled)
        if self.memory_head is not None:
            features = torch.cat([features, self.memory_head(read)], dim=-1)
        return features.view(steps, batch, -1), state

    def image_encoders(self) -> dict[str | None, nn.Module]:
        """The image tokenizers' encoders that give a vector per frame (``image_stem`` ``nature_cnn`` or
        ``spatial_softmax``), before it is cut into tokens."""
        parts = self.tokenizer.parts if isinstance(self.tokenizer, DictTokenizer) else {None: self.tokenizer}
        return {key: part.cnn for key, part in parts.items() if isinstance(part, CNNTokenizer)}

    def forward_step(self, obs: Obs, state: TensorDict) -> tuple[torch.Tensor, TensorDict]:
        features, state = self._unroll(self.tokenizer(obs).unsqueeze(0), state, None)
        return features[0], state

    def sequence(self, obs: Obs, state: TensorDict, episode_starts: torch.Tensor) -> tuple[torch.Tensor, TensorDict]:
        steps, batch = episode_starts.shape
        tokens = self.tokenizer(map_obs(lambda x: x.reshape(steps * batch, *x.shape[2:]), obs))
        return self._unroll(tokens.view(steps, batch, *tokens.shape[1:]), state, episode_starts)
