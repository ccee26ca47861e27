"""PPO with a constant-size recurrent state and its rollout buffer."""

from tmem_agents.algos.buffer import RecurrentRolloutBuffer, SequenceBatch
from tmem_agents.algos.memory_ppo import MemoryPPO, NonFiniteError

__all__ = ["MemoryPPO", "NonFiniteError", "RecurrentRolloutBuffer", "SequenceBatch"]
