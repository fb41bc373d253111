"""The documentation says what the code does: its tables come from the registries, its links resolve."""

from __future__ import annotations

import re

from conftest import REPO

from search import vocabulary
from search.hparams import NAMES


def test_the_tables_are_the_registries_own():
    for path in (REPO / "README.md", REPO / "docs" / "vocabulary.md"):
        text = path.read_text()
        assert vocabulary.render(text) == text, f"{path.name}'s tables are out of date: run `make docs`"
    assert set(vocabulary.MEANING) == set(NAMES)  # every hyperparameter says what it means


def test_every_link_points_inside_the_repository_and_exists():
    for path in [REPO / "README.md", *(REPO / "docs").glob("*.md"), REPO / "bench" / "README.md"]:
        for target in re.findall(r"\]\(([^)#]+)[^)]*\)", path.read_text()):
            assert "://" not in target, f"{path.name} links outside the repository: {target}"
            assert (path.parent / target).exists(), f"{path.name} links to a missing file: {target}"


def test_the_readme_is_short_enough_to_read():
    assert len((REPO / "README.md").read_text().encode()) <= 12 * 1024
