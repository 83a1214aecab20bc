"""The package's shape (docs/ARCHITECTURE.md): imports flow one way, the top level stays small, and
every subpackage says what lives there and imports nothing when it is imported."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mnist_dist"

# The layers, lowest first. A module may import its own package and anything in a lower layer.
FOUNDATION = {"errors", "config", "recipes", "cli", "yaml_files", "atomic", "distributed", "models", "data"}
LAYERS = [FOUNDATION, {"checkpoint"}, {"tracking"}, {"evaluate"}, {"train"}, {"sweep", "check", "commands", "__init__"}]


def layer_of(part: str) -> int:
    return next(index for index, names in enumerate(LAYERS) if part in names)


def runtime_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level part of mnist_dist) of every import of the package, skipping `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
        for child in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mnist_dist"):
            parts = node.module.split(".")
            names = [parts[1]] if len(parts) > 1 else [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".")[1] for alias in node.names if alias.name.startswith("mnist_dist.")]
        found += [(node.lineno, name) for name in names]
    return found


def test_imports_flow_down_the_layers():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        own = relative.parts[0].removesuffix(".py")
        for line, imported in runtime_imports(path):
            if imported == own or own in FOUNDATION and imported in FOUNDATION:
                continue
            if layer_of(imported) >= layer_of(own):  # upward, or sideways to a peer of the same layer
                wrong.append(f"mnist_dist/{relative}:{line} imports mnist_dist.{imported}")
    assert not wrong, "imports against the one-way rule (docs/ARCHITECTURE.md):\n" + "\n".join(wrong)


def test_the_top_level_holds_only_what_every_part_shares():
    modules = sorted(path.stem for path in PACKAGE.glob("*.py"))
    assert len(modules) <= 10, modules
    packages = sorted(path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file())
    assert packages == ["check", "checkpoint", "data", "evaluate", "sweep", "tracking", "train"]


def test_every_subpackage_says_what_lives_there_and_imports_nothing():
    for init in PACKAGE.glob("*/__init__.py"):
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{init} has no docstring"
        assert "May import" in ast.get_docstring(tree), f"{init} does not state what it may import"
        imports = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
        assert not imports, f"{init} imports at import time: --help would load more than it needs"


def test_no_module_is_longer_than_300_lines():
    lines = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    long = {name: count for name, count in lines.items() if count > 300}
    assert not long, long


def test_no_function_is_longer_than_40_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 40:
                long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert not long, long


def test_the_trainer_class_is_the_loop_alone_under_150_lines():
    loop = ast.parse((PACKAGE / "train" / "loop.py").read_text())
    trainer = next(node for node in loop.body if isinstance(node, ast.ClassDef) and node.name == "Trainer")
    assert trainer.end_lineno - trainer.lineno < 150
