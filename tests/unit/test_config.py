"""Config: defaults < the model's recipe < YAML < flags, and every validation error names the problem and the fix."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

from mnist_dist.cli import load_yaml, parse_command_line, parse_config, yaml_text
from mnist_dist.config import MODELS, Config, make_config, stop_signal_names
from mnist_dist.errors import ConfigError
from mnist_dist.recipes import RECIPES


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_then_the_models_recipe_then_yaml_then_flags(tmp_path):
    path = write(tmp_path, "model: lenet\nlr: 0.5\nepochs: 7\nmomentum: 0.8\n")
    config, sources = parse_command_line(["--config", path, "--lr", "0.01", "--epochs", "3"])
    assert (config.model, config.lr, config.epochs, config.momentum) == ("lenet", 0.01, 3, 0.8)
    assert (config.batch_size, config.schedule) == (64, "none")  # lenet's recipe, not the defaults (256, onecycle)
    assert config.eval_batch_size == Config().eval_batch_size  # no recipe sets it
    assert sources == {
        **dict.fromkeys(RECIPES["lenet"], "recipe of lenet"),
        **dict.fromkeys(["model", "momentum"], path),
        **dict.fromkeys(["lr", "epochs"], "flag"),
    }


def test_a_flag_chooses_the_model_whose_recipe_applies(tmp_path):
    path = write(tmp_path, "model: lenet\n")
    config = parse_config(["--config", path, "--model", "mlp"])
    assert (config.model, config.optimizer, config.lr, config.batch_size) == ("mlp", "adam", 1e-3, 64)


def test_every_model_has_a_recipe_of_valid_options():
    assert set(RECIPES) == set(MODELS)
    for model, values in RECIPES.items():
        make_config({"model": model, **values})


def test_a_config_cannot_be_changed_once_made():
    config = parse_config(["--lr", "0.1"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.run_dir = "elsewhere"
    assert config.lr == 0.1 and config.run_dir == ""


def test_only_a_resolved_config_has_a_run_path():
    parsed = parse_config([])
    with pytest.raises(ValueError, match="train.job.resolve"):
        _ = parsed.run_path
    resolved = dataclasses.replace(parsed, run_name="r", run_dir="runs/r")  # what train.job.resolve returns
    assert resolved.run_path == Path("runs/r") and parsed.run_dir == ""


def test_yaml_scientific_notation_without_dot_is_a_number(tmp_path):
    # YAML 1.1 reads 1e-3 as a string; users write it anyway.
    assert parse_config(["--config", write(tmp_path, "lr: 1e-3\n")]).lr == 0.001


def test_yaml_accepts_hyphenated_keys(tmp_path):
    assert parse_config(["--config", write(tmp_path, "batch-size: 32\n")]).batch_size == 32


def test_boolean_flags_have_negations():
    assert parse_config(["--no-nesterov", "--cpu"]).nesterov is False
    assert parse_config(["--cpu"]).cpu is True


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_load(name):
    parse_config(["--config", str(REPO / "configs" / name)])


def test_saved_config_loads_back_equal(tmp_path):
    config = parse_config(["--model", "mlp", "--lr", "0.003", "--no-download"])
    (tmp_path / "config.yaml").write_text(yaml_text(config))
    assert make_config(load_yaml(str(tmp_path / "config.yaml"))) == config


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lr", "0"], "lr must be greater than 0, got 0.0"),
        (["--lr", "-1"], "lr must be greater than 0"),
        (["--lr", "fast"], "lr must be a number, got 'fast'"),
        (["--batch-size", "0"], "batch_size must be at least 1, got 0"),
        (["--batch-size", "2.5"], "batch_size must be an integer"),
        (["--epochs", "0"], "epochs must be at least 1"),
        (["--dataset", "mnsit"], "unknown dataset 'mnsit'. Did you mean 'mnist'? Valid: digits, mnist"),
        (["--model", "vgg"], "unknown model 'vgg'. Valid: " + ", ".join(MODELS)),
        (["--optimizer", "adm"], "unknown optimizer 'adm'. Did you mean 'adam'? Valid: sgd, adam, adamw"),
        (["--mixed-precision", "fp8"], "unknown mixed_precision 'fp8'"),
        (["--label-smoothing", "1"], "label_smoothing must be in [0, 1)"),
        (["--bacth-size", "3"], "unknown argument --bacth-size. Did you mean --batch-size?"),
        (["--dataset", "mnist-pkl"], "pass --data-file path/to/mnist.pkl.gz"),
        (["--config", "/no/such/file.yaml"], "config file /no/such/file.yaml does not exist"),
        (["--run-name", "../../x"], "run_name '../../x' is not a plain name"),
        (["--run-name", ".."], "run_name '..' is not a plain name"),
        (["--seed", "-5"], "seed must be 0 or more, got -5"),
        (["--seed", str(2**32)], "seed must be below 2**32"),
        (["--momentum", "2"], "momentum must be in [0, 1), got 2.0"),
        (["--data-file", "x.pkl.gz"], "--data-file is read by dataset mnist-pkl only, not digits"),
        (["--stop-signals", "USR3"], "unknown stop signal 'USR3'. Did you mean 'USR2'? Valid: USR1, USR2"),
        (["--stop-signals", ","], "stop_signals names no signal"),
        (["--eval-flip"], "--eval-flip averages each image with its mirror image, which changes digits' classes"),
        (["--dataset", "fashion-mnist", "--eval-flip"], "--eval-flip needs --augment: a model never trained on mirror"),
        (["--augment", "--augment-shift", "9"], "augment_shift 9: pass 0 to 8 pixels with --augment, or -1"),
        (["--augment-shift", "1"], "augment_shift 1: pass 0 to 8 pixels with --augment"),
    ],
)
def test_invalid_flags_are_explained(argv, message):
    with pytest.raises(ConfigError) as error:
        parse_config(argv)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("learning_rate: 0.1\n", "unknown option 'learning_rate'"),
        ("bach_size: 8\n", "Did you mean 'batch_size'?"),
        ("epochs: three\n", "epochs must be an integer, got 'three'"),
        ("cpu: maybe\n", "cpu must be true or false"),
        ("model: [lenet\n", "is not valid YAML (line 2, column 1)"),
        ("- lenet\n- cnn\n", "must be a mapping of option: value"),
        ("lr: 0.1\nepochs: 2\nlr: 0.3\n", "sets 'lr' twice (lines 1 and 3): keep one"),
    ],
)
def test_invalid_config_files_are_explained(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        parse_config(["--config", write(tmp_path, text)])
    assert message in str(error.value)


def test_help_answers_without_importing_torch():
    code = (
        "import sys, runpy; sys.argv = ['train.py', '--help']\n"
        "try:\n    runpy.run_path('train.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'accelerate', 'wandb') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert "--batch-size" in result.stdout
    assert result.stdout.strip().endswith("[]")


def test_the_options_reference_lists_every_option():
    reference = (REPO / "docs" / "OPTIONS.md").read_text()
    missing = [name for name in Config.__dataclass_fields__ if f"| `{name}` |" not in reference]
    assert not missing, f"regenerate docs/OPTIONS.md (scripts/options_reference.py); missing: {missing}"


def test_stop_signals_are_read_without_sig_prefix_case_or_repeats():
    assert stop_signal_names(parse_config(["--stop-signals", "sigusr2, TERM,USR2"]).stop_signals) == ("USR2", "TERM")
