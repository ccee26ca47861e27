"""Attaching a shared Tensor Memory to a pre-norm Transformer block with a gated residual."""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torch import nn

from tmem_agents.memory.tensor_memory import TensorMemory


class MemoryBlock(nn.Module):
    """A pre-norm block with a Tensor Memory fused in by ``x = x + sigmoid(gate) * memory(LN(x))``.

    ``block`` is any module mapping ``(B, N, d) -> (B, N, d)``. When it exposes the two halves of a
    pre-norm block, ``attention_residual`` and ``mlp_residual`` (as :class:`~tmem_agents.transformer.PreNormBlock`
    does), the memory sits between them, as in the reference design; otherwise it follows the block.
    The LayerNorm and the gate belong to this layer, the memory (weights and state) is shared by every
    layer it is attached to. With the memory detached, ``forward`` computes exactly ``block(x)``.
    """

    def __init__(self, block: nn.Module, memory: TensorMemory | None = None) -> None:
        super().__init__()
        self.block = block
        self.memory = memory
        self.norm = nn.LayerNorm(memory.token_dim) if memory is not None else None
        self.gate = nn.Parameter(torch.tensor(float(memory.config.gate_init))) if memory is not None else None

    def attach(self, memory: TensorMemory) -> None:
        """Attach ``memory`` (a new fusion norm and gate are made if this layer has none)."""
        if self.norm is None:
            self.norm = nn.LayerNorm(memory.token_dim).to(memory.out_proj.weight.device)
            self.gate = nn.Parameter(torch.tensor(float(memory.config.gate_init), device=memory.out_proj.weight.device))
        self.memory = memory

    def detach_memory(self) -> TensorMemory | None:
        """Detach and return the memory; the block then computes what the bare block computes."""
        memory, self.memory = self.memory, None
        return memory

    def _split(self) -> bool:
        return hasattr(self.block, "attention_residual") and hasattr(self.block, "mlp_residual")

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """The part of the block before the memory: ``(B, N, d)`` -> ``(B, N, d)``."""
        return self.block.attention_residual(x) if self._split() else self.block(x)

    def fuse(
        self,
        x: torch.Tensor,
        state: TensorDict,
        block_input: torch.Tensor,
        chunk_starts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, TensorDict]:
        """The gated residual read: ``x + sigmoid(gate) * memory(LN(x))``, the read ``memory(LN(x))`` itself
        ``(B, N, d)``, and the memory's new state.

        ``x`` ``(B, N, d)`` is the output of :meth:`pre` for ``block_input`` ``(B, N, d)``, which the memory
        writes from when its config says ``write_from="block_input"`` (``chunk_starts``: see
        :meth:`TensorMemory.forward`).
        """
        write_tokens = block_input if self.memory.config.write_from == "block_input" else None
        read, state = self.memory(self.norm(x), state, chunk_starts, write_tokens)
        return x + torch.sigmoid(self.gate) * read, read, state

    def post(self, x: torch.Tensor) -> torch.Tensor:
        """The part of the block after the memory (nothing when the block cannot be split)."""
        return self.block.mlp_residual(x) if self._split() else x

    def forward(self, x: torch.Tensor, state: TensorDict | None = None) -> tuple[torch.Tensor, TensorDict | None]:
        """Tokens ``(B, N, d)`` and the memory state -> (tokens ``(B, N, d)``, new state)."""
        if self.memory is None:
            return self.block(x), state
        if state is None:
            raise ValueError("a block with memory attached needs the memory state (TensorMemory.init_state)")
        y, _, state = self.fuse(self.pre(x), state, x)
        return self.post(y), state
