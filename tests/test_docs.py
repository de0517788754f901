"""The README documents every setting the code accepts, and only those."""

from __future__ import annotations

import re

from bots.conversation.commands import parity_table
from core.settings import Settings, env_name
from tests.conftest import REPO


def test_readme_documents_every_setting() -> None:
    readme = (REPO / "README.md").read_text()
    for field in Settings.model_fields:
        assert f"`{env_name(field)}`" in readme, f"{env_name(field)} missing from README"
    documented = set(re.findall(r"`(PERSONABOT_[A-Z0-9_]+)`", readme))
    known = {env_name(f) for f in Settings.model_fields}
    setup = set(
        re.findall(r"\$\{(PERSONABOT_[A-Z0-9_]+)", (REPO / "scripts" / "setup").read_text())
    )
    assert setup >= {"PERSONABOT_TORCH", "PERSONABOT_EXTRAS", "PERSONABOT_CONSTRAINTS"}
    assert setup <= documented, "scripts/setup's variables belong in README"
    assert documented <= known | setup


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert "scripts/test" in readme and "scripts/start" in readme
    assert "scripts/test" in (REPO / ".ci" / "run").read_text()


def test_readme_command_table_is_the_one_the_code_makes() -> None:
    readme = (REPO / "README.md").read_text()
    shown = readme.split("<!-- commands:start -->\n", 1)[1].split("\n<!-- commands:end -->", 1)[0]
    assert shown == parity_table(), "run `python -m bots.conversation.commands` into README"
