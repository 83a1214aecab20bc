"""The documentation holds together: README.md stays a front door, every page in docs/ is reachable from
it, every relative link leads to a file (and heading), and the generated pages are what their scripts write."""

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
FENCED = re.compile(r"^```.*?^```", flags=re.S | re.M)  # code blocks: their brackets are not links


def links(page: Path) -> list[str]:
    return LINK.findall(FENCED.sub("", page.read_text()))


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCED.sub("", page.read_text())
    return {anchor(heading) for heading in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_is_a_front_door_of_at_most_260_lines():
    lines = len(README.read_text().splitlines())
    assert lines <= 260, f"README.md has {lines} lines: move the depth to a page in docs/"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / target.split("#")[0]).resolve() for target in links(README)}
    unlinked = [page.name for page in PAGES if page.resolve() not in linked]
    assert PAGES and not unlinked, f"pages README.md does not link: {unlinked}"


def test_every_relative_link_leads_to_a_file_and_heading():
    broken = []
    for page in [README, *PAGES]:
        for target in links(page):
            if re.match(r"[a-z]+:", target):  # https:, mailto:: not ours to check
                continue
            path, _, fragment = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif fragment and file.suffix == ".md" and fragment not in anchors(file):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_readmes_python_is_the_code_a_test_runs():
    """test_model_selection.py runs docs/EVALUATION.md's blocks; README.md may show some of them, verbatim."""
    evaluation = (REPO / "docs" / "EVALUATION.md").read_text()
    tested = python_blocks(evaluation[evaluation.index("## Using a trained model") :])
    untested = [block for block in python_blocks(README.read_text()) if block not in tested]
    assert not untested, f"README.md's python blocks must be copies of docs/EVALUATION.md's: {untested}"


def test_the_options_page_is_what_the_script_writes():
    spec = importlib.util.spec_from_file_location("options_reference", REPO / "scripts" / "options_reference.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    page = (REPO / "docs" / "OPTIONS.md").read_text()
    assert page == script.reference(), "docs/OPTIONS.md is stale: run python scripts/options_reference.py"
