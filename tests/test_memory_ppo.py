"""MemoryPPO: chunked state storage, replay invariants, action spaces, wrappers, errors, predict and save/load."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import SubprocVecEnv, VecNormalize

from tmem_agents import MemoryPPO
from tmem_agents.algos import NonFiniteError, RecurrentRolloutBuffer
from tmem_agents.evaluation import evaluate
from tmem_agents.policies import EXTRACTORS
from tmem_agents.policies.recurrent_policy import RecurrentActorCriticPolicy, reconstruction_target

SMALL = {
    "tensor_memory": {"features_dim": 16, "token_dim": 16, "memory": {"grid": (3, 3, 3), "channels": 4}},
    "lstm": {"features_dim": 16},
    "gru": {"features_dim": 16},
    "frame_stack": {"features_dim": 16, "n_frames": 3},
    "mlp": {"features_dim": 16},
}


def _model(env, name="tensor_memory", policy_kwargs=None, **kwargs):
    policy_kwargs = {
        "features_extractor_class": EXTRACTORS[name],
        "features_extractor_kwargs": SMALL[name],
        "net_arch": [16],
        **(policy_kwargs or {}),
    }
    defaults = {"n_steps": 24, "batch_size": 32, "n_epochs": 1, "bptt_len": 8, "seed": 0}
    policy = "MultiInputPolicy" if isinstance(env.observation_space, spaces.Dict) else "MlpPolicy"
    return MemoryPPO(policy, env, policy_kwargs=policy_kwargs, **{**defaults, **kwargs})


class ToyEnv(gym.Env):
    """Episodes of random length 3..12; the observation is noise; the action space is configurable."""

    def __init__(self, action_space: spaces.Space | None = None, nan_at: int | None = None):
        self.observation_space = spaces.Box(-1, 1, (3,), np.float32)
        self.action_space = action_space or spaces.Discrete(2)
        self.nan_at = nan_at
        self.t = 0
        self.total = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.length = 0, int(self.np_random.integers(3, 13))
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        self.total += 1
        obs = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        if self.nan_at is not None and self.total == self.nan_at:
            obs[1] = np.nan
        return obs, float(self.t % 2), self.t >= self.length, False, {}


@pytest.mark.parametrize("name", list(EXTRACTORS))
def test_first_minibatch_replay_reproduces_rollout_log_probs(name):
    env = make_vec_env(ToyEnv, n_envs=3, seed=1)
    model = _model(env, name, n_steps=20, batch_size=24)
    model.learn(60)
    starts = model.rollout_buffer.data["episode_starts"]
    chunk_pos = torch.arange(20) % 8
    assert starts[chunk_pos != 0].sum() > 0, "the rollout must hold episodes that end mid-chunk"
    assert model.initial_ratio_error is not None and model.initial_ratio_error < 1e-5


def _replay_errors(model: MemoryPPO) -> tuple[float, float]:
    """The largest ``|log_prob - old|`` and ``|value - old|`` over every chunk of the rollout, replayed as
    training replays it."""
    model.policy.set_training_mode(True)
    worst_log_prob = worst_value = 0.0
    with torch.no_grad():
        for batch in model.rollout_buffer.sequences(2):
            values, log_prob, *_ = model.policy.evaluate_sequences(
                batch.observations, batch.actions, batch.state, batch.episode_starts
            )
            valid = batch.mask > 0
            worst_log_prob = max(worst_log_prob, float((log_prob - batch.old_log_prob).abs()[valid].max()))
            worst_value = max(worst_value, float((values - batch.old_values).abs()[valid].max()))
    return worst_log_prob, worst_value


@pytest.mark.parametrize("name", ["tensor_memory", "lstm"])
@pytest.mark.parametrize("share", [True, False])
def test_replay_of_every_chunk_reproduces_rollout_log_probs_and_values(name, share):
    env = make_vec_env(ToyEnv, n_envs=3, seed=1)
    model = _model(env, name, n_steps=20, policy_kwargs={"share_features_extractor": share})
    _, callback = model._setup_learn(60, None)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
    log_prob_error, value_error = _replay_errors(model)
    assert log_prob_error < 1e-5 and value_error < 1e-5
    starts = model.rollout_buffer.data["episode_starts"]
    mid_chunk = (torch.arange(20) % 8 != 0).unsqueeze(1) & (starts > 0)
    assert mid_chunk.any(), "the rollout must hold episodes that start mid-chunk"
    starts[mid_chunk] = 0.0  # a replay blind to those starts carries the state across them
    assert _replay_errors(model)[1] > 1e-3


def test_returns_and_advantages_match_sb3s_buffer():
    """GAE(lambda) over a rollout with episodes ending inside it and one ending at its last step."""
    n_steps, n_envs, obs_space, action_space = 12, 3, spaces.Box(-1, 1, (2,)), spaces.Discrete(2)
    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=(n_steps, n_envs)), rng.normal(size=(n_steps, n_envs))
    starts = rng.random((n_steps, n_envs)) < 0.2
    last_values, dones = rng.normal(size=n_envs), np.array([True, False, False])
    ours = RecurrentRolloutBuffer(n_steps, n_envs, 4, obs_space, action_space, torch.device("cpu"), 0.9, 0.8)
    for key, value in (("rewards", rewards), ("values", values), ("episode_starts", starts)):
        ours.data[key] = torch.as_tensor(value, dtype=torch.float32)
    ours.compute_returns_and_advantage(torch.as_tensor(last_values, dtype=torch.float32), dones)
    sb3 = RolloutBuffer(n_steps, obs_space, action_space, "cpu", gae_lambda=0.8, gamma=0.9, n_envs=n_envs)
    sb3.rewards, sb3.values, sb3.episode_starts = rewards, values, starts.astype(np.float32)
    sb3.compute_returns_and_advantage(torch.as_tensor(last_values), dones)
    torch.testing.assert_close(ours.data["advantages"], torch.as_tensor(sb3.advantages, dtype=torch.float32))
    torch.testing.assert_close(ours.data["returns"], torch.as_tensor(sb3.returns, dtype=torch.float32))


def test_same_seed_trains_the_same_tensor_memory():
    def trained() -> dict[str, torch.Tensor]:
        model = _model(make_vec_env(ToyEnv, n_envs=2, seed=0), "tensor_memory", n_steps=16)
        model.learn(64)
        return model.policy.state_dict()

    first, second = trained(), trained()
    assert all(torch.equal(value, second[key]) for key, value in first.items())


def test_buffer_stores_one_state_per_chunk():
    env = make_vec_env(ToyEnv, n_envs=3, seed=0)
    model = _model(env, "tensor_memory", n_steps=20, bptt_len=8, batch_size=24)
    model.learn(60)
    buffer = model.rollout_buffer
    assert buffer.states.batch_size == torch.Size([math.ceil(20 / 8), 3])
    per_env = model.policy.initial_state(1)
    per_state = sum(t.numel() for t in per_env.values(include_nested=True, leaves_only=True))
    assert buffer.state_numel() == 3 * math.ceil(20 / 8) * per_state  # 3 chunks of 20 steps, not 20 states


@pytest.mark.parametrize(
    "action_space",
    [spaces.Discrete(3), spaces.MultiDiscrete([2, 3]), spaces.MultiBinary(3), spaces.Box(-1, 1, (2,), np.float32)],
)
def test_action_spaces(action_space):
    env = make_vec_env(ToyEnv, n_envs=2, seed=0, env_kwargs={"action_space": action_space})
    model = _model(env, n_steps=16)
    model.learn(32)
    assert model.initial_ratio_error < 1e-5
    actions, state = model.predict(env.reset())
    assert actions.shape == (2, *action_space.shape)
    assert all(action_space.contains(np.asarray(a, dtype=action_space.dtype)) for a in actions)


@pytest.mark.parametrize("shared", [True, False])
def test_policy_keeps_sb3_init_but_gives_the_memory_its_write_heads_back(shared):
    env = make_vec_env(ToyEnv, n_envs=2, seed=0)
    kwargs = {**SMALL["tensor_memory"], "memory": {**SMALL["tensor_memory"]["memory"], "local_update": True}}
    policy = _model(env, policy_kwargs={"share_features_extractor": shared, "features_extractor_kwargs": kwargs}).policy
    for extractor in policy._extractors().values():
        memory = extractor.memory
        assert memory.spread.weight.abs().max() == 0 and memory.strength.weight.abs().max() == 0
        assert max(memory.coord.weight.abs().max(), memory.content.weight.abs().max()) <= 1 / 16**0.5
        gram = memory.write_proj.weight @ memory.write_proj.weight.T  # SB3's orthogonal rows, gain sqrt(2)
        assert torch.allclose(gram, 2.0 * torch.eye(gram.shape[0]), atol=1e-4)


def test_vecnormalize_callbacks_logger_and_not_shared_extractors(tmp_path):
    env = VecNormalize(make_vec_env(ToyEnv, n_envs=2, seed=0))

    class Count(BaseCallback):
        calls = 0

        def _on_step(self):
            Count.calls += 1
            return True

    model = _model(env, "lstm", tensorboard_log=str(tmp_path), policy_kwargs={"share_features_extractor": False})
    model.learn(48, callback=Count())
    assert Count.calls == 24
    assert set(model.policy.initial_state(2).keys()) == {"pi", "vf"}
    assert model.initial_ratio_error < 1e-5
    assert any(tmp_path.iterdir())


def test_subprocess_envs():
    env = make_vec_env(ToyEnv, n_envs=2, seed=0, vec_env_cls=SubprocVecEnv)
    try:
        model = _model(env, "gru", n_steps=16)
        model.learn(32)
        assert model.num_timesteps == 32
    finally:
        env.close()


def test_non_finite_observation_names_env_and_step_and_keeps_saved_files(tmp_path):
    env = make_vec_env(ToyEnv, n_envs=2, seed=0, env_kwargs={"nan_at": 5})
    model = _model(env, "mlp")
    saved = tmp_path / "model.zip"
    model.save(saved)
    before = saved.read_bytes()
    with pytest.raises(NonFiniteError, match=r"observation from env 0 at timestep 10"):
        model.learn(48)
    assert saved.read_bytes() == before
    with pytest.raises(ValueError, match="NaN"):  # the memory itself still refuses NaN tokens
        _model(make_vec_env(ToyEnv, n_envs=2, seed=0, env_kwargs={"nan_at": 5}), check_finite=False).learn(48)


def test_evaluation_names_the_env_and_step_of_a_non_finite_observation():
    model = _model(make_vec_env(ToyEnv, n_envs=2, seed=0), "gru")
    with pytest.raises(NonFiniteError, match=r"observation from env 0 at timestep 5"):
        evaluate(model, make_vec_env(ToyEnv, n_envs=2, seed=0, env_kwargs={"nan_at": 5}), 20)


def test_predict_evaluate_policy_and_save_load_round_trip(tmp_path):
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = _model(env, n_steps=16)
    model.learn(32)
    obs = env.reset()
    actions, state = model.predict(obs, deterministic=True)
    assert state["pi", "h"].shape[0] == 2
    actions2, state2 = model.predict(obs, state=state, episode_start=np.zeros(2, bool), deterministic=True)
    assert not torch.equal(state2["pi", "h"], state["pi", "h"])
    returns, lengths = evaluate_policy(model, env, n_eval_episodes=2, return_episode_rewards=True)
    assert len(returns) == 2 and returns == [float(n) for n in lengths]  # CartPole pays 1 per step
    model.save(tmp_path / "m.zip")
    loaded = MemoryPPO.load(tmp_path / "m.zip", env=env)
    fresh = _model(env, n_steps=16).policy.state_dict()
    weights = model.policy.state_dict()
    assert all(torch.equal(value, loaded.policy.state_dict()[key]) for key, value in weights.items())
    assert any(not torch.equal(value, fresh[key]) for key, value in weights.items())  # the weights were trained
    sequence = [env.reset() for _ in range(1)] + [np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)] * 5
    state_a = state_b = None
    for ob in sequence:
        a, state_a = model.predict(ob, state=state_a, deterministic=True)
        b, state_b = loaded.predict(ob, state=state_b, deterministic=True)
        assert np.array_equal(a, b)
    assert loaded._last_state is None
    single, single_state = loaded.predict(obs[0], deterministic=True)
    assert np.shape(single) == () and single_state.batch_size == torch.Size([1])


def test_evaluation_with_memory_ablation_resets_state_every_step():
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = _model(env, "lstm", n_steps=16)
    seen = []
    original = model.policy.predict

    def spy(obs, state=None, episode_start=None, deterministic=False):
        seen.append(np.asarray(episode_start).copy())
        return original(obs, state, episode_start, deterministic)

    model.policy.predict = spy
    result = evaluate(model, env, n_episodes=2, memory_ablation=True)
    assert len(result.returns) == 2 and all(s.all() for s in seen)
    seen.clear()
    evaluate(model, env, n_episodes=2)
    assert not all(s.all() for s in seen)


def test_bad_arguments_raise_clear_errors():
    env = make_vec_env(ToyEnv, n_envs=1)
    with pytest.raises(ValueError, match="bptt_len"):
        _model(env, bptt_len=0)
    with pytest.raises(ValueError, match="batch_size"):
        _model(env, batch_size=4, bptt_len=8)
    with pytest.raises(ValueError, match=r"bptt_len \(32\) must be <= n_steps \(24\)"):
        _model(env, bptt_len=32)
    with pytest.raises(TypeError, match="RecurrentFeaturesExtractor"):
        MemoryPPO("MlpPolicy", env, policy_kwargs={"features_extractor_class": torch.nn.Linear})


class TruncatedEnv(gym.Env):
    """Constant observation, reward 1 each step, always truncated (never terminated) after 4 steps."""

    observation_space = spaces.Box(-1, 1, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(2, np.float32), 1.0, False, self.t >= 4, {}


def test_time_limit_truncation_is_bootstrapped_with_the_critic():
    env = make_vec_env(TruncatedEnv, n_envs=2, seed=0)
    model = _model(env, "lstm", n_steps=8, batch_size=16, gamma=0.9)
    _, callback = model._setup_learn(8, None)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
    obs, state = torch.zeros(2, 2), model.policy.initial_state(2)
    with torch.no_grad():  # the state an episode reaches after its four steps, and its value there
        for step in range(4):
            *_, state = model.policy(obs, state, torch.full((2,), float(step == 0)))
        bootstrap = model.policy.predict_values(obs, state, torch.zeros(2)).flatten()
    rewards = model.rollout_buffer.data["rewards"]
    truncated = torch.tensor([3, 7])  # the last step of each 4-step episode
    torch.testing.assert_close(rewards[truncated], (1.0 + 0.9 * bootstrap).expand(2, 2))
    assert torch.all(rewards[torch.tensor([0, 1, 2, 4, 5, 6])] == 1.0)


def test_a_rollout_stopped_by_a_callback_keeps_the_state_of_its_last_observation():
    class StopAtThirdStep(BaseCallback):
        def _on_step(self):
            return self.n_calls < 3

    env = make_vec_env(TruncatedEnv, n_envs=2, seed=0)
    model = _model(env, "lstm", n_steps=8, batch_size=16)
    model.learn(16, callback=StopAtThirdStep())
    obs, state = torch.zeros(2, 2), model.policy.initial_state(2)
    with torch.no_grad():  # the two steps that finished before the stop, from the episodes' start
        for step in range(2):
            *_, state = model.policy(obs, state, torch.full((2,), float(step == 0)))
    assert not model._last_episode_starts.any()
    for key in ("h", "c"):
        torch.testing.assert_close(model._last_state["pi", key], state["pi", key])


def test_predict_rejects_a_foreign_state_and_bad_episode_start():
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = _model(env, "lstm", n_steps=16)
    obs = env.reset()
    _, state = model.predict(obs)
    with pytest.raises(ValueError, match="state is for"):
        model.predict(obs[:1], state=state)
    with pytest.raises(TypeError, match="TensorDict returned by the previous predict"):
        model.predict(obs, state=(np.zeros((1, 2, 16)), np.zeros((1, 2, 16))))
    with pytest.raises(ValueError, match="episode_start"):
        model.predict(obs, state=state, episode_start=np.zeros(3, bool))


def test_sb3s_stateless_policy_calls_are_refused_naming_the_stateful_ones():
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    policy = _model(env, "lstm", n_steps=16).policy
    obs = torch.zeros(2, 4)
    with pytest.raises(NotImplementedError, match="evaluate_actions would act from the initial state.*evaluate_seq"):
        policy.evaluate_actions(obs, torch.zeros(2))
    with pytest.raises(NotImplementedError, match="get_distribution would act from the initial state"):
        policy.get_distribution(obs)
    with pytest.raises(NotImplementedError, match="_predict would act from the initial state.*predict\\(observation"):
        policy._predict(obs)


def test_default_optimizer_is_sb3_adam_with_the_fused_update_and_kwargs_override_it():
    env = make_vec_env(ToyEnv, n_envs=2, seed=0)
    group = _model(env).policy.optimizer.param_groups[0]
    assert group["eps"] == 1e-5 and group["fused"]
    custom = _model(env, policy_kwargs={"optimizer_kwargs": {"eps": 1e-8}}).policy.optimizer.param_groups[0]
    assert custom["eps"] == 1e-8 and not custom["fused"]


def _reconstruction_reference(policy, obs, features, starts, mask):
    """The reconstruction loss step by step: for each lag, the mean error over the pairs it scores."""
    lags = policy.reconstruction_lags
    decoded = policy.reconstruction_head(features).view(*starts.shape, len(lags), -1)
    losses = []
    for k, lag in enumerate(lags):
        errors = []
        for t in range(lag, starts.shape[0]):
            for b in range(starts.shape[1]):
                same_episode = not starts[t - lag + 1 : t + 1, b].any()
                if same_episode and mask[t, b] and mask[t - lag, b]:
                    errors.append((decoded[t, b, k] - obs[t - lag, b]).pow(2).mean())
        if errors:
            losses.append(torch.stack(errors).mean())
    return torch.stack(losses).mean()


def test_reconstruction_loss_scores_earlier_observations_of_the_same_episode_only():
    env = make_vec_env(ToyEnv, n_envs=2, seed=0)
    model = _model(env, "gru", bptt_len=16, reconstruction_coef=1.0, reconstruction_lags=(1, 3, 9))
    policy = model.policy
    generator = torch.Generator().manual_seed(0)
    obs = torch.rand(10, 4, 3, generator=generator) * 2 - 1
    features = torch.randn(10, 4, 16, generator=generator)
    starts = torch.zeros(10, 4)
    starts[0] = 1
    starts[4, 0] = starts[2, 1] = starts[7, 1] = 1
    mask = torch.ones(10, 4)
    mask[8:, 3] = 0
    starts[8:, 3] = 1  # padding, as the buffer pads
    loss = policy.reconstruction_loss(obs, features, starts, mask)
    torch.testing.assert_close(loss, _reconstruction_reference(policy, obs, features, starts, mask))
    # env 1's first episode (steps 0-1) ends before any later step of it can look back at step 1
    obs_changed = obs.clone()
    obs_changed[1, 1] = 5.0
    torch.testing.assert_close(policy.reconstruction_loss(obs_changed, features, starts, mask), loss)
    obs_changed[0, 1] = 5.0  # step 1 looks back 1 step at step 0
    assert policy.reconstruction_loss(obs_changed, features, starts, mask) > loss
    features_changed = features.clone()
    features_changed[8:, 3] = 1e6  # padded steps are never scored
    torch.testing.assert_close(policy.reconstruction_loss(obs, features_changed, starts, mask), loss)
    # a lag that scores no step leaves the others' mean as it is
    short = starts.clone()
    short[::2] = 1
    alone = policy.reconstruction_loss(obs, features, short, mask)
    torch.testing.assert_close(alone, _reconstruction_reference(policy, obs, features, short, mask))
    decoded = policy.reconstruction_head(features).view(10, 4, 3, 3)
    error = (decoded[1:, :, 0] - obs[:-1]).pow(2).mean(-1)
    pairs = (short[1:] == 0) & (mask[1:] > 0)
    torch.testing.assert_close(alone, error[pairs].mean())


def test_standardized_reconstruction_scores_each_dimension_in_its_own_units():
    env = make_vec_env(ToyEnv, n_envs=2, seed=0)
    policy = _model(env, "gru", bptt_len=16, reconstruction_coef=1.0, reconstruction_lags=(1, 3)).policy
    generator = torch.Generator().manual_seed(1)
    obs = torch.rand(10, 16, 3, generator=generator) * torch.tensor([1.0, 100.0, 0.01])  # three scales
    obs[2, 1, 2] = 1.0  # a rare outlier, clipped to 10 standard deviations
    features = torch.randn(10, 16, 16, generator=generator)
    starts = torch.zeros(10, 16)
    starts[0] = 1
    mask = torch.ones(10, 16)
    mask[7:, 2] = 0
    starts[7:, 2] = 1
    rows = obs[mask > 0]
    standardized = ((obs - rows.mean(0)) / rows.var(0, unbiased=False).add(1e-8).sqrt()).clamp(-10, 10)
    assert standardized[2, 1, 2] == 10
    loss = policy.reconstruction_loss(obs, features, starts, mask, standardize=True)
    torch.testing.assert_close(loss, _reconstruction_reference(policy, standardized, features, starts, mask))
    # rescaling a dimension leaves the standardized loss as it is, and changes the raw one
    rescaled = obs * torch.tensor([1.0, 1.0, 1e4])
    torch.testing.assert_close(policy.reconstruction_loss(rescaled, features, starts, mask, standardize=True), loss)
    raw = policy.reconstruction_loss(obs, features, starts, mask)
    assert policy.reconstruction_loss(rescaled, features, starts, mask) > 10 * raw


def test_reconstruction_head_decodes_dict_and_discrete_observations():
    space = spaces.Dict(
        {"pos": spaces.Box(-1, 1, (2,)), "cue": spaces.Discrete(4), "bits": spaces.MultiDiscrete([2, 3])}
    )
    policy = RecurrentActorCriticPolicy(
        space, spaces.Discrete(2), lambda _: 1e-3, features_extractor_class=EXTRACTORS["mlp"], reconstruction_lags=(1,)
    )
    assert policy.reconstruction_head.out_features == 2 + 4 + 5
    obs = {
        "pos": torch.tensor([[[0.5, -0.5]], [[0.0, 0.0]]]),
        "cue": torch.tensor([[2.0], [0.0]]),
        "bits": torch.tensor([[[1.0, 2.0]], [[0.0, 0.0]]]),
    }
    features = torch.zeros(2, 1, policy.features_dim)
    with torch.no_grad():
        policy.reconstruction_head.weight.zero_()
        policy.reconstruction_head.bias.copy_(torch.tensor([0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0.5]))
    # keys in sorted order: bits (one-hot 0,1 | 0,0,1), cue (one-hot 0,0,1,0), pos; step 1 decodes step 0
    target = torch.tensor([0, 1, 0, 0, 1, 0, 0, 1, 0, 0.5, -0.5])
    expected = (policy.reconstruction_head.bias - target).pow(2).mean()
    loss = policy.reconstruction_loss(obs, features, torch.tensor([[1.0], [0.0]]), torch.ones(2, 1))
    torch.testing.assert_close(loss, expected)


def test_reconstruction_decodes_images_average_pooled():
    space = spaces.Dict({"pixels": spaces.Box(0, 255, (3, 64, 96), np.uint8), "proprio": spaces.Box(-1, 1, (2,))})
    policy = RecurrentActorCriticPolicy(
        space, spaces.Discrete(2), lambda _: 1e-3, features_extractor_class=EXTRACTORS["mlp"], reconstruction_lags=(1,)
    )
    assert policy.reconstruction_head.out_features == 3 * 16 * 16 + 2
    frames = torch.zeros(2, 1, 3, 64, 96, dtype=torch.uint8)
    frames[0, 0, :, 5, 7] = 255  # one white pixel in row 5, column 7 of step 0
    obs = {"pixels": frames, "proprio": torch.tensor([[[0.5, -0.5]], [[0.0, 0.0]]])}
    features = torch.zeros(2, 1, policy.features_dim)
    with torch.no_grad():
        policy.reconstruction_head.weight.zero_()
        policy.reconstruction_head.bias.zero_()
    # 64 x 96 pooled to 16 x 16: cells of 4 x 6 pixels; the white pixel lies in cell (1, 1) of each channel
    target = torch.zeros(3, 16, 16)
    target[:, 1, 1] = 1 / 24
    expected = torch.cat([target.flatten(), torch.tensor([0.5, -0.5])]).pow(2).mean()
    loss = policy.reconstruction_loss(obs, features, torch.tensor([[1.0], [0.0]]), torch.ones(2, 1))
    torch.testing.assert_close(loss, expected)
    # channels last: the same cells, channels first in the target
    last = spaces.Box(0, 255, (64, 96, 3), np.uint8)
    scaled = frames[0].float() / 255
    torch.testing.assert_close(reconstruction_target(last, scaled.movedim(1, -1)), target.flatten()[None])


def _logged_while_learning(model: MemoryPPO, steps: int) -> list[dict]:
    """``model.learn(steps)``; the logger's values at the end of each rollout."""
    written = []

    class Spy(BaseCallback):
        def _on_rollout_end(self) -> None:
            written.append(dict(self.model.logger.name_to_value))

        def _on_step(self) -> bool:
            return True

    model.learn(steps, callback=Spy())
    return written


def test_reconstruction_loss_trains_the_extractor_and_is_logged(tmp_path):
    env = make_vec_env(ToyEnv, n_envs=2, seed=0)
    model = _model(env, "tensor_memory", n_steps=16, reconstruction_coef=1.0, reconstruction_lags=(1, 2))
    head = model.policy.reconstruction_head.weight.detach().clone()
    written = _logged_while_learning(model, 64)
    assert not torch.equal(head, model.policy.reconstruction_head.weight)
    assert any("train/reconstruction_loss" in values for values in written)
    model.policy.zero_grad(set_to_none=True)
    batch = next(model.rollout_buffer.sequences(2))
    out = model.policy.evaluate_sequences(batch.observations, batch.actions, batch.state, batch.episode_starts)
    model.policy.reconstruction_loss(batch.observations, out.features, batch.episode_starts, batch.mask).backward()
    grads = [p.grad for p in model.policy.features_extractor.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    model.save(tmp_path / "m.zip")
    loaded = MemoryPPO.load(tmp_path / "m.zip", env=env)
    assert loaded.reconstruction_coef == 1.0 and loaded.policy.reconstruction_lags == (1, 2)
    torch.testing.assert_close(loaded.policy.reconstruction_head.weight, model.policy.reconstruction_head.weight)


def test_reconstruction_off_builds_no_head_and_bad_lags_raise():
    env = make_vec_env(ToyEnv, n_envs=1)
    policy = _model(env, "mlp").policy
    assert policy.reconstruction_head is None
    with pytest.raises(RuntimeError, match="reconstruction_lags"):
        policy.reconstruction_loss(torch.zeros(2, 1, 3), torch.zeros(2, 1, 16), torch.ones(2, 1), torch.ones(2, 1))
    with pytest.raises(ValueError, match="bptt_len"):
        _model(env, "mlp", reconstruction_coef=1.0, reconstruction_lags=(8,))
    with pytest.raises(ValueError, match="reconstruction_coef"):
        _model(env, "mlp", reconstruction_coef=-1.0)
    with pytest.raises(ValueError, match="not in policy_kwargs"):
        _model(env, "mlp", policy_kwargs={"reconstruction_lags": (1,)})
    with pytest.raises(ValueError, match="distinct ints"):
        _model(env, "mlp", reconstruction_coef=1.0, reconstruction_lags=(2, 2))
    with pytest.raises(ValueError, match="distinct ints"):
        _model(env, "mlp", reconstruction_coef=1.0, reconstruction_lags=(1.5,))
    assert _model(env, "mlp", reconstruction_coef=1.0, reconstruction_lags=np.array([1, 3])).reconstruction_lags == (
        1,
        3,
    )


class DotEnv(gym.Env):
    """Dict observations: black 36x36 RGB frames (channels first) with one white pixel at a random place, and a
    2-vector."""

    def __init__(self):
        self.observation_space = spaces.Dict(
            {"pixels": spaces.Box(0, 255, (3, 36, 36), np.uint8), "proprio": spaces.Box(-1, 1, (2,), np.float32)}
        )
        self.action_space = spaces.Discrete(2)
        self.t = 0

    def _obs(self):
        frame = np.zeros((3, 36, 36), dtype=np.uint8)
        frame[:, self.np_random.integers(0, 36), self.np_random.integers(0, 36)] = 255
        return {"pixels": frame, "proprio": self.np_random.uniform(-1, 1, 2).astype(np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 0.0, self.t >= 6, False, {}


IMAGE_SMALL = {**SMALL, "tensor_memory": {**SMALL["tensor_memory"], "image_tokens": 2}}


@pytest.mark.parametrize("name", ["tensor_memory", "lstm", "mlp"])
def test_image_reconstruction_decodes_each_frame_from_its_encoders_output(name):
    space = DotEnv().observation_space
    policy = RecurrentActorCriticPolicy(
        space,
        spaces.Discrete(2),
        lambda _: 1e-3,
        features_extractor_class=EXTRACTORS[name],
        features_extractor_kwargs=IMAGE_SMALL[name],
        image_reconstruction=True,
    )
    (key, encoder), *others = policy.features_extractor.image_encoders().items()
    assert key == "pixels" and not others
    head = policy.image_reconstruction_head["pixels"]
    assert (head.in_features, head.out_features) == (encoder.features_dim, 3 * 16 * 16)
    env = DotEnv()
    steps = [env.reset(seed=0)[0], *(env.step(0)[0] for _ in range(3))]
    obs = {k: torch.as_tensor(np.stack([o[k] for o in steps]))[:, None] for k in ("pixels", "proprio")}  # (4, 1, ...)
    starts = torch.tensor([[1.0], [0.0], [0.0], [0.0]])
    out = policy.evaluate_sequences(obs, torch.zeros(4, 1), policy.initial_state(1), starts)
    frames = obs["pixels"].flatten(0, 1).float() / 255
    torch.testing.assert_close(out.encoded_images["pixels"], encoder(frames).view(4, 1, -1))
    assert not encoder._forward_hooks  # the capture ends with the call
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    mask = torch.tensor([[1.0], [1.0], [1.0], [0.0]])  # the last step is padding: not scored
    pooled = torch.nn.functional.adaptive_avg_pool2d(frames, (16, 16)).flatten(1)
    expected = pooled[:3].pow(2).mean()
    torch.testing.assert_close(policy.image_reconstruction_loss(obs, out.encoded_images, mask), expected)
    policy.zero_grad(set_to_none=True)
    with torch.no_grad():
        head.weight.normal_()
    policy.image_reconstruction_loss(obs, out.encoded_images, mask, standardize=True).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_image_reconstruction_trains_the_encoder_and_is_logged_and_saved(tmp_path):
    env = make_vec_env(DotEnv, n_envs=2, seed=0)
    model = _model(
        env,
        "tensor_memory",
        policy_kwargs={"features_extractor_kwargs": IMAGE_SMALL["tensor_memory"]},
        n_steps=16,
        image_reconstruction_coef=1.0,
        reconstruction_standardize=True,
    )
    encoder = model.policy.features_extractor.image_encoders()["pixels"]
    before = [p.detach().clone() for p in (*encoder.parameters(), *model.policy.image_reconstruction_head.parameters())]
    written = _logged_while_learning(model, 64)
    after = [*encoder.parameters(), *model.policy.image_reconstruction_head.parameters()]
    assert all(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    assert any("train/image_reconstruction_loss" in values for values in written)
    assert not any("train/reconstruction_loss" in values for values in written)
    model.save(tmp_path / "m.zip")
    loaded = MemoryPPO.load(tmp_path / "m.zip", env=env)
    assert loaded.image_reconstruction_coef == 1.0 and loaded.policy.image_reconstruction
    head, saved = loaded.policy.image_reconstruction_head["pixels"], model.policy.image_reconstruction_head["pixels"]
    torch.testing.assert_close(head.weight, saved.weight)


def test_image_reconstruction_off_builds_no_head_and_bad_settings_raise():
    env = make_vec_env(ToyEnv, n_envs=1)
    policy = _model(env, "mlp").policy
    assert policy.image_reconstruction_head is None
    empty = policy.evaluate_sequences(
        torch.zeros(2, 1, 3), torch.zeros(2, 1), policy.initial_state(1), torch.ones(2, 1)
    )
    assert empty.encoded_images == {}
    with pytest.raises(RuntimeError, match="without image_reconstruction"):
        policy.image_reconstruction_loss(torch.zeros(2, 1, 3), {}, torch.ones(2, 1))
    with pytest.raises(ValueError, match="no image encoder"):
        _model(env, "mlp", image_reconstruction_coef=1.0)
    patches = {**IMAGE_SMALL["tensor_memory"], "image_stem": "patches"}
    with pytest.raises(ValueError, match="image_stem 'nature_cnn'"):
        _model(
            make_vec_env(DotEnv, n_envs=1),
            policy_kwargs={"features_extractor_kwargs": patches},
            image_reconstruction_coef=1.0,
        )
    with pytest.raises(ValueError, match="image_reconstruction_coef must be >= 0"):
        _model(env, "mlp", image_reconstruction_coef=-1.0)
    with pytest.raises(ValueError, match="not in policy_kwargs"):
        _model(env, "mlp", policy_kwargs={"image_reconstruction": True})
