"""The windowed Tensor Memory: a stateless extractor over VecFrameStack windows for stock SB3 algorithms."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

import tmem_agents.envs  # noqa: F401  (registers the tasks)
from tmem_agents.policies import WindowedTensorMemoryExtractor
from tmem_agents.policies.windowed import frame_space, stack_axis


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


@pytest.mark.parametrize(
    "stacked, frame, dtype, order",
    [
        ((6, 8, 8), (3, 8, 8), np.uint8, "first"),
        ((8, 8, 6), (8, 8, 3), np.uint8, "last"),
        ((7, 7, 9), (7, 7, 3), np.uint8, None),  # only the last axis holds three frames
        ((2, 5, 10), (2, 5, 5), np.float32, None),  # not an image: stacked on the last axis
    ],
    ids=["image-channels-first", "image-channels-last", "image-auto", "non-image-rank-3"],
)
def test_rank3_windows_split_on_the_stacked_axis(stacked, frame, dtype, order):
    torch.manual_seed(0)
    n_stack = stacked[0] // frame[0] if stacked[0] != frame[0] else stacked[2] // frame[2]
    space = spaces.Box(0, 255 if dtype == np.uint8 else 1, stacked, dtype=dtype)
    assert frame_space(space, n_stack, order).shape == frame
    last = stack_axis(space, n_stack, order) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the non-image Box is encoded as a flat vector
        extractor = WindowedTensorMemoryExtractor(space, n_stack=n_stack, features_dim=8, channels_order=order)
    windows = torch.rand(2, *stacked) * (255 if dtype == np.uint8 else 1)
    inner = extractor.extractor
    state = inner.initial_state(2)
    for t in range(n_stack):
        if last:  # frame t is the stacked axis' t-th part, given to the memory with that axis first
            observed = windows[..., frame[2] * t : frame[2] * (t + 1)].movedim(-1, 1)
        else:
            observed = windows[:, frame[0] * t : frame[0] * (t + 1)]
        expected, state = inner.step(observed, state, torch.zeros(2))
    assert torch.allclose(extractor(windows), expected, atol=1e-5)


def test_the_stacked_axis_is_the_one_vecframestack_chose():
    for frame, n_stack in (((3, 84, 84), 4), ((64, 64, 3), 4), ((1, 40, 40), 4), ((10, 10, 4), 3)):
        venv = VecFrameStack(DummyVecEnv([lambda frame=frame: ImageEnv(frame)]), n_stack=n_stack)
        stacked = venv.observation_space
        assert frame_space(stacked, n_stack).shape == frame, (frame, n_stack)
    with pytest.raises(ValueError, match=r"may be stacked on axis 0 or 2.*channels_order='first' or 'last'"):
        stack_axis(spaces.Box(0, 255, (12, 8, 8), np.uint8), 4)  # four (3, 8, 8) or four (12, 8, 2)
    assert stack_axis(spaces.Box(0, 255, (12, 8, 8), np.uint8), 4, "first") == 0
    with pytest.raises(ValueError, match="channels_order must be"):
        stack_axis(spaces.Box(0, 255, (12, 8, 8), np.uint8), 4, "middle")


def test_bad_windows_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="not a multiple of n_stack=4"):
        WindowedTensorMemoryExtractor(spaces.Box(-1, 1, (6,)), n_stack=4)
    with pytest.raises(ValueError, match="n_stack must be an int >= 1"):
        WindowedTensorMemoryExtractor(spaces.Box(-1, 1, (6,)), n_stack=0)
    with pytest.raises(TypeError, match="VecFrameStack of Box"):
        WindowedTensorMemoryExtractor(spaces.Discrete(3), n_stack=1)


class ImageEnv(gym.Env):
    """Blank uint8 frames of a given shape."""

    def __init__(self, shape: tuple[int, ...]):
        self.observation_space = spaces.Box(0, 255, shape, np.uint8)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return np.zeros(self.observation_space.shape, np.uint8), {}

    def step(self, action):
        return np.zeros(self.observation_space.shape, np.uint8), 0.0, False, False, {}


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
