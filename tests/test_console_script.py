import subprocess
import sys

# What the `epo` console script does: sys.exit(main()); a non-None return would exit 1.
SCRIPT = "import sys; from epo_lightning.cli import main; sys.exit(main())"


def test_epo_fit_exits_zero_after_a_debug_run(tmp_path):
    args = [
        "fit",
        "--config",
        "configs/quickstart.yaml",
        "--config",
        "configs/debug.yaml",
        f"--trainer.default_root_dir={tmp_path}",
        f"--model.init_args.cache_dir={tmp_path / 'cache'}",
        "--model.init_args.tiny.hidden_size=32",
        "--model.init_args.tiny.intermediate_size=64",
        "--model.init_args.tiny.num_layers=1",
        "--model.init_args.tiny.num_heads=2",
    ]
    result = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "val/success_rate" in result.stdout


def test_a_refused_setting_is_one_line_and_exit_status_two(tmp_path):
    args = ["fit", "--config", "configs/quickstart.yaml", "--model.init_args.temperature=0"]
    result = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "epo: error: ValueError: model.temperature must be > 0 for sampled training rollouts, got 0.0."
    )
    assert len(result.stderr.strip().splitlines()) <= 2  # at most Lightning's "Seed set to 0" before it
    assert "Traceback" not in result.stdout + result.stderr
