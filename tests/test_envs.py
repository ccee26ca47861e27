"""Registration, checker, seeding and timelines of the tasks in tmem_agents.envs."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import tmem_agents.envs
from tmem_agents.envs import TASK_IDS, register_envs, scripted
from tmem_agents.envs.cue_recall import CueRecallEnv
from tmem_agents.envs.frames import ORACLE_KP, frame_strip
from tmem_agents.envs.memory_reacher import MemoryReacherEnv
from tmem_agents.envs.multi_target_reacher import MultiTargetReacherEnv
from tmem_agents.envs.pixel_reacher import PixelMemoryReacherEnv, PixelReacherEnv
from tmem_agents.envs.spatial_recall import SpatialRecallEnv


def rollout(env: gym.Env, steps: int, seed: int) -> list:
    """Observations (each entry of a dict one item), rewards and flags of ``steps`` seeded random steps."""

    def entries(obs: np.ndarray | dict) -> list:
        return list(obs.values()) if isinstance(obs, dict) else [obs]

    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    trace = entries(obs)
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        trace += [*entries(obs), reward, terminated, truncated]
        if terminated or truncated:
            obs, _ = env.reset()
            trace += entries(obs)
    return trace


def test_every_task_registered_and_registration_idempotent():
    assert len(TASK_IDS) == len(set(TASK_IDS)) >= 10
    assert all(task_id.startswith("tmem/") and task_id in gym.registry for task_id in TASK_IDS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_envs()
        register_envs()
    assert gym.registry["tmem/CueRecall-v0"].entry_point == "tmem_agents.envs.cue_recall:CueRecallEnv"


def test_module_prefixed_id_makes_the_env():
    env = gym.make("tmem_agents.envs:tmem/CueRecall-v0")
    assert isinstance(env.unwrapped, CueRecallEnv)
    assert tmem_agents.envs.TASK_IDS == TASK_IDS


@pytest.mark.parametrize("task_id", TASK_IDS)
def test_check_env(task_id):
    env = gym.make(task_id, disable_env_checker=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Gymnasium's own tasks have unbounded observations and Pendulum's torque is in [-2, 2].
        for known in ("is different from the unwrapped", "infinity", "symmetric and normalized"):
            warnings.filterwarnings("ignore", message=f".*{known}")
        check_env(env, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("task_id", TASK_IDS)
def test_seeding_reproduces(task_id):
    traces = [rollout(gym.make(task_id), 60, seed=5) for _ in range(2)]
    for a, b in zip(*traces, strict=True):
        np.testing.assert_array_equal(a, b)
    other = rollout(gym.make(task_id), 60, seed=6)
    assert not all(np.array_equal(a, b) for a, b in zip(traces[0], other, strict=False))


def test_cue_recall_timeline():
    env = CueRecallEnv(n_cues=4, delay=6)
    obs, _ = env.reset(seed=0)
    cue = int(np.argmax(obs[:4]))
    assert obs[:4].sum() == 1 and obs[4] == 0
    for _ in range(6):
        obs, reward, terminated, _, _ = env.step(0)
        assert not obs.any() and reward == 0 and not terminated
    obs, reward, terminated, _, _ = env.step(0)
    assert obs[4] == 1 and not obs[:4].any() and not terminated
    _, reward, terminated, _, info = env.step(cue)
    assert terminated and reward == 1.0 and info["is_success"]


def test_cue_recall_variable_delay():
    env = CueRecallEnv(delay=(2, 5))
    lengths = set()
    for seed in range(60):
        env.reset(seed=seed)
        steps, terminated = 0, False
        while not terminated:
            _, _, terminated, _, _ = env.step(0)
            steps += 1
        lengths.add(steps)
    assert lengths == {4, 5, 6, 7}


def test_spatial_recall_timeline():
    env = SpatialRecallEnv(n_objects=2, show_steps=2, delay=3)
    obs, _ = env.reset(seed=1)
    assert obs[-2] == 1 and np.array_equal(obs[:4], env.positions.reshape(-1).astype(np.float32))
    obs, *_ = env.step(np.zeros(2))
    assert obs[-2] == 1
    for _ in range(3):
        obs, reward, terminated, _, _ = env.step(np.zeros(2))
        assert not obs.any() and not terminated
    obs, *_ = env.step(np.zeros(2))
    assert obs[-1] == 1 and obs[4 + env.query] == 1 and not obs[:4].any()
    _, reward, terminated, _, info = env.step(env.positions[env.query])
    assert terminated and reward == pytest.approx(1.0, abs=1e-6) and info["is_success"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CueRecallEnv(n_cues=1), "n_cues"),
        (lambda: CueRecallEnv(delay=-1), "delay"),
        (lambda: CueRecallEnv(delay=(5, 2)), "delay"),
        (lambda: SpatialRecallEnv(show_steps=0), "show_steps"),
        (lambda: MemoryReacherEnv(visible_steps=-1), "visible_steps"),
        (lambda: MemoryReacherEnv(hold_steps=60, max_steps=50), "max_steps"),
        (lambda: MultiTargetReacherEnv(n_targets=0), "n_targets"),
        (lambda: MultiTargetReacherEnv(show_steps=30, delay=30), "max_steps"),
        (lambda: PixelReacherEnv(size=8), "size"),
        (lambda: PixelReacherEnv(angular_speed=(1.0, 0.5)), "angular_speed"),
        (lambda: PixelMemoryReacherEnv(visible_steps=-1), "visible_steps"),
        (lambda: PixelMemoryReacherEnv(hold_steps=-1), "hold_steps"),
        (lambda: PixelMemoryReacherEnv(hold_steps=60, max_steps=60), "max_steps"),
    ],
)
def test_argument_validation(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def _red_near(frame: np.ndarray, base: PixelReacherEnv) -> bool:
    """Whether any clearly red pixel lies within 4 pixels of the target's position in ``frame``."""
    red = (frame[..., 0].astype(int) - frame[..., 1] > 60) & (frame[..., 0].astype(int) - frame[..., 2] > 60)
    row, col = np.round(base.to_pixel(base.target_position())).astype(int)
    return bool(red[max(row - 4, 0) : row + 5, max(col - 4, 0) : col + 5].any())


def test_locomotion_velocities_always_zero():
    env = gym.make("tmem/HalfCheetahOccluded-v0")
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    occluded = 0
    for _ in range(300):
        obs, _, _, _, info = env.step(env.action_space.sample())
        assert np.all(obs[8:] == 0)
        assert np.all(obs == 0) == info["occluded"]
        occluded += info["occluded"]
    assert 0 < occluded < 300


def test_memory_reacher_hides_target_and_reports():
    env = gym.make("tmem/MemoryReacher-v0")
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    assert obs[10] == 1 and np.any(obs[4:6] != 0)
    for t in range(1, 51):
        obs, _, _, truncated, info = env.step(env.action_space.sample())
        shown = t < 5
        assert obs[10] == shown and np.any(obs[[4, 5, 8, 9]] != 0) == shown
        assert "distance" in info and "is_success" in info
        assert ("final_distance" in info) == (t == 50) == truncated


def test_memory_reacher_hold_ignores_actions():
    def joints(action: float) -> np.ndarray:
        env = gym.make("tmem/MemoryReacherHold-v0")
        obs, _ = env.reset(seed=3)
        for _ in range(15):
            assert obs[11] == 0
            obs, *_ = env.step(np.full(2, action, dtype=np.float32))
        assert obs[11] == 1
        return obs[:4]

    np.testing.assert_array_equal(joints(1.0), joints(-1.0))


def test_multi_target_timeline():
    env = MultiTargetReacherEnv(n_targets=3, show_steps=2, delay=3)
    obs, _ = env.reset(seed=0)
    assert obs[-2] == 1 and np.array_equal(obs[8:14], env.targets.reshape(-1))
    for t in range(1, 50):
        obs, reward, _, _, info = env.step(np.zeros(2, dtype=np.float32))
        assert np.any(obs[8:14] != 0) == (t < 2) == (obs[-2] == 1)
        assert (obs[-1] == 1) == (t >= 5) == (obs[14:17].sum() == 1)
        assert info["reward_dist"] == (-info["distance"] if t >= 5 else 0.0)
    assert obs[14 + env.cue] == 1


def test_pixel_reacher_frames_and_occlusion():
    env = gym.make("tmem/PixelReacher-v0")
    env.action_space.seed(0)
    obs, _ = env.reset(seed=4)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    base = env.unwrapped
    hidden, seen = 0, []
    for _ in range(300):
        obs, _, terminated, truncated, info = env.step(env.action_space.sample())
        near = _red_near(obs, base)
        if info["target_visible"]:
            seen.append(near)
        else:
            hidden += 1
            assert not near
        assert np.all(obs[base.occluders.mask()] == 0)
        if terminated or truncated:
            env.reset()
    assert 30 < hidden < 200
    # The arm may lie over the target, and a sliver at the bar's edge may round away.
    assert np.mean(seen) > 0.9


def test_pixel_reacher_without_bar():
    env = PixelReacherEnv(occluder_width=0, angular_speed=(0.0, 0.0))
    obs, _ = env.reset(seed=0)
    start = env.target_position()
    for _ in range(20):
        obs, _, _, _, info = env.step(env.action_space.sample())
        assert info["target_visible"] and _red_near(obs, env)
    assert np.allclose(env.target_position(), start)
    env.close()


def test_pixel_memory_reacher_shows_target_then_hides_it():
    env = gym.make("tmem/PixelMemoryReacher-v0")
    base = env.unwrapped
    obs, _ = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    assert obs["pixels"].shape == (64, 64, 3) and obs["proprio"].shape == (7,)
    target = base.target_position()
    for t in range(60):
        qpos, qvel = base.data.qpos[:2], base.data.qvel[:2]
        expected = np.concatenate([np.cos(qpos), np.sin(qpos), qvel, [float(t >= 15)]])
        assert np.allclose(obs["proprio"], expected, atol=1e-5)
        assert _red_near(obs["pixels"], base) == (t < 5)
        obs, _, terminated, truncated, info = env.step(np.ones(2))
        assert info["target_visible"] == (t + 1 < 5) and not terminated
        assert np.allclose(base.target_position(), target)
    assert truncated and info["final_distance"] == info["distance"]


def test_pixel_memory_reacher_holds_the_arm():
    """During the hold, every action gives the same frames and readings; after it, actions move the arm."""
    runs = []
    for action in (np.ones(2), -np.ones(2)):
        env = PixelMemoryReacherEnv()
        env.reset(seed=1)
        runs.append([env.step(action)[0] for _ in range(16)])
        env.close()
    for t in range(15):
        assert np.array_equal(runs[0][t]["pixels"], runs[1][t]["pixels"])
        assert np.array_equal(runs[0][t]["proprio"], runs[1][t]["proprio"])
    assert not np.allclose(runs[0][15]["proprio"][4:6], runs[1][15]["proprio"][4:6])


@pytest.mark.parametrize("task_id", sorted(ORACLE_KP))
def test_frame_strip(task_id):
    env = gym.make(task_id)
    strip = frame_strip(env, scripted.PixelReacherPolicy(env, kp=ORACLE_KP[task_id]), frames=3, every=2, seed=1)
    assert strip.shape == (128, 3 * 128 + 2 * 2, 3) and strip.dtype == np.uint8
    first, _ = env.reset(seed=1)
    first = first["pixels"] if isinstance(first, dict) else first
    assert np.array_equal(strip[::2, :128:2], first)
    assert np.all(strip[:, 128:130] == 255)
