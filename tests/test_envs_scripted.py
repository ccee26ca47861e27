"""Reference scores of scripted policies with and without memory (tmem_agents.envs.scripted)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from tmem_agents.envs import scripted


def binomial_ok(rate: float, trials: int, p: float, sigmas: float = 5.0) -> bool:
    """Whether an observed rate lies within ``sigmas`` binomial standard deviations of ``p``."""
    return abs(rate - p) <= sigmas * np.sqrt(p * (1 - p) / trials) + 1 / trials


@pytest.mark.parametrize("n_cues", [2, 3, 5])
def test_cue_recall_memoryless_at_chance_oracle_perfect(n_cues):
    env = gym.make("tmem/CueRecall-v0", n_cues=n_cues)
    episodes = 3000
    for memory in (1, 4):
        score = scripted.evaluate(env, scripted.CueRecallPolicy(memory), episodes)
        assert binomial_ok(score["success_rate"], episodes, 1 / n_cues)
        assert score["return"] == score["success_rate"]
    oracle = scripted.evaluate(env, scripted.CueRecallPolicy(None), 500)
    assert oracle["success_rate"] == 1.0 and oracle["return"] == 1.0


def test_cue_recall_short_delay_fits_a_window():
    env = gym.make("tmem/CueRecall-v0", delay=2)
    assert scripted.evaluate(env, scripted.CueRecallPolicy(4), 200)["success_rate"] == 1.0


def test_spatial_recall_centre_guess_vs_oracle():
    env = gym.make("tmem/SpatialRecall-v0")
    centre = scripted.evaluate(env, scripted.SpatialRecallPolicy(1), 4000)
    # Mean distance of a uniform point of [-1, 1]^2 to the centre: 0.7652.
    assert centre["final_distance"] == pytest.approx(0.7652, abs=0.03)
    assert centre["return"] == pytest.approx(1 - centre["final_distance"])
    assert scripted.evaluate(env, scripted.SpatialRecallPolicy(4), 500)["final_distance"] > 0.6
    oracle = scripted.evaluate(env, scripted.SpatialRecallPolicy(None), 500)
    assert oracle["success_rate"] == 1.0 and oracle["return"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    ("task_id", "policy"),
    [
        ("tmem/MemoryReacher-v0", scripted.MemoryReacherPolicy),
        ("tmem/MemoryReacherHold-v0", scripted.MemoryReacherPolicy),
        ("tmem/MultiTargetReacher-v0", scripted.MultiTargetReacherPolicy),
    ],
)
def test_reachers_need_memory(task_id, policy):
    env = gym.make(task_id)
    oracle = scripted.evaluate(env, policy(None), 20)
    memoryless = scripted.evaluate(env, policy(1), 20)
    assert oracle["success_rate"] >= 0.9 and oracle["final_distance"] < 0.02
    assert memoryless["success_rate"] <= 0.2 and memoryless["final_distance"] > 0.1
    assert oracle["return"] > memoryless["return"]


def test_pixel_reacher_oracle_beats_memoryless():
    env = gym.make("tmem/PixelReacher-v0")
    oracle = scripted.evaluate(env, scripted.PixelReacherPolicy(env, None), 12)
    memoryless = scripted.evaluate(env, scripted.PixelReacherPolicy(env, 1), 12)
    assert oracle["success_rate"] >= 0.9
    assert oracle["return"] > memoryless["return"]
    assert oracle["final_distance"] < memoryless["final_distance"]


def test_pixel_memory_reacher_needs_memory():
    env = gym.make("tmem/PixelMemoryReacher-v0")
    oracle = scripted.evaluate(env, scripted.PixelReacherPolicy(env, None, kp=0.7), 12)
    memoryless = scripted.evaluate(env, scripted.PixelReacherPolicy(env, 1, kp=0.7), 12)
    assert oracle["success_rate"] >= 0.9 and oracle["final_distance"] < 0.02
    assert memoryless["success_rate"] <= 0.2 and memoryless["final_distance"] > 0.1
    assert oracle["return"] > memoryless["return"]


def test_memory_must_be_positive():
    with pytest.raises(ValueError, match="memory"):
        scripted.CueRecallPolicy(0)


def test_cartpole_observer_balances_through_occlusion():
    env = gym.make("tmem/CartPoleOccluded-v0")
    assert scripted.evaluate(env, scripted.CartPolePolicy(None), 10)["return"] == 500.0
    for memory in (1, 4):
        assert scripted.evaluate(env, scripted.CartPolePolicy(memory), 20)["return"] < 100.0
