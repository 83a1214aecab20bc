"""`--help` of train.py and evaluate.py: options grouped by topic, valid values shown, each default said once."""

import functools
import os
import re
import subprocess
import sys
from collections import Counter

import pytest
from helpers import REPO

from mnist_dist.cli import OPTION_GROUPS, Parser, build_parser, examples_text, parse_config
from mnist_dist.config import CHOICES, FIELDS
from mnist_dist.errors import ConfigError


@functools.cache
def help_text(script: str) -> str:
    """The script's --help as a user sees it, 100 columns wide."""
    env = {**os.environ, "COLUMNS": "100"}
    result = subprocess.run([sys.executable, script, "--help"], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def option_entries(text: str) -> dict[str, str]:
    """Each option's entry in a --help text (`--flag ...` and its wrapped help lines), by its first flag."""
    entries, flag = {}, None
    for line in text.splitlines():
        match = re.match(r"  (--[a-z-]+)", line)
        if match:
            flag = match.group(1)
            entries[flag] = line
        elif flag and line.startswith("    "):
            entries[flag] += " " + line.strip()
        else:
            flag = None  # a blank line or a group's title ends the entry
    return entries


def test_every_config_field_is_in_exactly_one_group():
    listed = Counter(name for group in OPTION_GROUPS for name in group.names)
    assert sorted(listed) == sorted(FIELDS), "add the new option to one group of cli.OPTION_GROUPS"
    assert [name for name, count in listed.items() if count > 1] == []


def test_help_lists_each_group_with_its_options_in_order():
    groups = {group.title: group for group in build_parser()._action_groups}
    for group in OPTION_GROUPS:
        flags = [action.option_strings[0] for action in groups[group.title]._group_actions]
        expected = ["--" + name.replace("_", "-") for name in group.names]
        assert [flag for flag in flags if flag != "--config"] == expected
    assert "--config" in [action.option_strings[0] for action in groups["run"]._group_actions]


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_help_shows_the_valid_values_of_an_option_with_choices(name):
    flag = "--" + name.replace("_", "-")
    assert f"{flag} {{{','.join(CHOICES[name])}}}" in option_entries(help_text("train.py"))[flag]


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_no_option_says_its_default_twice(script):
    entries = option_entries(help_text(script))
    assert len(entries) > 10
    doubled = [flag for flag, entry in entries.items() if entry.count("default:") > 1]
    assert doubled == []


def test_every_train_option_says_its_default_once():
    entries = option_entries(help_text("train.py"))
    for name, spec in FIELDS.items():
        entry = entries["--" + name.replace("_", "-")]
        assert entry.count("default:") == 1, entry
        assert "(default: )" not in entry  # an empty string says "none" in words, in the field's help
        if isinstance(spec.default, (int, float)) and not isinstance(spec.default, bool):
            assert f"(default: {spec.default})" in entry


def test_help_groups_appear_in_order_after_the_usage_line():
    text = help_text("train.py")
    assert text.startswith("usage: train.py [--config FILE] [OPTION ...]")
    positions = [text.index(f"\n{group.title}:\n") for group in OPTION_GROUPS]
    assert positions == sorted(positions)


@pytest.mark.parametrize("prog, command", [("train.py", "python train.py"), ("mnist-dist-train", "mnist-dist-train")])
def test_an_error_points_to_the_help_of_the_command_that_was_run(prog, command):
    with pytest.raises(ConfigError, match=f"See {command} --help.$"):
        Parser(prog=prog).error("argument --epochs: expected one argument")


def test_help_says_a_flag_beats_the_config_file_beats_the_recipe_beats_the_default():
    text = " ".join(help_text("train.py").split("\noptions:")[0].split())  # the description, unwrapped
    assert "A flag given here beats the --config file, which beats the model's recipe" in text
    assert text.index("recipe") < text.index("beats the option's default")
    assert "else the flag" not in text


def test_help_ends_with_examples_each_a_valid_command_line(monkeypatch):
    text = help_text("train.py")
    examples = text[text.index("\nexamples:\n") :]
    assert text.index("\nexamples:\n") > text.index("\nrun:\n")  # after every option group
    commands = [line.split("#")[0].split() for line in examples.splitlines() if line.startswith("  python train.py")]
    assert len(commands) >= 5 and ["python", "train.py", "--dry-run"] in commands
    monkeypatch.chdir(REPO)  # the examples name configs/ from the repository root
    for command in commands:
        parse_config(command[2:])  # every flag exists and every value is valid


def test_the_installed_commands_help_shows_the_examples_with_its_own_name():
    text = examples_text("mnist-dist-train")
    assert "  mnist-dist-train --dry-run " in text and "train.py" not in text
