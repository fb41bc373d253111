"""Every command follows the same conventions for a user's mistakes."""

from __future__ import annotations

import importlib

import pytest

COMMANDS = {
    "run": ["spaces/digits.py", "--max-trails", "3"],
    "ensemble": ["digits", "--top-kk", "2"],
    "predict": ["digits", "--images", "x", "--modle", "m.keras"],
    "report": ["digits", "--topp", "3"],
    "featuremaps": ["digits", "--image", "x.png", "--layer", "2"],
    "export": ["digits", "--max-image", "5"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_mistyped_option_gets_a_suggestion_and_exit_2(command, capsys):
    parser = importlib.import_module(f"search.{command}").build_parser()
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(COMMANDS[command])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "Did you mean '--" in error, error
    assert f"python -m search.{command}" in error


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_options_are_never_abbreviated(command):
    # An abbreviation silently accepted today breaks the day a second option shares its prefix.
    assert importlib.import_module(f"search.{command}").build_parser().allow_abbrev is False
