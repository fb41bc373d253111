"""The benchmarks load and parse their options (running them takes minutes: see README, Performance)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("name", ["overhead", "input_pipeline", "memory", "gpu"])
def test_bench_script_loads_and_parses_its_options(name, capsys):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    assert "--quick" in capsys.readouterr().out
