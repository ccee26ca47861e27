"""End-to-end tests of tmem-train and tmem-eval on tiny budgets: run folders, seeds, resume, eval, errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tmem_agents import configs
from tmem_agents.algos import MemoryPPO
from tmem_agents.config_schema import ConfigError, compose, validate_train
from tmem_agents.env_factory import make_envs, normalize
from tmem_agents.evaluate import _renders
from tmem_agents.evaluate import main as eval_main
from tmem_agents.run_folder import RunFolder, atomic_write
from tmem_agents.train import main as train_main

TINY = [
    "algo.n_envs=2",
    "algo.n_steps=64",
    "algo.batch_size=64",
    "algo.bptt_len=16",
    "algo.n_epochs=2",
    "model.features_dim=32",
    "checkpoint_freq=256",
    "eval_freq=512",
    "eval_episodes=2",
    "eval_envs=2",
    "final_eval_episodes=2",
    "progress_bar=false",
    "log_formats=[csv]",
    "device=cpu",
]
TM_SMALL = ["model.token_dim=16", "model.memory.channels=4", "model.memory.grid=[3,3,3]"]


def train(run_dir: Path, *overrides: str) -> RunFolder:
    """Run tmem-train in this process with the tiny budget; returns the run folder."""
    train_main([*TINY, *overrides, f"hydra.run.dir={run_dir}"])
    return RunFolder(run_dir)


def progress(run: RunFolder, name: str = "progress.csv") -> list[dict[str, str]]:
    with open(run.logs / name) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> RunFolder:
    """A 2k-step Tensor Memory run on the occluded CartPole."""
    return train(tmp_path_factory.mktemp("runs") / "tm", "env=cartpole_occluded", "total_timesteps=2048", *TM_SMALL)


def test_train_writes_run_folder(trained: RunFolder) -> None:
    root = trained.root
    config = OmegaConf.load(trained.config)
    assert config.model.name == "tensor_memory" and config.env.id == "tmem/CartPoleOccluded-v0"
    assert (root / ".hydra" / "overrides.yaml").is_file() and (root / "train.log").is_file()
    rows = progress(trained)
    assert int(rows[-1]["time/total_timesteps"]) == 2048
    assert "train/value_loss" in rows[-1] and "eval/mean_return" in rows[0].keys()
    assert [step for step, _ in trained.list_checkpoints()] == [1280, 1536, 1792]
    assert (trained.best / "model.zip").is_file() and (trained.best / "eval.json").is_file()
    assert trained.final_model.is_file()
    summary = json.loads(trained.summary.read_text())
    assert {"mean_return", "std_return", "episodes", "seed"} <= summary.keys()
    assert summary["episodes"] == 2 and summary["seed"] == 0 and summary["timesteps"] == 2048
    leftovers = [p for p in root.rglob(".*") if p.name != ".hydra" and ".hydra" not in p.parts]
    assert leftovers == []


def test_same_seed_logs_identical_losses(tmp_path: Path) -> None:
    args = ["total_timesteps=512", "eval_freq=0", "model=lstm", "seed=7"]
    first, second = train(tmp_path / "a", *args), train(tmp_path / "b", *args)
    other = train(tmp_path / "c", *args[:-1], "seed=8")
    keys = ["train/loss", "train/value_loss", "train/policy_gradient_loss", "train/approx_kl"]

    def losses(run: RunFolder) -> list[list[str]]:
        return [[row[key] for key in keys] for row in progress(run)]

    assert losses(first) == losses(second)
    assert losses(first) != losses(other)


def test_reconstruction_options_reach_the_algorithm(tmp_path: Path) -> None:
    options = ["algo.reconstruction_coef=0.5", "algo.reconstruction_lags=[1,3]", "algo.reconstruction_standardize=true"]
    run = train(tmp_path / "run", "total_timesteps=256", "eval_freq=0", "model=gru", *options)
    assert MemoryPPO.load(run.model_path("final")).reconstruction_standardize
    rows = [row for row in progress(run) if row["train/loss"]]
    assert rows and all(float(row["train/reconstruction_loss"]) > 0 for row in rows)
    config = OmegaConf.load(run.config)
    assert config.algo.reconstruction_coef == 0.5 and list(config.algo.reconstruction_lags) == [1, 3]


def test_log_std_init_sets_the_gaussian_policys_start(tmp_path: Path) -> None:
    run = train(
        tmp_path / "run", "total_timesteps=256", "eval_freq=0", "env=pendulum_occluded", "algo.log_std_init=-1.5"
    )
    log_std = MemoryPPO.load(run.model_path("final")).policy.log_std
    assert torch.allclose(log_std, torch.full_like(log_std, -1.5), atol=0.05)


def test_whiten_features_reaches_the_policy(tmp_path: Path) -> None:
    run = train(tmp_path / "run", "total_timesteps=256", "eval_freq=0", "model=gru", "model.whiten_features=true")
    policy = MemoryPPO.load(run.model_path("final")).policy
    assert policy.whiten_features and int(policy.features_whitening["pi"].commits) == 2


def test_resume_continues_step_counter(tmp_path: Path) -> None:
    run = train(tmp_path / "run", "total_timesteps=1024", "model=gru", "algo.normalize=true")
    # a run stopped after its last checkpoint: no final model, no summary
    run.final_model.unlink()
    run.summary.unlink()
    (run.root / "vecnormalize.pkl").unlink()
    last_step = run.list_checkpoints()[-1][0]
    assert last_step == 768
    train_main([f"resume={run.root}", "total_timesteps=1536"])
    summary = json.loads(run.summary.read_text())
    assert summary["timesteps"] == 1536
    steps = [int(row["time/total_timesteps"]) for row in progress(run)]
    assert steps[0] == last_step + 128 and steps[-1] == 1536
    assert (run.logs / "progress.0.csv").is_file()
    assert OmegaConf.load(run.config).model.name == "gru"
    assert (run.root / "vecnormalize.pkl").is_file()


def test_resume_continues_a_finished_run_from_its_final_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = train(tmp_path / "run", "total_timesteps=1024", "model=gru", "eval_freq=0")
    assert run.list_checkpoints()[-1][0] == 768
    saved = {path: path.read_bytes() for path in run.root.rglob("*") if path.is_file()}
    message = fails(train_main, [f"resume={run.root}", "total_timesteps=1024"], capsys)
    assert "total_timesteps=1024: the run has already trained 1024 timesteps" in message
    assert {path: path.read_bytes() for path in run.root.rglob("*") if path.is_file()} == saved
    train_main([f"resume={run.root}", "total_timesteps=1280"])
    steps = [int(row["time/total_timesteps"]) for row in progress(run)]
    assert steps[0] == 1024 + 128 and steps[-1] == 1280
    assert json.loads(run.summary.read_text())["timesteps"] == 1280


@pytest.mark.parametrize(("env", "keys"), [("pixel_memory_reacher", ["proprio"]), ("pixel_reacher", None)])
def test_vecnormalize_leaves_images_as_they_are(env: str, keys: list[str] | None) -> None:
    cfg = compose("train", [f"env={env}", "algo=ppo_pixel", "algo.norm_obs=true"])
    venv = normalize(make_envs(cfg.env, 2, seed=0), cfg.algo)
    venv.reset()
    assert venv.norm_obs_keys == keys and venv.norm_obs is (keys is not None)
    for _ in range(20):
        obs, *_ = venv.step(np.stack([venv.action_space.sample() for _ in range(2)]))
    pixels = obs["pixels"] if keys else obs
    assert pixels.dtype == np.uint8
    assert np.array_equal(pixels, venv.get_original_obs()["pixels"] if keys else venv.get_original_obs())
    if keys:
        assert set(venv.obs_rms) == {"proprio"}
        assert not np.allclose(venv.get_original_obs()["proprio"], obs["proprio"])
    venv.close()


def test_eval_writes_json_and_memory_pictures(trained: RunFolder) -> None:
    eval_args = [f"run_dir={trained.root}", "episodes=2", "memory_ablation=true", "progress_bar=false"]
    run_eval(eval_args + ["memory_video=true", "video_format=gif", "device=cpu"])
    results = json.loads((trained.root / "eval.json").read_text())
    assert results["episodes"] == 2 and results["deterministic"] is True and results["checkpoint"] == "model.zip"
    assert {"mean_return", "std_return"} <= results["ablation"].keys()
    assert results["memory_gain"] == results["mean_return"] - results["ablation"]["mean_return"]
    assert (trained.videos / "memory.gif").stat().st_size > 0 and (trained.videos / "memory.png").is_file()


def test_eval_video(trained: RunFolder) -> None:
    pytest.importorskip("pygame", reason="CartPole renders through pygame")
    run_eval([f"run_dir={trained.root}", "episodes=1", "video=true", "checkpoint=best", "output=video_eval.json"])
    assert (trained.videos / "episode.mp4").stat().st_size > 0
    assert json.loads((trained.root / "video_eval.json").read_text())["checkpoint"] == "best/model.zip"


def test_eval_video_needs_an_env_that_renders() -> None:
    """``video=true`` on an env without ``rgb_array`` fails before any episode is scored, saying what to drop."""
    train_cfg = compose("train", ["env=cue_recall"])
    with pytest.raises(ConfigError, match="cannot render rgb_array .*drop video=true"):
        _renders(OmegaConf.create({"video": True}), train_cfg)
    assert not _renders(OmegaConf.create({"video": False}), train_cfg)
    assert _renders(OmegaConf.create({"video": True}), compose("train", ["env=pixel_reacher"]))


def test_eval_checkpoint_inside_the_run_folder(trained: RunFolder, tmp_path: Path) -> None:
    """A checkpoint named from the run folder is found there, and every record names its model from it."""
    args = [f"run_dir={trained.root}", "episodes=1", "progress_bar=false", "output=step_eval.json"]
    run_eval(args + ["checkpoint=checkpoints/step_000000001536.zip"])
    results = json.loads((trained.root / "step_eval.json").read_text())
    assert results["checkpoint"] == "checkpoints/step_000000001536.zip" and results["timesteps"] == 1536
    outside = tmp_path / "elsewhere.zip"
    outside.write_bytes(trained.final_model.read_bytes())
    run_eval(args + [f"checkpoint={outside}"])
    assert json.loads((trained.root / "step_eval.json").read_text())["checkpoint"] == str(outside)


def run_eval(args: list[str]) -> None:
    eval_main(args)


def test_any_gym_env_with_wrappers(tmp_path: Path) -> None:
    run = train(
        tmp_path / "gym",
        "env=gym",
        "env.id=gymnasium.envs.classic_control:CartPole-v1",
        "+env.wrappers={mask: {hide: [1, 3]}, flicker: {p: 0.2}}",
        "model=frame_stack",
        "total_timesteps=256",
        "eval_freq=0",
    )
    summary = json.loads(run.summary.read_text())
    assert summary["env"] == "gymnasium.envs.classic_control:CartPole-v1" and summary["model"] == "frame_stack"


def test_multirun_in_parallel(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["seed=0,1", "model=mlp,lstm", "total_timesteps=128", "eval_freq=0", "final_eval_episodes=1"]
    train_main(["-m", *TINY, *args, "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"])
    runs = sorted(path.name for path in sweep.iterdir() if path.is_dir())
    assert runs == [
        "0_cue_recall_mlp_s0",
        "1_cue_recall_lstm_s0",
        "2_cue_recall_mlp_s1",
        "3_cue_recall_lstm_s1",
    ]
    assert all(RunFolder(sweep / name).finished for name in runs)


def test_atomic_write_leaves_target_intact_on_crash(tmp_path: Path) -> None:
    target = tmp_path / "model.zip"
    target.write_text("old")

    def crash(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def fails(command: object, args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run a command's ``main`` in this process; it must exit non-zero. Returns what it wrote to stderr."""
    argv = sys.argv
    sys.argv = ["tmem", *args]
    try:
        with pytest.raises(SystemExit) as exit_info:
            command()
    finally:
        sys.argv = argv
    assert exit_info.value.code not in (0, None)
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model=transformer"], "Available options in 'model'"),
        (["model.name=transformer"], "available: frame_stack, gru, lstm, mlp, tensor_memory"),
        (["total_timesteps=-5"], "total_timesteps=-5: must be >= 1"),
        (["algo.n_steps=abc"], "algo.n_steps"),
        (["seeed=1"], "Key 'seeed' not in 'TrainConfig'"),
        (["env=gym", "env.id=NoSuchEnv-v0"], "env.id='NoSuchEnv-v0'"),
        (["+env.wrappers={blur: {}}"], "env.wrappers.blur"),
        (["+env.kwargs.delays=10"], "env.kwargs: unknown keyword argument(s) ['delays']; CueRecallEnv takes ['delay'"),
        (["+env.wrappers={flicker: {prob: 2}}"], "env.wrappers.flicker: unknown keyword argument(s) ['prob']"),
        (["resume=does/not/exist"], "resume="),
        (["model=tensor_memory", "model.memory.write_from=raw"], "model.memory: TensorMemoryConfig.write_from"),
        (["model=tensor_memory", "model.memory.grid=[1,4,4]"], "model.memory: TensorMemoryConfig.grid"),
        (["model=tensor_memory", "model.pool=max"], "model.pool='max': must be one of"),
        (["model=tensor_memory", "model.image_stem=vit"], "model.image_stem='vit': must be one of"),
        (["model=tensor_memory", "model.head_activation=gelu"], "model.head_activation='gelu': must be one of"),
        (["model=tensor_memory", "model.image_tokens=0"], "model.image_tokens=0: must be >= 1"),
        (["model=tensor_memory", "model.heads=3"], "model.heads=3: must divide model.token_dim (32)"),
        (["model=lstm", "model.image_encoder=vit"], "model.image_encoder='vit': must be one of"),
        (["model=lstm", "model.forget_timescale_max=1"], "model.forget_timescale_max=1.0: must be a finite number"),
        (
            ["model=lstm", "model.forget_bias=3", "model.forget_timescale_max=60"],
            "replaces model.forget_bias: set model.forget_bias=null",
        ),
        (
            ["model=tensor_memory", "model.memory.forget_timescale_max=1"],
            "model.memory: TensorMemoryConfig.forget_timescale_max must be a finite number of steps >= 2",
        ),
        (["algo.reconstruction_coef=-1"], "algo.reconstruction_coef=-1.0: must be >= 0"),
        (["algo.image_reconstruction_coef=-1"], "algo.image_reconstruction_coef=-1.0: must be >= 0"),
        (["algo.log_std_init=nan"], "algo.log_std_init=nan: must be a finite number"),
        (["algo.target_kl=0"], "algo.target_kl=0.0: must be > 0, or null to turn it off"),
        (["algo.clip_range_vf=-1"], "algo.clip_range_vf=-1.0: must be > 0, or null to turn it off"),
        (["algo.bptt_len=256", "algo.batch_size=256"], "algo.bptt_len=256: must be <= algo.n_steps (64)"),
        (["model=tensor_memory", "+model.memory.chanels=8"], "model.memory.chanels: no such option"),
        (["+seeed=1"], "seeed: no such option (a '+' adds a key nothing reads); valid: ['algo', "),
        (["+algo.lr=1e-3"], "algo.lr: no such option"),
        (
            ["env=cue_recall", "env.kwargs.delay=-1"],
            "tmem-train: the envs or the model could not be built from this config: delay must be an int >= 0",
        ),
        (
            ["algo.reconstruction_coef=1", "algo.bptt_len=16", "algo.reconstruction_lags=[1,16]"],
            "each in [1, algo.bptt_len) = [1, 16)",
        ),
    ],
)
def test_bad_train_overrides_fail_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert message in fails(train_main, [*args, f"hydra.run.dir={out}"], capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "run_dir is required"),
        (["run_dir=does/not/exist"], "no such folder"),
        (["episodes=zero"], "episodes"),
        (["run_dir=does/not/exist", "torch_threads=0"], "torch_threads=0: must be >= 1"),
        (["run_dir=does/not/exist", "+episode=50"], "episode: no such option"),
    ],
)
def test_bad_eval_overrides_fail_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    assert message in fails(eval_main, args, capsys)
    assert list(tmp_path.iterdir()) == []


def test_eval_names_a_missing_checkpoint(trained: RunFolder, capsys: pytest.CaptureFixture[str]) -> None:
    message = fails(eval_main, [f"run_dir={trained.root}", "checkpoint=nowhere.zip"], capsys)
    assert "checkpoint='nowhere.zip': must be one of ['final', 'best', 'last'] or the path of a saved model" in message
    message = fails(eval_main, [f"run_dir={trained.root}", "checkpoint=config.yaml"], capsys)
    assert "checkpoint='config.yaml': must be one of" in message and "the path of a saved model, a .zip" in message


def test_eval_leaves_the_training_summary_alone(trained: RunFolder, capsys: pytest.CaptureFixture[str]) -> None:
    before = trained.summary.read_bytes()
    message = fails(eval_main, [f"run_dir={trained.root}", "output=summary.json"], capsys)
    assert "output='summary.json': is the training run's final evaluation" in message
    assert trained.summary.read_bytes() == before


def test_train_refuses_a_folder_that_holds_a_run(trained: RunFolder, capsys: pytest.CaptureFixture[str]) -> None:
    saved = {path: path.read_bytes() for path in trained.root.rglob("*") if path.is_file()}
    message = fails(train_main, [*TINY, f"hydra.run.dir={trained.root}"], capsys)
    assert f"hydra.run.dir={str(trained.root)!r}: the folder already holds a run (config.yaml)" in message
    assert f"resume={trained.root}" in message
    assert {path: path.read_bytes() for path in trained.root.rglob("*") if path.is_file()} == saved


def test_console_scripts_exit_non_zero(tmp_path: Path) -> None:
    code = "import sys; from tmem_agents.{} import main; main()"
    for script, args in (("train", ["total_timesteps=-1", f"hydra.run.dir={tmp_path / 'run'}"]), ("evaluate", [])):
        result = subprocess.run(
            [sys.executable, "-c", code.format(script), *args], capture_output=True, text=True, timeout=300
        )
        assert result.returncode != 0 and result.stderr.strip()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("group", ["env", "algo", "model", "experiment"])
def test_every_shipped_config_composes_and_every_task_builds(group: str) -> None:
    names = sorted(path.stem for path in (Path(configs.__file__).parent / group).glob("*.yaml"))
    assert names
    for name in names:
        cfg = compose("train", [f"{'+' if group == 'experiment' else ''}{group}={name}"])
        validate_train(cfg)
        if group == "env" and name != "gym":
            make_envs(cfg.env, 1, seed=0).close()


@pytest.mark.parametrize(
    ("experiment", "record"),
    [
        ("pixel_memory_reacher_lstm", "lstmirch60_500lin_s1"),
        ("pixel_memory_reacher_tensor_memory", "tmigw64irch60_500lin_s0"),
    ],
)
def test_experiments_train_as_the_runs_in_the_results(experiment: str, record: str) -> None:
    recorded = OmegaConf.load(Path(__file__).parents[1] / "results/full/pixel_memory" / record / "config.yaml")
    cfg = compose("train", [f"+experiment={experiment}"])
    for key in ("total_timesteps", "eval_freq", "final_eval_episodes"):
        assert cfg[key] == recorded[key], f"{key} differs from the recorded {record}"
    for key in ("env", "algo", "model"):  # options added since the run keep the defaults it ran with
        assert OmegaConf.merge(cfg[key], recorded[key]) == cfg[key], f"{key} differs from the recorded {record}"
