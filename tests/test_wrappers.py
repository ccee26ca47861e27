"""Semantics and argument checks of the observation wrappers in tmem_agents.envs.wrappers."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.envs.classic_control import CartPoleEnv
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

from tmem_agents.envs.obs_groups import observation_groups
from tmem_agents.envs.occluders import MovingOccluders
from tmem_agents.envs.wrappers import BlockOcclusion, Flicker, MaskObservation, PixelOccluder, SensorDropout


class ConstantEnv(gym.Env):
    """Observation of ones that never ends: any 0 in it was put there by a wrapper."""

    metadata = {"render_modes": []}

    def __init__(self, size: int = 6, low: float = -1.0, high: float = 2.0) -> None:
        self.observation_space = spaces.Box(low, high, shape=(size,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.ones(self.observation_space.shape, dtype=np.float32), {}

    def step(self, action):
        return np.ones(self.observation_space.shape, dtype=np.float32), 0.0, False, False, {}


class ImageEnv(gym.Env):
    """White 32x40 RGB frames."""

    metadata = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0, 255, shape=(32, 40, 3), dtype=np.uint8)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.full((32, 40, 3), 255, dtype=np.uint8), {}

    def step(self, action):
        return np.full((32, 40, 3), 255, dtype=np.uint8), 0.0, False, False, {}


def binomial_ok(successes: int, trials: int, p: float, sigmas: float = 5.0) -> bool:
    """Whether a count lies within ``sigmas`` standard deviations of its binomial mean."""
    return abs(successes - trials * p) <= sigmas * np.sqrt(trials * p * (1 - p)) + 1


def rollout(env: gym.Env, steps: int, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    obs, info = env.reset(seed=seed)
    observations, infos = [obs], [info]
    for _ in range(steps):
        obs, _, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, info = env.reset()
        observations.append(obs)
        infos.append(info)
    return np.array(observations), infos


def test_mask_by_index_and_name_always_zero():
    by_index = MaskObservation(CartPoleEnv(), [1, 3])
    by_name = MaskObservation(CartPoleEnv(), ["velocities"])
    by_index.action_space.seed(0)
    by_name.action_space.seed(0)
    a, _ = rollout(by_index, 300)
    b, _ = rollout(by_name, 300)
    assert np.all(a[:, [1, 3]] == 0) and np.all(a[:, [0, 2]] != 0)
    np.testing.assert_array_equal(a, b)


def test_mask_negative_index_and_check_env():
    env = MaskObservation(ConstantEnv(), [-1])
    obs, _ = env.reset(seed=0)
    assert obs[-1] == 0 and np.all(obs[:-1] == 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env, skip_render_check=True)


@pytest.mark.parametrize(
    ("hide", "message"),
    [
        ([4], "out of range"),
        ([-5], "out of range"),
        (["speed"], "unknown observation group"),
        ([], "empty"),
        ([1.5], "ints or group names"),
    ],
)
def test_mask_bad_entries(hide, message):
    with pytest.raises(ValueError, match=message):
        MaskObservation(CartPoleEnv(), hide)


def test_names_need_known_groups():
    with pytest.raises(ValueError, match="no named observation groups"):
        MaskObservation(ConstantEnv(), ["velocities"])


def test_non_box_space_rejected():
    env = gym.make("FrozenLake-v1")
    for make in (
        lambda: MaskObservation(env, [0]),
        lambda: BlockOcclusion(env),
        lambda: Flicker(env),
        lambda: SensorDropout(env),
        lambda: PixelOccluder(env),
    ):
        with pytest.raises(ValueError, match="Box observation space"):
            make()


def test_zero_outside_bounds_rejected():
    with pytest.raises(ValueError, match="0 is outside the bounds"):
        Flicker(ConstantEnv(low=1.0, high=2.0))


@pytest.mark.parametrize("p", [-0.1, 1.5, "half", None, True])
def test_probability_validation(p):
    for make in (
        lambda: Flicker(ConstantEnv(), p),
        lambda: SensorDropout(ConstantEnv(), p),
        lambda: BlockOcclusion(ConstantEnv(), rate=p),
    ):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            make()


@pytest.mark.parametrize("length", [(0, 3), (5, 2), (2.5, 4), (3,)])
def test_block_length_validation(length):
    with pytest.raises(ValueError, match="length"):
        BlockOcclusion(ConstantEnv(), rate=0.1, length=length)


def test_block_occlusion_runs_and_rate():
    rate, low, high = 0.08, 5, 15
    env = BlockOcclusion(ConstantEnv(), rate=rate, length=(low, high))
    obs, infos = rollout(env, 20_000, seed=1)
    hidden = np.all(obs == 0, axis=1)
    assert not hidden[0] and not infos[0]["occluded"]
    assert np.array_equal(hidden, np.array([i["occluded"] for i in infos]))
    assert np.all(np.all(obs == 0, axis=1) | np.all(obs == 1, axis=1))
    # A run starts at a visible step with probability `rate`, and lasts `low` to `high` steps.
    starts = hidden[1:] & ~hidden[:-1]
    candidates = ~hidden[:-1]
    assert binomial_ok(int(starts.sum()), int(candidates.sum()), rate)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], hidden.astype(int), [0]])))
    lengths = edges[1::2] - edges[::2]
    assert np.all((lengths[:-1] >= low) & (lengths[:-1] <= high))
    assert set(lengths[:-1]) == set(range(low, high + 1))
    mean_k = (low + high) / 2
    expected = rate * mean_k / (1 + rate * mean_k)
    assert abs(hidden.mean() - expected) < 0.05


def test_block_occlusion_entries_only():
    env = BlockOcclusion(ConstantEnv(), rate=0.2, length=(2, 4), entries=[0, 2])
    obs, infos = rollout(env, 500)
    occluded = np.array([i["occluded"] for i in infos])
    assert occluded.any()
    assert np.all(obs[occluded][:, [0, 2]] == 0) and np.all(obs[:, [1, 3, 4, 5]] == 1)


def test_flicker_rate_and_reset_visible():
    p = 0.3
    env = Flicker(ConstantEnv(), p)
    obs, infos = rollout(env, 10_000, seed=2)
    blank = np.all(obs == 0, axis=1)
    assert not blank[0]
    assert np.array_equal(blank, np.array([i["blanked"] for i in infos]))
    assert binomial_ok(int(blank[1:].sum()), len(blank) - 1, p)


def test_sensor_dropout_rate_and_mask():
    p = 0.25
    env = SensorDropout(ConstantEnv(size=5), p, expose_mask=True)
    assert env.observation_space.shape == (10,)
    obs, _ = rollout(env, 4000, seed=3)
    values, mask = obs[:, :5], obs[:, 5:]
    np.testing.assert_array_equal(values, mask)
    assert binomial_ok(int((values == 0).sum()), values.size, p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env, skip_render_check=True)


def test_sensor_dropout_needs_flat_obs():
    with pytest.raises(ValueError, match="1-D observation"):
        SensorDropout(ImageEnv())


def test_wrappers_reproduce_under_seed():
    def run() -> np.ndarray:
        env = SensorDropout(Flicker(BlockOcclusion(ConstantEnv(), 0.1), 0.2), 0.1)
        env.action_space.seed(0)
        return rollout(env, 300, seed=7)[0]

    np.testing.assert_array_equal(run(), run())
    env = Flicker(ConstantEnv(), 0.5)
    first = rollout(env, 200, seed=1)[0]
    assert not np.array_equal(first, rollout(env, 200, seed=2)[0])


@pytest.mark.parametrize("shape", ["rect", "disc", "bar"])
def test_pixel_occluder_draws_moving_shapes(shape):
    env = PixelOccluder(ImageEnv(), n=2, size=(8, 10), speed=(1.0, 2.0), shape=shape, color=(10, 20, 30))
    frames, _ = rollout(env, 60, seed=0)
    covered = np.all(frames == (10, 20, 30), axis=-1)
    assert np.all(np.all(frames == 255, axis=-1) | covered)
    assert covered.any(axis=(1, 2)).all()
    assert not np.array_equal(covered[0], covered[30])
    if shape == "bar":
        assert np.all(covered.all(axis=1).any(axis=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env, skip_render_check=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": (40, 10)}, "fit"),
        ({"size": (0, 4)}, "at least 1"),
        ({"speed": (2.0, 1.0)}, "speed"),
        ({"shape": "star"}, "shape"),
        ({"n": 0}, "number of occluders"),
        ({"color": (1, 2)}, "color"),
        ({"color": 300}, "color"),
    ],
)
def test_pixel_occluder_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PixelOccluder(ImageEnv(), **kwargs)


def test_pixel_occluder_needs_uint8_images():
    with pytest.raises(ValueError, match="uint8 images"):
        PixelOccluder(ConstantEnv())


def test_observation_groups_of_gymnasium_and_tmem_envs():
    cheetah = observation_groups(HalfCheetahEnv())
    assert cheetah == {"positions": list(range(8)), "velocities": list(range(8, 17))}
    ant = observation_groups(AntEnv())
    assert len(ant["positions"]) == 13 and len(ant["velocities"]) == 14 and len(ant["contact_forces"]) == 78
    full = observation_groups(HalfCheetahEnv(exclude_current_positions_from_observation=False))
    assert full["positions"] == list(range(9))
    reacher = MaskObservation(gym.make("tmem/MemoryReacher-v0"), ["velocities", "target_shown"])
    obs, _ = reacher.reset(seed=0)
    assert np.all(obs[[6, 7, 10]] == 0) and obs[11] == 1


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(8, 48),
    width=st.integers(8, 48),
    frac=st.tuples(st.floats(0.05, 1.0), st.floats(0.05, 1.0)),
    speed=st.floats(0.0, 20.0),
    shape=st.sampled_from(["rect", "bar"]),
    seed=st.integers(0, 2**16),
)
def test_occluders_stay_inside_the_frame(height, width, frac, speed, shape, seed):
    size = (max(1, int(frac[0] * height)), max(1, int(frac[1] * width)))
    occluders = MovingOccluders(height, width, n=2, size=size, speed=(0.0, speed), shape=shape)
    occluders.reset(np.random.default_rng(seed))
    area = (height if shape == "bar" else size[0]) * size[1]
    for _ in range(30):
        occluders.step()
        covered = occluders.mask()
        span = np.array([height - occluders.size[0], width - occluders.size[1]])
        assert np.all(occluders.pos >= 0) and np.all(occluders.pos <= span)
        assert area <= covered.sum() <= 2 * area
