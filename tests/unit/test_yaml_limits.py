"""Hostile YAML files (issue 21): every YAML file the project reads from a user (a --config file, a sweep
file, a run folder's config.yaml) goes through yaml_files.read_yaml_mapping, which refuses aliases that expand
too far ("billion laughs"), a key that is not a name, a value Python cannot hold, deep nesting and a file
too large to be one of options, each at once and in one line naming the fix."""

import time

import pytest
from helpers import assert_clean_error, run_script

from mnist_dist.cli import parse_config
from mnist_dist.errors import ConfigError
from mnist_dist.sweep.spec import SweepError, read_sweep
from mnist_dist.yaml_files import ALIAS_VALUES, MAX_BYTES, read_yaml_mapping


def billion_laughs(levels: int = 9) -> str:
    """`lr: [...]`, each level a list of 9 aliases of the one before: 9**9, 387 million values, when expanded."""
    lists = ["&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lists += [f"&l{level} [{', '.join([f'*l{level - 1}'] * 9)}]" for level in range(1, levels)]
    return f"lr: [{', '.join(lists)}]\n"


HOSTILE = {
    "billion laughs": (billion_laughs(), f"has aliases that expand to over {ALIAS_VALUES:,} values (line 1)"),
    "an alias inside itself": ("lr: &a [1, *a]\n", "has an alias inside its own value (*a, line 1)"),
    "a list as a key": ("? [a, b]\n: 1\n", "has a list as a key (line 1): a key is a name, such as lr."),
    "the issue's unhashable key": ("? [a, b]: 1\n", "as a key (line 1): a key is a name, such as lr."),
    "an integer of 5,000 digits": (
        "lr: 0.1\nseed: " + "7" * 5000 + "\n",
        "has an unreadable value (line 2: Exceeds the limit (4300 digits) for integer string conversion: value has "
        "5000 digits): fix it.",
    ),
    "a date that is none": ("lr: 2020-13-45\n", "has an unreadable value (line 1: month must be in 1..12): fix it."),
    "nesting 5,000 deep": ("lr: " + "[" * 5000 + "]" * 5000 + "\n", "nests lists or mappings more than 20 deep"),
    "over a megabyte": ("lr: 0.1\n" + "#" * MAX_BYTES + "\n", f"is over {MAX_BYTES:,} bytes, not a file of options"),
}


def write(tmp_path, text: str, name: str = "hostile.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def assert_one_line(error: Exception, path, message: str) -> None:
    text = str(error)
    assert text.startswith(f"config file {path} ") and message in text, text
    assert "\n" not in text and len(text) < 300, text


@pytest.mark.parametrize("text, message", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_config_file_is_one_error_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        parse_config(["--config", str(path)])  # train.py's way to its --config file
    assert_one_line(error.value, path, message)


@pytest.mark.parametrize("text, message", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_sweep_file_is_one_error_line(tmp_path, text, message):
    path = write(tmp_path, "method: grid\nparameters: {lr: {values: [0.1]}}\n" + text.replace("lr:", "x:", 1))
    with pytest.raises(SweepError) as error:
        read_sweep(path)
    assert_one_line(error.value, path, message.replace("line 1", "line 3").replace("line 2", "line 4"))


def test_billion_laughs_is_refused_without_expanding(tmp_path):
    for levels in (9, 30):  # 30 levels: 9**30 values, refused as fast
        path = write(tmp_path, billion_laughs(levels))
        start = time.perf_counter()
        with pytest.raises(ConfigError, match="has aliases that expand"):
            read_yaml_mapping(path)
        # Expanding even 9**9 values takes minutes and gigabytes; the refusal takes milliseconds. The bound
        # is loose on purpose: a loaded machine (CI's other worker) once took 0.29 s.
        assert time.perf_counter() - start < 5


def test_small_aliases_and_merge_keys_are_still_read(tmp_path):
    text = "base: &base {lr: 0.1, epochs: 3}\nrun:\n  <<: *base\n  epochs: 2\ntags: &t [a, b]\nsame: *t\n"
    values = read_yaml_mapping(write(tmp_path, text))
    assert values["run"] == {"lr": 0.1, "epochs": 2} and values["same"] == ["a", "b"]
    # Just inside the limit: aliases that add ALIAS_VALUES values (one list of 100, aliased 99 times).
    text = f"a: &a [{', '.join(['1'] * 100)}]\nb: [{', '.join(['*a'] * 99)}]\n"
    assert len(read_yaml_mapping(write(tmp_path, text))["b"]) == 99


def test_train_py_refuses_billion_laughs_in_one_line_with_exit_2(tmp_path):
    path = write(tmp_path, billion_laughs())
    start = time.perf_counter()
    result = run_script("train.py", ["--config", path, "--dry-run"], timeout=60)
    assert_clean_error(result, f"config file {path} has aliases that expand", "write the values out")
    assert time.perf_counter() - start < 30  # the process's start; before, 48-89 s and MemoryError
