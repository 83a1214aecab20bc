"""W&B is optional: offline runs write their files; without the package, training still completes."""

from helpers import REPO

SHORT = ["--model", "linear", "--dataset", "digits", "--max-steps", "3", "--batch-size", "500"]


def test_offline_run_is_written_into_the_run_dir(offline_short_run):
    result, run_dir = offline_short_run
    assert "W&B offline" in result.stdout
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_training_completes_when_wandb_cannot_be_imported(train, tmp_path):
    fake = tmp_path / "no-wandb" / "wandb"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('simulated: wandb not installed')\n")
    result, run_dir = train(*SHORT, "--wandb", "online", env={"PYTHONPATH": f"{fake.parent}:{REPO}"})
    assert "W&B disabled: the wandb package is not installed" in result.stdout
    assert (run_dir / "summary.json").exists()
