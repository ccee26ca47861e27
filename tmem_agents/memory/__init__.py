"""The Tensor Memory module: configuration, the memory, its update rule and the block wrapper."""

from tmem_agents.memory.block import MemoryBlock
from tmem_agents.memory.config import TensorMemoryConfig
from tmem_agents.memory.tensor_memory import TensorMemory
from tmem_agents.memory.update import FactorizedGateConv

__all__ = ["FactorizedGateConv", "MemoryBlock", "TensorMemory", "TensorMemoryConfig"]
