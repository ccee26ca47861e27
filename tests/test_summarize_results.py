"""scripts/summarize_results.py: learning curves and evaluation tables of groups of run folders."""

import json
from pathlib import Path

import numpy as np
import pytest
from script_loader import load_script

script = load_script("summarize_results")


def test_curves_of_run_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for seed, slope in ((0, 1.0), (1, 2.0)):
        logs = tmp_path / "runs" / f"tm_s{seed}" / "logs"
        logs.mkdir(parents=True)
        rows = "".join(f"{step},{slope * step / 100:.2f}\n" for step in (0, 50, 100))
        (logs / "progress.csv").write_text("time/total_timesteps,rollout/ep_rew_mean\n" + rows)
    monkeypatch.chdir(tmp_path)
    steps, returns = script._curve(Path("runs/tm_s1"))
    assert steps.tolist() == [0, 50, 100] and returns.tolist() == [0.0, 1.0, 2.0]
    script.plot_groups(["Tensor Memory=runs/tm_s*"], "a task", tmp_path / "plots" / "task.png")
    assert (tmp_path / "plots" / "task.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="expected label=glob"):
        script.plot_groups(["LSTM=runs/lstm_s*"], "a task", tmp_path / "none.png")


def test_groups_that_repeat_a_label_join_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for run in ("old/lstm_s0", "new/lstm_s1", "new/tm_s0"):
        (tmp_path / run / "logs").mkdir(parents=True)
        (tmp_path / run / "logs" / "progress.csv").write_text("time/total_timesteps,rollout/ep_rew_mean\n0,1.0\n")
    monkeypatch.chdir(tmp_path)
    drawn = []
    monkeypatch.setattr(script, "_draw", lambda ax, label, curves: drawn.append((label, len(curves))))
    script.plot_groups(["LSTM=old/lstm_s*", "TM=new/tm_s*", "LSTM=new/lstm_s*"], "a task", tmp_path / "task.png")
    assert drawn == [("LSTM", 2), ("TM", 1)]


def test_evaluation_table_of_run_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = {"lstm_s0": -10.0, "lstm_s1": -11.0, "lstm_s2": -12.0, "tm_s0": -12.0, "tm_s1": -13.0, "tm_s2": -14.0}
    for run, value in runs.items():
        (tmp_path / run).mkdir()
        record = {"mean_return": value, "memory_gain": 1.0, "mean_final_distance": 0.1 - value / 100}
        (tmp_path / run / "eval.json").write_text(json.dumps(record))
    (tmp_path / "tm_s3").mkdir()
    monkeypatch.chdir(tmp_path)
    lines = script.evaluation_table(["LSTM=lstm_s*", f"TM={tmp_path}/tm_s*"]).splitlines()  # absolute too
    assert lines[2] == "| LSTM | 3 | -10.00, -11.00, -12.00 | -11.00 +- 1.00 | - | 1.00 | 0.200-0.220 |"
    assert lines[3] == "| TM | 3 | -12.00, -13.00, -14.00 | -13.00 +- 1.00 | -2.4 | 1.00 | 0.220-0.240 |"
    assert lines[4:] == ["", "Welch's t against LSTM, two-sided: TM p 0.07 (4.0 df)"]
    with pytest.raises(SystemExit, match="run folders with eval.json"):
        script.evaluation_table(["GRU=gru_s*"])
    (tmp_path / "tm_s3" / "eval500.json").write_text(json.dumps({"mean_return": -12.5, "mean_final_distance": 0.2}))
    assert script.evaluation_table(["TM=tm_s*"], "eval500.json").splitlines()[2] == (
        "| TM | 1 | -12.50 | -12.50 | - | - | 0.200-0.200 |"
    )


def test_steps_to_table_of_run_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    curves = {
        "lstm_s0": (-20, -16, -14),
        "lstm_s1": (-20, -18, -16),
        "tm_s0": (-16, -14, -12),
        "tm_s1": (-18, -15, -13),
    }
    for run, returns in curves.items():
        (tmp_path / run / "logs").mkdir(parents=True)
        rows = "".join(f"{1000 * (i + 1)},{r}\n" for i, r in enumerate(returns))
        (tmp_path / run / "logs" / "progress.csv").write_text("time/total_timesteps,rollout/ep_rew_mean\n" + rows)
    monkeypatch.chdir(tmp_path)
    lines = script.steps_to_table(["LSTM=lstm_s*", "TM=tm_s*"], [-16, -14]).splitlines()
    assert lines[2:] == [
        "| -16 | LSTM | 2/2 | 2, 3 | 2 | - |",
        "| -16 | TM | 2/2 | 1, 2 | 2 | -1.4 |",
        "| -14 | LSTM | 1/2 | 3, - | 3 | - |",
        "| -14 | TM | 2/2 | 2, 3 | 2 | - |",
        "",
        "Welch's t against LSTM, two-sided: -16 TM p 0.29 (2.0 df)",
    ]


def test_welch_test_gives_students_two_sided_p() -> None:
    # t's critical values: 2.228 at 10 degrees of freedom and 12.706 at 1 for p = 0.05, 1.812 at 10 for 0.10,
    # 0.260 at 10 for 0.80 (large p: the fraction is taken at 1 - x, through the function's symmetry)
    for t, dof, p in ((2.228, 10, 0.05), (12.706, 1, 0.05), (1.812, 10, 0.10), (0.260, 10, 0.80), (0.0, 5, 1.0)):
        assert script._incomplete_beta(dof / 2, 0.5, dof / (dof + t * t)) == pytest.approx(p, abs=2e-4)
    t, dof, p = script.welch_test(np.array([1.0, 2.0]), np.array([2.0, 3.0]))
    assert (t, dof) == pytest.approx((-(2**0.5), 2.0))
    assert p == pytest.approx(1 - 2**-0.5)  # at 2 degrees of freedom p = 1 - |t| / sqrt(2 + t^2)
    uneven = script.welch_test(np.array([0.0, 1.0, 2.0, 3.0]), np.array([5.0, 5.5]))
    assert uneven[1] == pytest.approx((5 / 12 + 0.125 / 2) ** 2 / ((5 / 12) ** 2 / 3 + (0.125 / 2) ** 2))
    assert script.welch_test(np.array([1.0, 2.0, 3.0]), np.array([1.2, 2.2, 3.2]))[2] == pytest.approx(0.8185, abs=1e-4)
    assert script.welch_test(np.array([1.0]), np.array([1.0, 2.0])) is None
    assert script.welch_test(np.array([1.0, 1.0]), np.array([2.0, 2.0])) is None


def test_run_folders_are_taken_in_the_order_of_their_seeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for seed in (0, 1, 2, 10, 11):
        (tmp_path / f"tm_s{seed}").mkdir()
        (tmp_path / f"tm_s{seed}" / "eval.json").write_text(json.dumps({"mean_return": -1.0 - seed}))
    monkeypatch.chdir(tmp_path)
    row = script.evaluation_table(["TM=tm_s*"]).splitlines()[2]
    assert row.startswith("| TM | 5 | -1.00, -2.00, -3.00, -11.00, -12.00 |")


def test_steps_to_needs_returns_and_groups(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    for argv, message in (
        (["--steps-to=-16,x", "TM=tm_s*"], "expected returns separated by commas"),
        (["--steps-to=-16"], "need label=glob groups"),
    ):
        monkeypatch.setattr("sys.argv", ["summarize_results.py", *argv])
        with pytest.raises(SystemExit):
            script.main()
        assert message in capsys.readouterr().err
