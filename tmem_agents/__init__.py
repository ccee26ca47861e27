"""tmem-agents: Tensor Memory, a constant-size 3-D recurrent memory for partially observable RL agents."""

__version__ = "0.1.0"
