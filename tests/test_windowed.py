"""The windowed Tensor Memory: a stateless extractor over VecFrameStack windows for stock SB3 algorithms."""

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecFrameStack

import tmem_agents.envs  # noqa: F401  (registers the tasks)
from tmem_agents.policies import WindowedTensorMemoryExtractor
from tmem_agents.policies.windowed import frame_space


def test_features_equal_the_memory_run_over_the_frames_from_zero():
    torch.manual_seed(0)
    stacked = spaces.Box(-1.0, 1.0, (3 * 5,), dtype=np.float32)
    extractor = WindowedTensorMemoryExtractor(stacked, n_stack=3, features_dim=16)
    windows = torch.rand(4, 15) * 2 - 1
    features = extractor(windows)
    assert features.shape == (4, 16)
    inner = extractor.extractor
    state = inner.initial_state(4)
    for t in range(3):
        expected, state = inner.step(windows[:, 5 * t : 5 * (t + 1)], state, torch.zeros(4))
    assert torch.allclose(features, expected, atol=1e-5)
    # nothing is carried between calls
    assert torch.equal(extractor(windows), features)


@pytest.mark.parametrize("shape, stacked", [((3, 8, 8), (6, 8, 8)), ((8, 8, 3), (8, 8, 6))])
def test_image_windows_split_on_the_channel_axis(shape, stacked):
    space = spaces.Box(0, 255, stacked, dtype=np.uint8)
    assert frame_space(space, 2).shape == shape
    extractor = WindowedTensorMemoryExtractor(space, n_stack=2, features_dim=8)
    assert extractor(torch.rand(2, *stacked)).shape == (2, 8)


def test_bad_windows_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="not a multiple of n_stack=4"):
        WindowedTensorMemoryExtractor(spaces.Box(-1, 1, (6,)), n_stack=4)
    with pytest.raises(ValueError, match="n_stack must be an int >= 1"):
        WindowedTensorMemoryExtractor(spaces.Box(-1, 1, (6,)), n_stack=0)
    with pytest.raises(TypeError, match="VecFrameStack of Box"):
        WindowedTensorMemoryExtractor(spaces.Discrete(3), n_stack=1)


def _stacked(env_id: str, n_stack: int) -> VecFrameStack:
    return VecFrameStack(make_vec_env(env_id, n_envs=2, seed=0), n_stack=n_stack)


def test_stock_ppo_and_sac_train_with_the_windowed_memory():
    kwargs = {"features_extractor_class": WindowedTensorMemoryExtractor, "features_extractor_kwargs": {"n_stack": 4}}
    ppo = PPO("MlpPolicy", _stacked("tmem/CueRecall-v0", 4), n_steps=16, batch_size=32, policy_kwargs=kwargs)
    ppo.learn(64)
    sac = SAC(
        "MlpPolicy", _stacked("tmem/PendulumOccluded-v0", 4), learning_starts=8, batch_size=16, policy_kwargs=kwargs
    )
    sac.learn(32)
    obs = sac.get_env().reset()
    action, _ = sac.predict(obs, deterministic=True)
    assert action.shape == (2, 1) and np.isfinite(action).all()
