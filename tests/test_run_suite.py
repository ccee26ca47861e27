"""scripts/run_suite.py: an interrupted run resumes from its checkpoint, or starts over without one."""

from pathlib import Path

from script_loader import load_script

run_suite = load_script("run_suite")


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "s0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 0\n")
    (run_dir / "checkpoints" / "step_000000000512.zip").write_bytes(b"model")
    assert run_suite._start_or_resume(run_dir) == [f"resume={run_dir}"]
    assert (run_dir / "checkpoints" / "step_000000000512.zip").read_bytes() == b"model"


def test_an_interrupted_run_without_a_checkpoint_starts_over(tmp_path: Path) -> None:
    run_dir = tmp_path / "s0"
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 0\n")
    assert run_suite._start_or_resume(run_dir) == []
    assert not run_dir.exists()
    assert run_suite._start_or_resume(tmp_path / "never_started") == []
