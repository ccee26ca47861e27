"""Train every model on the task suite with several seeds, in one harness, and collect the results.

Each MemoryPPO run is a ``tmem-train`` run folder under ``<out>/runs/<task>/<model>/s<seed>``, evaluated
by ``tmem-eval`` with and without its state (the memory ablation). sb3-contrib's ``RecurrentPPO`` (LSTM
for actor and critic) runs on the vector tasks with the same envs and PPO settings, from the same
composed config. One row per run goes to ``<out>/summary.csv``; a finished run is skipped, so an
interrupted sweep resumes where it stopped (an interrupted run from its newest checkpoint, or from the
start when it has none). ``scripts/summarize_results.py`` makes the tables and plots.

    python scripts/run_suite.py --profile quick --seeds 0 1 2 --jobs 2

Profiles set the tasks and their budgets (timesteps per run); ``quick`` fits in about an hour of 2 CPU
cores, ``full`` is the longer sweep of ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

MODELS = ("tensor_memory", "lstm", "gru", "frame_stack", "mlp")
REFERENCE = "recurrent_ppo"
PROFILES: dict[str, dict[str, dict]] = {
    "quick": {
        "cue_recall": {"algo": "ppo_recall", "timesteps": 30_000},
        "spatial_recall": {"algo": "ppo_recall", "timesteps": 30_000},
        "cartpole_occluded": {"algo": "ppo", "timesteps": 30_000},
        "memory_reacher_hold": {"algo": "ppo_mujoco", "timesteps": 20_000},
        "pixel_reacher": {"algo": "ppo_pixel", "timesteps": 8_000, "pixels": True},
    },
    "full": {
        "cue_recall": {"algo": "ppo_recall", "timesteps": 100_000},
        "cue_recall_long": {"algo": "ppo_recall_long", "timesteps": 150_000},
        "spatial_recall": {"algo": "ppo_recall", "timesteps": 100_000},
        "cartpole_occluded": {"algo": "ppo", "timesteps": 200_000},
        "memory_reacher_hold": {"algo": "ppo_mujoco", "timesteps": 300_000},
        "multi_target_reacher": {"algo": "ppo_mujoco", "timesteps": 300_000},
        "pixel_reacher": {"algo": "ppo_pixel", "timesteps": 100_000, "pixels": True},
        "pixel_memory_reacher": {"algo": "ppo_pixel", "timesteps": 300_000, "pixels": True},
    },
}
FIELDS = (
    "task",
    "model",
    "seed",
    "timesteps",
    "final_return",
    "final_return_std",
    "ablation_return",
    "success",
    "ablation_success",
    "steps_per_second",
    "state_bytes_per_env",
    "params",
    "run_dir",
)
EVAL_EPISODES = 50


def _overrides(task: str, spec: dict, model: str, seed: int) -> list[str]:
    return [
        f"env={task}",
        f"algo={spec['algo']}",
        f"model={model}",
        f"seed={seed}",
        f"total_timesteps={spec['timesteps']}",
    ]


def _model_stats(path: Path) -> tuple[int, int]:
    """Recurrent state bytes per env and parameter count of a saved MemoryPPO model."""
    from tmem_agents import MemoryPPO

    model = MemoryPPO.load(path, device="cpu")
    return model.policy.initial_state(1).bytes(), sum(p.numel() for p in model.policy.parameters())


def _start_or_resume(run_dir: Path) -> list[str]:
    """The arguments that continue an interrupted run: ``resume=`` from its newest checkpoint, or none when
    it has no checkpoint (its folder is removed, and the run starts over)."""
    from tmem_agents.run_folder import RunFolder

    if RunFolder(run_dir).list_checkpoints():
        return [f"resume={run_dir}"]
    shutil.rmtree(run_dir, ignore_errors=True)
    return []


def run_memory_ppo(task: str, spec: dict, model: str, seed: int, out: Path) -> dict:
    run_dir = out / "runs" / task / model / f"s{seed}"
    train = [
        sys.executable,
        "-m",
        "tmem_agents.train",
        *_overrides(task, spec, model, seed),
        f"hydra.run.dir={run_dir}",
        "progress_bar=false",
        "log_formats=[csv]",
        "eval_freq=0",
        f"final_eval_episodes={EVAL_EPISODES}",
        f"checkpoint_freq={spec['timesteps']}",
    ]
    if not (run_dir / "summary.json").is_file():
        subprocess.run(train + _start_or_resume(run_dir), check=True, capture_output=True, text=True)
    if not (run_dir / "eval.json").is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "tmem_agents.evaluate",
                f"run_dir={run_dir}",
                f"episodes={EVAL_EPISODES}",
                "memory_ablation=true",
            ],
            check=True,
            capture_output=True,
        )
    result = json.loads((run_dir / "eval.json").read_text())
    with open(run_dir / "logs" / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    state_bytes, params = _model_stats(run_dir / "model.zip")
    return _row(
        task, model, seed, result, result["ablation"], float(rows[-1]["time/fps"]), state_bytes, params, run_dir
    )


_COMPOSE_LOCK = threading.Lock()


def run_recurrent_ppo(task: str, spec: dict, seed: int, out: Path) -> dict:
    """sb3-contrib's RecurrentPPO with the task's composed env and PPO settings."""
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.vec_env import sync_envs_normalization

    from tmem_agents.config_schema import compose
    from tmem_agents.env_factory import make_envs, normalize
    from tmem_agents.evaluation import evaluate
    from tmem_agents.train import learning_rate

    run_dir = out / "runs" / task / REFERENCE / f"s{seed}"
    with _COMPOSE_LOCK:  # Hydra's compose API keeps one global state: one thread composes at a time
        cfg = compose("train", _overrides(task, spec, "lstm", seed))
    algo = cfg.algo
    env = normalize(make_envs(cfg.env, algo.n_envs, seed), algo)
    model = RecurrentPPO(
        "MlpLstmPolicy",
        env,
        learning_rate=learning_rate(algo.learning_rate, algo.lr_schedule),
        n_steps=algo.n_steps,
        batch_size=algo.batch_size,
        n_epochs=algo.n_epochs,
        gamma=algo.gamma,
        gae_lambda=algo.gae_lambda,
        clip_range=algo.clip_range,
        ent_coef=algo.ent_coef,
        vf_coef=algo.vf_coef,
        max_grad_norm=algo.max_grad_norm,
        seed=seed,
        policy_kwargs={"lstm_hidden_size": cfg.model.features_dim, "enable_critic_lstm": True},
    )
    model.set_logger(configure(str(run_dir / "logs"), ["csv"]))
    start = time.perf_counter()
    model.learn(spec["timesteps"])
    speed = spec["timesteps"] / (time.perf_counter() - start)
    eval_env = normalize(make_envs(cfg.env, 4, seed + 10_000), algo, training=False)
    sync_envs_normalization(env, eval_env)
    carried = evaluate(model, eval_env, EVAL_EPISODES).summary()
    ablated = evaluate(model, eval_env, EVAL_EPISODES, memory_ablation=True).summary()
    lstm = model.policy.lstm_actor
    state_bytes = 4 * 2 * 2 * lstm.num_layers * lstm.hidden_size  # (h, c) of the actor's and critic's LSTMs
    params = sum(p.numel() for p in model.policy.parameters())
    model.save(run_dir / "model.zip")
    return _row(
        task,
        REFERENCE,
        seed,
        {**carried, "timesteps": model.num_timesteps},
        ablated,
        speed,
        state_bytes,
        params,
        run_dir,
    )


def _row(task, model, seed, carried, ablated, speed, state_bytes, params, run_dir) -> dict:
    return {
        "task": task,
        "model": model,
        "seed": seed,
        "timesteps": carried.get("timesteps", ""),
        "final_return": carried["mean_return"],
        "final_return_std": carried["std_return"],
        "ablation_return": ablated["mean_return"],
        "success": carried.get("mean_is_success", ""),
        "ablation_success": ablated.get("mean_is_success", ""),
        "steps_per_second": round(speed, 1),
        "state_bytes_per_env": state_bytes,
        "params": params,
        "run_dir": str(run_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--tasks", nargs="+", help="a subset of the profile's tasks")
    parser.add_argument("--models", nargs="+", default=[*MODELS, REFERENCE], choices=[*MODELS, REFERENCE])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one CPU thread each)")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--timesteps", type=int, help="override every task's budget (for a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tasks = {name: spec for name, spec in PROFILES[args.profile].items() if not args.tasks or name in args.tasks}
    if args.timesteps:
        tasks = {name: {**spec, "timesteps": args.timesteps} for name, spec in tasks.items()}
    summary = args.out / "summary.csv"
    done = set()
    if summary.is_file():
        with open(summary) as f:
            done = {(r["task"], r["model"], int(r["seed"])) for r in csv.DictReader(f)}
    jobs = [
        (task, spec, model, seed)
        for task, spec in tasks.items()
        for seed in args.seeds
        for model in args.models
        if (task, model, seed) not in done and not (model == REFERENCE and spec.get("pixels"))
    ]
    print(f"{len(jobs)} runs to do ({len(done)} already in {summary})", flush=True)

    def work(job: tuple) -> dict | None:
        task, spec, model, seed = job
        start = time.perf_counter()
        try:
            row = (
                run_recurrent_ppo(task, spec, seed, args.out)
                if model == REFERENCE
                else run_memory_ppo(task, spec, model, seed, args.out)
            )
        except subprocess.CalledProcessError as error:
            print(f"{task} {model} s{seed} FAILED:\n{(error.stderr or '')[-2000:]}", flush=True)
            return None
        print(
            f"{task} {model} s{seed}: return {row['final_return']:.3f} (state reset each step "
            f"{row['ablation_return']:.3f}), {time.perf_counter() - start:.0f} s",
            flush=True,
        )
        return row

    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        for row in pool.map(work, jobs):
            if row is None:
                continue
            new = not summary.is_file()
            with open(summary, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=FIELDS)
                if new:
                    writer.writeheader()
                writer.writerow(row)


if __name__ == "__main__":
    main()
