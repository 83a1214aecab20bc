"""Every YAML file a user gives the project (a --config file, a sweep file, a run folder's config.yaml),
read by one guarded loader: yaml.safe_load's, refusing in one line what no file of options holds (a
key set twice, aliases that expand past a small size, a list as a key, nesting, huge values).
"""

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from mnist_dist.errors import ConfigError, UserError, first_line

# A file of options is a few KB and flat (a sweep file nests 3 deep); past these bounds a file is refused
# at once: 9 levels of 9 aliases ("billion laughs") expand to 387 million values, a minute and MemoryError.
MAX_BYTES = 1 << 20  # a file of options is a few KB; PyYAML takes seconds per MB
MAX_DEPTH = 20  # lists and mappings inside each other
ALIAS_VALUES = 10_000  # values the aliases (*name) may add to those written out


class UnfitYaml(yaml.YAMLError):
    """Valid YAML that no file of options holds. The message follows "config file PATH " and ends with the fix."""


class GuardedLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing what no file of options holds, each with its own fix."""

    def __init__(self, stream):
        super().__init__(stream)
        self.expanded, self.depth = {}, 0  # node -> how many values it holds with its aliases written out

    def compose_node(self, parent, index):
        event = self.peek_event()  # the node's first: an alias, a scalar, or a list or mapping's start
        where, self.depth = f"line {event.start_mark.line + 1}", self.depth + 1
        if self.depth > MAX_DEPTH:
            raise UnfitYaml(f"nests lists or mappings more than {MAX_DEPTH} deep ({where}): write options flat.")
        node = super().compose_node(parent, index)
        self.depth -= 1
        if isinstance(event, yaml.AliasEvent):  # the anchored node itself, counted where it was written
            if node in self.expanded:
                return node
            raise UnfitYaml(f"has an alias inside its own value (*{event.anchor}, {where}): write the value out.")
        parts = node.value if isinstance(node, yaml.SequenceNode) else []
        parts = [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else parts
        self.expanded[node] = 1 + sum(self.expanded[part] for part in parts)
        if self.expanded[node] > len(self.expanded) + ALIAS_VALUES:  # len: the values written out so far
            raise UnfitYaml(f"has aliases that expand to over {ALIAS_VALUES:,} values ({where}): write the values out.")
        return node

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except ValueError as problem:  # int() past 4,300 digits, a date such as 2020-13-45, !!int abc
            why = first_line(problem).split(";")[0]  # without Python's advice to raise its digits limit
            raise UnfitYaml(f"has an unreadable value (line {node.start_mark.line + 1}: {why}): fix it.") from None

    def construct_mapping(self, node, deep=False):
        lines = {}
        for key_node in [key for key, _ in node.value if not key.tag.endswith(":merge")]:  # `<<: *a`: PyYAML's
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if not isinstance(key, Hashable):  # `? [a, b]: 1`
                kind = "mapping" if isinstance(key, dict) else type(key).__name__
                raise UnfitYaml(f"has a {kind} as a key (line {line}): a key is a name, such as lr.")
            if isinstance(key, (str, int, float, bool)) and key in lines:
                raise UnfitYaml(f"sets {key!r} twice (lines {lines[key]} and {line}): keep one.")
            lines[key] = line
        return super().construct_mapping(node, deep)


def read_yaml_mapping(path: Path, error: type[UserError] = ConfigError, fix: str = "fix the file") -> dict[str, Any]:
    """A YAML file of option: value as a dict with `_` in its keys (`batch-size` -> `batch_size`). Every
    problem is one `error` naming the file; `fix` says what to do about a damaged one."""
    try:
        if path.stat().st_size > MAX_BYTES:  # callers pass regular files (is_file): their size is what read_text reads
            raise UnfitYaml(f"is over {MAX_BYTES:,} bytes, not a file of options: pass the right file.")
        data = yaml.load(path.read_text(), Loader=GuardedLoader)  # safe_load's loader, plus its checks
    except UnfitYaml as problem:
        raise error(f"config file {path} {problem}") from None
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise error(f"config file {path} is not valid YAML{where}: {fix}.") from None
    except (OSError, UnicodeDecodeError) as problem:
        raise error(f"config file {path} cannot be read ({problem}).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"config file {path} must be a mapping of option: value, got {type(data).__name__}: {fix}.")
    return {str(key).replace("-", "_"): value for key, value in data.items()}
