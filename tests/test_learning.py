"""End to end: the Tensor Memory learns delayed cue recall where the memoryless baseline cannot.

A short version of ``scripts/recall_check.py`` (a cue among 2, recalled 3 steps later). The full check,
with longer delays, more cues and several seeds, is the script.
"""

import pytest
from stable_baselines3.common.env_util import make_vec_env

import tmem_agents.envs  # noqa: F401
from tmem_agents import MemoryPPO
from tmem_agents.evaluation import evaluate
from tmem_agents.policies import StatelessExtractor, TensorMemoryExtractor

TASK = {"delay": 3, "n_cues": 2}


def _train_and_score(extractor, timesteps: int) -> tuple[float, float]:
    env = make_vec_env("tmem/CueRecall-v0", n_envs=8, seed=0, env_kwargs=TASK)
    model = MemoryPPO(
        "MlpPolicy",
        env,
        n_steps=64,
        batch_size=128,
        n_epochs=4,
        bptt_len=16,
        learning_rate=1e-3,
        ent_coef=0.01,
        seed=0,
        policy_kwargs={"features_extractor_class": extractor},
    )
    model.learn(timesteps)
    eval_env = make_vec_env("tmem/CueRecall-v0", n_envs=8, seed=1000, env_kwargs=TASK)
    carried = evaluate(model, eval_env, 200).summary()["mean_is_success"]
    ablated = evaluate(model, eval_env, 200, memory_ablation=True).summary()["mean_is_success"]
    return carried, ablated


@pytest.mark.slow
def test_tensor_memory_learns_delayed_recall_and_the_memoryless_baseline_cannot():
    memory, memory_ablated = _train_and_score(TensorMemoryExtractor, 12_000)
    stateless, _ = _train_and_score(StatelessExtractor, 12_000)
    assert memory >= 0.9, f"Tensor Memory success {memory}"
    assert memory_ablated <= 0.7, f"with the state reset every step it should fall to chance, got {memory_ablated}"
    assert stateless <= 0.7, f"a memoryless policy cannot beat chance (0.5), got {stateless}"
