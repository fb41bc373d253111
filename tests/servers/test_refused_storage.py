"""A storage that refuses the search (a wrong password, a database that is not there) is one
line and exit 2 before anything is written: no data cache, no search.json, no runs folder."""

from __future__ import annotations

import pytest
from conftest import TINY

from servers.roles import password_role


@pytest.mark.parametrize("wrong", ["password", "database"])
def test_a_storage_that_refuses_the_search_is_one_line_and_nothing_is_written(zygote, postgres, digits_folders,
                                                                             tmp_path, wrong):
    url = password_role(postgres, f"refused_{wrong}", "right-Pa55")
    url = url.replace(":right-Pa55@", ":wrong-Pa55@") if wrong == "password" else url.rsplit("/", 1)[0] + "/nowhere"
    runs = tmp_path / "runs"
    done = zygote.run("run", TINY, "--data", digits_folders, "--algorithm", "tpe", "--storage", url,
                      "--runs-dir", runs, "--quiet", "--no-tracking")
    assert done.code == 2, done.output[-3000:]
    line = done.stderr.strip()
    assert line.startswith(f"error: cannot open the Optuna storage {url.split(':', 2)[0]}:{url.split(':', 2)[1]}:***@")
    assert line == done.stderr.splitlines()[0] and "Pa55" not in done.output
    assert ("password authentication failed" if wrong == "password" else '"nowhere" does not exist') in line
    assert not runs.exists()
