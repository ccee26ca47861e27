"""RunningStandardize and RunningWhiten: statistics that change only on commit, merged exactly, and held still within
a PPO update."""

import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env

from tmem_agents import MemoryPPO
from tmem_agents.memory import TensorMemory, TensorMemoryConfig
from tmem_agents.policies import EXTRACTORS
from tmem_agents.running_standardize import RunningStandardize, RunningWhiten, commit_statistics, tracking_statistics


def test_statistics_change_only_on_commit_and_merge_exactly():
    torch.manual_seed(0)
    norm = RunningStandardize(5, momentum=0.25, eps=1e-6, clip=100.0)
    data = torch.randn(7, 40, 5) * torch.tensor([0.01, 0.1, 1.0, 2.0, 3.0]) + torch.arange(5.0) / 4
    assert torch.allclose(norm(data[0]), data[0] / (1 + 1e-6) ** 0.5)
    with tracking_statistics(norm):
        for part in data.split([1, 2, 4]):
            before = norm(part)
    assert not norm.tracking
    assert torch.allclose(before, part / (1 + 1e-6) ** 0.5), "statistics moved before commit"
    commit_statistics(norm)
    var, mean = torch.var_mean(data.reshape(-1, 5), dim=0, unbiased=False)
    assert torch.allclose(norm.mean, mean, atol=1e-5) and torch.allclose(norm.var, var, rtol=1e-4)
    out = norm(data).reshape(-1, 5)
    assert torch.allclose(out.mean(0), torch.zeros(5), atol=1e-3)
    assert torch.allclose(out.std(0), torch.ones(5), atol=1e-2)

    with tracking_statistics(norm):
        norm(data[0] * 2)
    commit_statistics(norm)
    var2, mean2 = torch.var_mean(data[0] * 2, dim=0, unbiased=False)
    assert torch.allclose(norm.mean, 0.75 * mean + 0.25 * mean2, atol=1e-5)
    assert torch.allclose(norm.var, 0.75 * var + 0.25 * var2, rtol=1e-4)
    assert int(norm.commits) == 2
    commit_statistics(norm)
    assert int(norm.commits) == 2, "a commit with nothing accumulated changes nothing"


def test_gradient_flows_through_and_outliers_are_clipped():
    norm = RunningStandardize(2, clip=3.0)
    with tracking_statistics(norm):
        norm(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    norm.commit()
    x = torch.tensor([[1.0, 2.0], [100.0, 2.0]], requires_grad=True)
    out = norm(x)
    out.sum().backward()
    assert out[1, 0] == 3.0 and x.grad[1, 0] == 0.0
    assert torch.allclose(x.grad[0], torch.full((2,), 1 / (1 + 1e-5) ** 0.5))


def test_tracking_is_switched_off_after_an_error_and_statistics_round_trip():
    norm = RunningStandardize(3)
    with pytest.raises(RuntimeError), tracking_statistics(norm):
        norm(torch.ones(2, 3))
        raise RuntimeError
    assert not norm.tracking
    norm.commit()
    copy = RunningStandardize(3)
    copy.load_state_dict(norm.state_dict())
    assert torch.equal(copy.mean, norm.mean) and int(copy.commits) == 1
    with pytest.raises(ValueError, match="momentum"):
        RunningStandardize(3, momentum=0.0)


def test_memory_config_takes_one_read_normalization():
    memory = TensorMemory(TensorMemoryConfig(grid=(2, 2, 2), channels=2, read_grid=True, read_standardize=True), 8)
    assert isinstance(memory.read_norm, RunningStandardize) and memory.read_norm.mean.shape == (16,)
    with pytest.raises(ValueError, match="read_norm=false read_standardize=true"):
        TensorMemoryConfig(read_norm=True, read_standardize=True)
    with pytest.raises(ValueError, match="read_standardize must be true or false"):
        TensorMemoryConfig(read_standardize="yes")


def test_memory_ppo_commits_once_per_update_and_replays_the_rollout_exactly():
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    memory = {"grid": (2, 2, 2), "channels": 4, "read_grid": True, "read_norm": False, "read_standardize": True}
    policy_kwargs = {
        "features_extractor_class": EXTRACTORS["tensor_memory"],
        "features_extractor_kwargs": {"features_dim": 16, "token_dim": 16, "memory": memory},
        "net_arch": [16],
    }
    model = MemoryPPO(
        "MlpPolicy", env, n_steps=16, batch_size=16, n_epochs=2, bptt_len=8, seed=0, policy_kwargs=policy_kwargs
    )
    norm = next(m for m in model.policy.modules() if isinstance(m, RunningStandardize))
    model.learn(96)
    assert int(norm.commits) == 3 and norm.var.min() < 1.0
    assert model.initial_ratio_error < 1e-5, "the rollout and the update it trains must see the same statistics"
    mean = norm.mean.clone()
    model.predict(env.reset(), deterministic=True)
    commit_statistics(model.policy)
    assert torch.equal(norm.mean, mean), "predict outside a rollout accumulates nothing"


def test_whitening_merges_the_covariance_exactly_and_whitens():
    torch.manual_seed(0)
    mixing = torch.randn(4, 4) + 2 * torch.eye(4)
    data = (torch.randn(6, 50, 4) @ mixing) * torch.tensor([0.2, 1.0, 1.0, 3.0]) + torch.arange(4.0)
    white = RunningWhiten(4, shrink=1e-6, clip=100.0)
    assert torch.equal(white(data[0]), data[0]), "before the first commit whitening is the identity"
    with tracking_statistics(white):
        for part in data.split([1, 2, 3]):
            white(part)
    commit_statistics(white)
    rows = data.reshape(-1, 4).double()
    cov = torch.cov(rows.T, correction=0)
    assert torch.allclose(white.mean.double(), rows.mean(0), atol=1e-5)
    assert torch.allclose(white.cov.double(), cov, rtol=1e-4, atol=1e-6)
    assert torch.allclose(white.transform, white.transform.T, atol=1e-6), "ZCA's transform is symmetric"
    out = white(data).reshape(-1, 4).double()
    assert torch.allclose(torch.cov(out.T, correction=0), torch.eye(4, dtype=torch.float64), atol=1e-3)

    with tracking_statistics(white):
        white(data[0] * 2)
    commit_statistics(white)
    cov2 = torch.cov((data[0] * 2).double().T, correction=0)
    assert torch.allclose(white.cov.double(), 0.9 * cov + 0.1 * cov2, rtol=1e-4, atol=1e-6)


def test_whitening_shrinks_instead_of_amplifying_a_constant_direction():
    torch.manual_seed(0)
    data = torch.randn(2000, 3) * torch.tensor([1.0, 2.0, 1e-4])
    white = RunningWhiten(3, shrink=0.1)
    with tracking_statistics(white):
        white(data)
    white.commit()
    std = white(data).std(0)
    mean_var = (1 + 4 + 1e-8) / 3
    assert torch.allclose(
        std[:2], (torch.tensor([1.0, 4.0]) / (torch.tensor([1.0, 4.0]) + 0.1 * mean_var)).sqrt(), rtol=0.05
    )
    assert std[2] < 2e-3, "a direction of almost no variance is scaled by about 1/sqrt(shrink * mean variance)"
    x = torch.randn(5, 3, requires_grad=True)
    white(x).sum().backward()
    assert torch.allclose(x.grad, white.transform.sum(1).expand(5, 3))
    with pytest.raises(ValueError, match="shrink"):
        RunningWhiten(3, shrink=0.0)


@pytest.mark.parametrize("share", [True, False])
def test_memory_ppo_whitens_the_features_with_statistics_held_still(share, tmp_path):
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    policy_kwargs = {
        "features_extractor_class": EXTRACTORS["lstm"],
        "features_extractor_kwargs": {"features_dim": 8},
        "share_features_extractor": share,
        "whiten_features": True,
        "net_arch": [16],
    }
    model = MemoryPPO(
        "MlpPolicy", env, n_steps=16, batch_size=16, n_epochs=2, bptt_len=8, seed=0, policy_kwargs=policy_kwargs
    )
    whitenings = [m for m in model.policy.modules() if isinstance(m, RunningWhiten)]
    assert len(whitenings) == (1 if share else 2)
    model.learn(96)
    assert all(int(w.commits) == 3 for w in whitenings)
    assert not torch.equal(whitenings[0].transform, torch.eye(8))
    assert model.initial_ratio_error < 1e-5, "the rollout and the update it trains must see the same statistics"
    model.save(tmp_path / "model")
    loaded = MemoryPPO.load(tmp_path / "model", env=env)
    assert loaded.policy.whiten_features
    copy = next(m for m in loaded.policy.modules() if isinstance(m, RunningWhiten))
    assert torch.equal(copy.transform, whitenings[0].transform) and torch.equal(copy.mean, whitenings[0].mean)
