"""tmem-agents: Tensor Memory, a constant-size 3-D recurrent memory for partially observable RL agents."""

from tmem_agents.algos import MemoryPPO

__version__ = "0.1.0"
__all__ = ["MemoryPPO"]
