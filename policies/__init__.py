"""SB3 policies and recurrent feature extractors: Tensor Memory and the baselines."""

from tmem_agents.policies.base import RecurrentFeaturesExtractor
from tmem_agents.policies.frame_stack import FrameStackExtractor
from tmem_agents.policies.recurrent_policy import RecurrentActorCriticPolicy
from tmem_agents.policies.rnn import GRUExtractor, LSTMExtractor
from tmem_agents.policies.stateless import StatelessExtractor
from tmem_agents.policies.tensor_memory_extractor import TensorMemoryExtractor
from tmem_agents.policies.windowed import WindowedTensorMemoryExtractor

EXTRACTORS = {
    "tensor_memory": TensorMemoryExtractor,
    "lstm": LSTMExtractor,
    "gru": GRUExtractor,
    "frame_stack": FrameStackExtractor,
    "mlp": StatelessExtractor,
}

__all__ = [
    "EXTRACTORS",
    "FrameStackExtractor",
    "GRUExtractor",
    "LSTMExtractor",
    "RecurrentActorCriticPolicy",
    "RecurrentFeaturesExtractor",
    "StatelessExtractor",
    "TensorMemoryExtractor",
    "WindowedTensorMemoryExtractor",
]
