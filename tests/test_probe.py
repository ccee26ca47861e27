"""The supervised recall probes of ``scripts/probe_recall.py``: episodes laid out as the envs', and a short run."""

import argparse

import gymnasium as gym
import numpy as np
import pytest
import torch
from script_loader import load_script
from stable_baselines3.common.preprocessing import preprocess_obs

from tmem_agents.algos import MemoryPPO
from tmem_agents.config_schema import ConfigError, compose
from tmem_agents.env_factory import make_envs, normalize
from tmem_agents.envs.spatial_recall import SpatialRecallEnv
from tmem_agents.policies import TensorMemoryExtractor
from tmem_agents.train import build_model
from tmem_agents.train import main as train_main

probe_recall = load_script("probe_recall")


def _args(**overrides) -> argparse.Namespace:
    defaults = {"task": "cue", "model": "lstm", "kwargs": [], "memory": [], "normalize": False, "n_cues": 2,
                "delay": 4, "batch": 16, "lr": 1e-2, "iterations": 30, "every": 10, "ortho_init": False,
                "frozen": False, "reinforce": None, "query": 14, "every_step": False}  # fmt: skip
    return argparse.Namespace(**{**defaults, **overrides})


def test_spatial_episodes_match_the_env_layout():
    env = SpatialRecallEnv(n_objects=3, show_steps=3, delay=10)
    obs, _ = env.reset(seed=0)
    episode = [obs]
    for _ in range(13):
        obs, *_ = env.step(np.zeros(2))
        episode.append(obs)
    probe_obs, target = probe_recall.spatial_episodes(10, 4, torch.Generator().manual_seed(0))
    assert probe_obs.shape == (len(episode), 4, env.observation_space.shape[0]) and target.shape == (4, 2)
    for t, env_obs in enumerate(episode):
        # per block (positions, query one-hot, flags): how many entries are set
        blocks = [slice(0, 6), slice(6, 9), slice(9, 11)]
        env_counts = [int((env_obs[b] != 0).sum()) for b in blocks]
        for row in probe_obs[t]:
            assert [int((row[b] != 0).sum()) for b in blocks] == env_counts, f"step {t} differs from the env's"
    positions = probe_obs[0, :, :6].view(4, 3, 2)
    assert torch.equal(target, positions[torch.arange(4), probe_obs[-1, :, 6:9].argmax(-1)])


def test_a_memory_learns_the_cue_probe_and_every_model_runs_both_probes():
    curve = probe_recall.train(probe_recall.Probe(_args()), seed=0)
    assert [i for i, _ in curve] == [10, 20, 30] and curve[-1][1] == 1.0
    memory = ["local_update=true", "read_norm=true", "grid=[2,2,2]", "channels=2"]
    for task in ("cue", "spatial"):
        args = _args(
            task=task, model="tensor_memory", memory=memory, iterations=2, every=1, normalize=task == "cue",
            ortho_init=task == "spatial",
        )  # fmt: skip
        assert len(probe_recall.train(probe_recall.Probe(args), seed=0)) == 2


def test_frozen_probe_trains_only_the_readout(monkeypatch):
    made = []
    extractor_class = probe_recall.EXTRACTORS["lstm"]
    monkeypatch.setitem(
        probe_recall.EXTRACTORS, "lstm", lambda *a, **k: made.append(extractor_class(*a, **k)) or made[-1]
    )
    args = _args(kwargs=["forget_bias=3"], frozen=True, ortho_init=True)
    probe = probe_recall.Probe(args)
    curve = probe_recall.train(probe, seed=0)
    torch.manual_seed(0)
    fresh = extractor_class(probe.space, features_dim=64, forget_bias=3)
    fresh.apply_sb3_initialisation()
    for trained, initial in zip(made[0].parameters(), fresh.parameters(), strict=True):
        assert torch.equal(trained, initial)
    assert curve[-1][1] == 1.0  # an LSTM with forget bias 3 carries a cue over 4 steps untrained


def test_pixel_probe_reads_the_held_steps_of_the_pixel_memory_reacher(monkeypatch):
    monkeypatch.setattr(probe_recall, "PIXEL_TRAIN", 12)
    monkeypatch.setattr(probe_recall, "PIXEL_SCORE", 4)
    for model, query in (("lstm", 14), ("tensor_memory", 4)):
        probe = probe_recall.Probe(_args(task="pixel", model=model, query=query, batch=4, iterations=2, every=2))
        obs, targets = probe.pool
        assert obs["pixels"].shape == (15, 16, 3, 64, 64) and obs["proprio"].shape == (15, 16, 7)
        assert targets.shape == (16, 2) and targets.norm(dim=1).min() >= 0.08
        scored, scored_targets = probe.score_episodes(torch.Generator())
        assert torch.equal(scored_targets, targets[12:]) and scored["pixels"].max() <= 1.0
        curve = probe_recall.train(probe, seed=0)
        assert len(curve) == 1 and curve[0][1] <= 1.0
        answers = targets[:4].expand(15, 4, 2).clone()
        answers[0] += 1.0  # wrong at the first held step only
        assert probe.loss(answers, targets[:4]) == 0
        probe.args.every_step = True
        assert torch.isclose(probe.loss(answers, targets[:4]), torch.tensor(2 / 15))
    with pytest.raises(SystemExit, match="--every-step needs --task pixel"):
        probe_recall.Probe(_args(every_step=True))


def test_reinforce_probe_trains_a_gaussian_policy_from_the_query_or_every_step():
    for credit in ("query", "every-step"):
        probe = probe_recall.Probe(_args(task="spatial", delay=2, reinforce=credit, iterations=3, every=3))
        curve = probe_recall.train(probe, seed=0)
        assert len(curve) == 1 and -2.0 < curve[0][1] <= 1.0
        assert probe.log_std.abs().sum() > 0  # the exploration noise is learned
    with pytest.raises(SystemExit, match="--task spatial"):
        probe_recall.Probe(_args(reinforce="query"))


start_sensitivity = load_script("start_sensitivity")


def test_start_sensitivity_tells_a_memory_that_carries_the_objects_from_one_that_does_not():
    obs = start_sensitivity.episodes(4)
    assert obs.shape == (14, 4, 11)
    lstm = ["model=lstm", "model.forget_bias=3.0"], ["model=lstm", "model.forget_bias=-10.0"]
    carrying, forgetting, stateless = (
        start_sensitivity.fresh_extractor(overrides, 0) for overrides in (*lstm, ["model=mlp"])
    )
    share = start_sensitivity.shown_share
    assert share(carrying, obs) > 0.1 > share(forgetting, obs) and share(stateless, obs) == 0.0
    readout_obs = start_sensitivity.episodes(256)
    assert start_sensitivity.readout_r2(carrying, readout_obs) > 0.9
    assert start_sensitivity.readout_r2(stateless, readout_obs) < 0.1
    cue_obs, cues = start_sensitivity.cue_episodes(16)
    assert cue_obs.shape == (34, 16, 5) and cues.tolist()[:5] == [0, 1, 2, 3, 0]
    kept = [
        start_sensitivity.cue_kept(
            start_sensitivity.fresh_extractor(overrides, 0, task="cue_recall_long"), cue_obs, cues
        )
        for overrides in (*lstm, ["model=mlp"])
    ]
    assert kept[0] > 0.5 > kept[1] and kept[2] == 0.0
    restored = start_sensitivity.fresh_extractor(["model=tensor_memory"], 0).memory
    redrawn = start_sensitivity.fresh_extractor(["model=tensor_memory"], 0, sb3_init=True).memory
    assert restored.spread.weight.abs().max() == 0 < redrawn.spread.weight.abs().max()


def test_start_sensitivity_measures_a_trained_spatial_recall_run(tmp_path):
    run_dir = tmp_path / "run"
    train_main(
        ["env=spatial_recall", "algo=ppo_recall", "model=tensor_memory", "model.token_dim=16", "total_timesteps=512",
         "final_eval_episodes=2", "eval_freq=0", "progress_bar=false", "log_formats=[csv]", f"hydra.run.dir={run_dir}"]
    )  # fmt: skip
    obs = start_sensitivity.episodes(64)
    named = start_sensitivity.named_positions(obs)
    assert torch.equal(named[0], obs[0, 0, :6].view(3, 2)[obs[-1, 0, 6:9].argmax()])
    measured = start_sensitivity.trained_readout(str(run_dir), obs)
    assert set(measured) == {"shown", "named", "distance"}
    assert measured["shown"] <= 1.0 and measured["named"] <= 1.0 and 0.0 <= measured["distance"] <= 2 * np.sqrt(2)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("env:\n  id: tmem/CueRecall-v0\n")
    with pytest.raises(SystemExit, match="not tmem/SpatialRecall-v0"):
        start_sensitivity.trained_readout(str(other), obs)


reacher_readout = load_script("reacher_readout")


def test_writes_are_the_write_heads_terms():
    space = gym.spaces.Box(-1.0, 1.0, (12,))
    extractor = TensorMemoryExtractor(space)
    extractor.restore_initialisation()  # spread and strength weights zero: every write at their biases' values
    obs = torch.randn(5, 3, 12)
    terms = reacher_readout.writes(extractor, obs)
    assert terms.shape == (5, 3, 1, 7)
    torch.testing.assert_close(terms[..., 0], torch.full((5, 3, 1), float(torch.sigmoid(torch.tensor(-2.0)))))
    torch.testing.assert_close(
        terms[..., 1], torch.full((5, 3, 1), float(torch.nn.functional.softplus(torch.tensor(1.0)) + 1e-4))
    )
    assert terms[..., 2:5].abs().max() <= 1 and terms[..., 2:5].std() > 0.01  # each write at its own place
    assert (terms[..., 5] <= terms[..., 0]).all() and (terms[..., 5] > 0.5 * terms[..., 0]).all()  # sigma 1.3: wide
    assert (terms[..., 6] > 0.25).all() and (terms[..., 6] <= 1).all()
    with torch.no_grad():
        extractor.memory.spread_bias.fill_(-6.0)  # sigma 0.0026: a write reaches its nearest cell alone, if any
    narrow = reacher_readout.writes(extractor, obs)
    assert (narrow[..., 6] <= 1 / 64).all() and (narrow[..., 5] < 0.01 * terms[..., 5]).all()
    with torch.no_grad():
        extractor.memory.strength.weight.normal_()
    assert reacher_readout.writes(extractor, obs)[..., 0].std() > 0.01  # now each write has its own strength
    quiet = TensorMemoryExtractor(space, memory={"local_update": False, "per_token": True})
    terms = reacher_readout.writes(quiet, obs)
    assert terms.shape == (5, 3, 3, 7)  # a write per token: 12 dims in tokens of 4
    assert terms[..., 0].isnan().all() and not terms[..., 1:].isnan().any()  # no strength without local_update


def test_reacher_readout_sees_the_shown_target_and_only_a_memory_keeps_it(tmp_path, capsys):
    tiny = ["env=memory_reacher_hold", "algo=ppo_mujoco", "algo.n_envs=2", "algo.n_steps=64", "algo.batch_size=64",
            "algo.bptt_len=16", "total_timesteps=128", "progress_bar=false", "log_formats=[csv]",
            "checkpoint_freq=1000000", "eval_freq=0", "final_eval_episodes=0"]  # fmt: skip
    for model in ("mlp", "lstm", "tensor_memory"):
        train_main([*tiny, f"model={model}", f"hydra.run.dir={tmp_path / model}"])
    memoryless, lstm = (reacher_readout.readout(str(tmp_path / model), 128) for model in ("mlp", "lstm"))
    assert len(memoryless) == len(lstm) == 15
    assert memoryless[4] > 0.9 and lstm[4] > 0.9  # the target is in the observation until t = 4
    assert memoryless[-1] < 0.1 < 0.5 < lstm[-1]
    grid = reacher_readout.readout(str(tmp_path / "tensor_memory"), 128, source="grid")
    assert len(grid) == 15 and grid[4] > 0.5  # the memory's grid holds the shown target
    with pytest.raises(SystemExit, match="--grid reads a Tensor Memory; this run's extractor is LSTM"):
        reacher_readout.readout(str(tmp_path / "lstm"), 128, source="grid")
    terms, targets = reacher_readout.hold_features(str(tmp_path / "tensor_memory"), 128, source="writes")
    strength = terms[..., 0]
    assert terms.shape == (15, 128, 1, 7) and ((strength > 0) & (strength < 1)).all()
    # two tiny updates leave the writes near the strength they start at, sigmoid(strength_bias_init = -2)
    assert abs(float(strength.mean()) - float(torch.sigmoid(torch.tensor(-2.0)))) < 0.02
    with pytest.raises(SystemExit, match="--writes reads a Tensor Memory; this run's extractor is LSTM"):
        reacher_readout.hold_features(str(tmp_path / "lstm"), 128, source="writes")
    capsys.readouterr()  # what training printed
    reacher_readout.report_writes("run", terms, targets)
    report = capsys.readouterr().out
    assert report.startswith("run: mean write strength by held step: 0.1") and "cells it reaches at half" in report
    with pytest.raises(
        SystemExit, match="--stem reads the frames' encoder; this run's LSTMExtractor encodes no frames"
    ):
        reacher_readout.readout(str(tmp_path / "lstm"), 128, source="stem")
    with pytest.raises(ValueError, match="source must be one of"):
        reacher_readout.readout(str(tmp_path / "lstm"), 128, source="grids")
    final, _ = reacher_readout.hold_features(str(tmp_path / "lstm"), 128)
    by_path, _ = reacher_readout.hold_features(
        str(tmp_path / "lstm"), 128, checkpoint=str(tmp_path / "lstm" / "model.zip")
    )
    torch.testing.assert_close(by_path, final)
    with pytest.raises(ConfigError, match=r"must be one of \['final', 'best', 'last'\] or the path of a saved model"):
        reacher_readout.hold_features(str(tmp_path / "lstm"), 128, checkpoint=str(tmp_path / "lstm" / "step_1.zip"))
    with pytest.raises(ConfigError, match="has no last model"):
        reacher_readout.acting_features(str(tmp_path / "lstm"), 128, checkpoint="last")
    acting, targets, offsets, distances = reacher_readout.acting_features(str(tmp_path / "lstm"), 128)
    assert acting.shape == (60, 128, 64) and targets.shape == (128, 2) and distances.shape == (128,)
    assert offsets.shape == (60, 128, 2) and (offsets[-1].norm(dim=-1) - distances).abs().max() < 0.05
    assert (distances >= 0).all() and distances.max() < 0.5
    assert reacher_readout.r2_by_step(acting, targets)[4] > 0.9  # the shown target, as the arm is held
    features = torch.tensor([[[0.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]]])  # (T, B, F): feature 1 fires once
    assert reacher_readout.never_active(features) == 2
    assert reacher_readout.saturated(torch.tensor([[[0.99, -0.99, 0.5, -0.1]]])) == 0.5
    pre = torch.tensor([[[3.0, -0.5, 0.0]]])
    assert torch.allclose(reacher_readout.unsquashed(torch.tanh(pre)), pre, atol=1e-4)
    assert reacher_readout.unsquashed(torch.tensor([[[0.0, 1.5]]])) is None  # a ReLU head's
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("env:\n  id: tmem/CueRecall-v0\n")
    with pytest.raises(SystemExit, match="needs one of"):
        reacher_readout.readout(str(other), 128)


def test_reacher_readout_stem_is_the_frames_encoder_step_by_step(tmp_path):
    tiny = ["env=pixel_memory_reacher", "algo=ppo_pixel", "algo.n_envs=2", "algo.n_steps=32", "algo.batch_size=64",
            "algo.bptt_len=16", "total_timesteps=64", "progress_bar=false", "log_formats=[csv]",
            "checkpoint_freq=1000000", "eval_freq=0", "final_eval_episodes=0"]  # fmt: skip
    for model in ("lstm", "tensor_memory"):
        train_main([*tiny, f"model={model}", f"hydra.run.dir={tmp_path / model}"])
        policy = MemoryPPO.load(tmp_path / model / "model.zip", device="cpu").policy
        extractor = policy.pi_features_extractor
        samples = [policy.observation_space.sample() for _ in range(3 * 2)]
        flat = policy.obs_to_tensor({key: np.stack([sample[key] for sample in samples]) for key in samples[0]})[0]
        obs = preprocess_obs(flat, policy.observation_space, normalize_images=True)
        with torch.no_grad():
            stem = reacher_readout.stem_outputs(extractor, {key: x.view(3, 2, *x.shape[1:]) for key, x in obs.items()})
            direct = reacher_readout.image_stem(extractor)(obs["pixels"]).flatten(1).view(3, 2, -1)
        torch.testing.assert_close(stem, direct)


gradient_shares = load_script("gradient_shares")


@pytest.mark.parametrize(
    ("env", "algo", "has_convolutions"),
    [("pixel_memory_reacher", "ppo_pixel", True), ("memory_reacher_hold", "ppo_mujoco", False)],
)
def test_gradient_shares_of_the_convolutions(env: str, algo: str, has_convolutions: bool):
    cfg = compose("train", [f"env={env}", f"algo={algo}", "algo.n_envs=2", "algo.n_steps=32", "algo.batch_size=32",
                            "algo.n_epochs=3", "algo.bptt_len=16", "model=tensor_memory"])  # fmt: skip
    clip = torch.nn.utils.clip_grad_norm_
    model = build_model(cfg, normalize(make_envs(cfg.env, 2, seed=0), cfg.algo))
    result = gradient_shares.gradient_shares(model, 64)
    assert torch.nn.utils.clip_grad_norm_ is clip
    assert result["minibatches"] == 6  # one update of 64 steps: 3 epochs of two 32-step minibatches
    assert result["whole"] > 0
    if has_convolutions:
        assert 0 < result["share"] < 1 and 0 < result["convolutions_clipped"] <= result["convolutions"]
        # Adam moves each number by at most about the learning rate per step: 6 steps
        assert 0 < result["convolutions_moved"] <= 6.5
    else:
        assert result["convolutions"] == result["share"] == result["convolutions_clipped"] == 0
        assert result["convolutions_moved"] == 0
    assert 0 < result["others_moved"] <= 6.5


def test_gradient_shares_of_a_trained_run(tmp_path):
    train_main(["env=pixel_memory_reacher", "algo=ppo_pixel", "algo.n_envs=2", "algo.n_steps=32",
                "algo.batch_size=32", "algo.bptt_len=16", "total_timesteps=64", "progress_bar=false",
                "log_formats=[csv]", "checkpoint_freq=1000000", "eval_freq=0", "final_eval_episodes=0",
                "model=lstm", "algo.lr_schedule=linear", f"hydra.run.dir={tmp_path}"])  # fmt: skip
    model = gradient_shares.trained_model(str(tmp_path))
    assert model.env.num_envs == 2 and model.env.norm_reward  # rewards normalized as the run trained on them
    result = gradient_shares.gradient_shares(model, 64)
    assert result["minibatches"] == 8  # one update of 64 steps: 4 epochs of two 32-step minibatches
    assert 0 < result["share"] < 1
    assert result["convolutions_moved"] > 0  # the decaying rate, restarted, would be 0 at the update
    with pytest.raises(ConfigError, match="no such folder"):
        gradient_shares.trained_model(str(tmp_path / "missing"))


image_stem_check = load_script("image_stem_check")


def test_image_stem_check_finds_the_dot_with_the_nature_cnn_not_with_averaged_patches():
    frames, targets = image_stem_check.first_frames(500)
    assert frames.shape == (500, 3, 64, 64) and 0 <= frames.min() and frames.max() <= 1
    assert targets.norm(dim=1).max() <= 1 + 1e-6
    cnn = image_stem_check.stem_r2("nature_cnn", "mean", frames, targets, iterations=300, report=150)
    patches = image_stem_check.stem_r2("patches", "mean", frames, targets, iterations=300, report=150)
    assert [it for it, _ in cnn] == [150, 300]
    assert cnn[-1][1] > 0.5 and patches[-1][1] < 0.2
