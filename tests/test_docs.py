"""The docs describe the code as it is: every setting, the commands, and links that resolve."""

from __future__ import annotations

import re
from pathlib import Path

from bots.conversation.commands import parity_table
from core.settings import Settings, env_name
from core.settings_reference import COMMAND, SETUP_VARIABLES, TOPICS, render
from tests.conftest import REPO

CONFIGURATION = REPO / "docs" / "configuration.md"


def _setup_variables() -> set[str]:
    return set(re.findall(r"\$\{(PERSONABOT_[A-Z0-9_]+)", (REPO / "scripts" / "setup").read_text()))


def _documented(text: str) -> set[str]:
    return set(re.findall(r"`(PERSONABOT_[A-Z0-9_]+)`", text))


def test_configuration_page_is_the_one_the_code_makes() -> None:
    assert CONFIGURATION.read_text() == render(), f"run `{COMMAND}`"


def test_configuration_page_documents_every_setting() -> None:
    page = CONFIGURATION.read_text()
    for field in Settings.model_fields:
        assert f"`{env_name(field)}`" in page, f"{env_name(field)} missing from {CONFIGURATION}"
    assert sorted(n for _, names in TOPICS for n in names) == sorted(Settings.model_fields)
    setup = _setup_variables()
    assert setup >= {"PERSONABOT_TORCH", "PERSONABOT_EXTRAS", "PERSONABOT_CONSTRAINTS"}
    assert setup == {name for name, _, _ in SETUP_VARIABLES}, "scripts/setup's variables"
    assert setup <= _documented(page), "scripts/setup's variables belong in docs/configuration.md"


def test_docs_name_only_settings_that_exist() -> None:
    known = {env_name(f) for f in Settings.model_fields} | _setup_variables()
    others = {"benchmarks.md", "benchmarks-log.md"}  # another page's own variables
    pages = [REPO / "README.md"] + [
        p for p in sorted((REPO / "docs").glob("*.md")) if p.name not in others
    ]
    for page in pages:
        unknown = _documented(page.read_text()) - known
        assert not unknown, f"{page.name} names settings that do not exist: {sorted(unknown)}"


def test_descriptions_carry_no_measurements() -> None:
    # Figures belong in docs/benchmarks.md; a description says what a setting does and why.
    measured = re.compile(r"\d\s*(?:x\b|tok/s|tokens/s|ms\b)|\bH[12]00\b", re.I)
    for name, field in Settings.model_fields.items():
        found = measured.search(field.description or "")
        assert not found, f"{name}'s description carries a measurement: {found[0]!r}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert "scripts/test" in readme and "scripts/start" in readme
    assert "scripts/test" in (REPO / ".ci" / "run").read_text()


def test_readme_command_table_is_the_one_the_code_makes() -> None:
    readme = (REPO / "README.md").read_text()
    shown = readme.split("<!-- commands:start -->\n", 1)[1].split("\n<!-- commands:end -->", 1)[0]
    assert shown == parity_table(), "run `python -m bots.conversation.commands` into README"


def test_readme_is_short() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail to docs/"


def _headings(page: Path) -> set[str]:
    """The anchors GitHub makes for a page's headings (lower case, punctuation dropped)."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    anchors: set[str] = set()
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        repeat = sum(1 for anchor in anchors if re.fullmatch(rf"{re.escape(slug)}(-\d+)?", anchor))
        anchors.add(f"{slug}-{repeat}" if repeat else slug)
    return anchors


def test_relative_links_point_to_files_and_headings_that_exist() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    link = re.compile(r"\]\(([^)\s]+)\)")
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code is not links
        for target in link.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # another site
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            assert path.exists(), f"{page.relative_to(REPO)} links to missing {target}"
            if anchor and path.suffix == ".md":
                assert anchor in _headings(path), f"{page.relative_to(REPO)}: no heading {target}"


def test_code_links_to_headings_that_exist() -> None:
    for module in sorted(REPO.glob("[bct]*/**/*.py")):
        for page, anchor in re.findall(r"docs/([\w-]+\.md)#([\w-]+)", module.read_text()):
            where = f"{module.relative_to(REPO)} links to docs/{page}#{anchor}"
            assert anchor in _headings(REPO / "docs" / page), where
