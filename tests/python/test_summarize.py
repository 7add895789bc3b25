"""`make test`'s summary line (tools/summarize.py): a pytest run that crashed
before writing its results must count as a failure, once."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "summarize.py"


@pytest.fixture(scope="module")
def summarize():
    spec = importlib.util.spec_from_file_location("summarize", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def junit(failures: int, errors: int = 0, skip_reason: str = "") -> str:
    skipped = (f'<testcase name="s"><skipped message="{skip_reason}">{skip_reason}</skipped>'
               "</testcase>")
    return (f'<testsuites><testsuite name="pytest" tests="4" failures="{failures}" '
            f'errors="{errors}" skipped="1">{skipped}</testsuite></testsuites>')


@pytest.mark.parametrize("status, xml, expected", [
    # Its status not written: the XML counts, with one failure if it has none.
    (None, junit(2), (1, 2, 1)),
    (None, junit(0), (3, 1, 1)),
    ("0", junit(0), (3, 0, 1)),
    ("1", junit(2), (1, 2, 1)),
    ("1", junit(0, errors=1), (2, 1, 1)),
    # Crashed: no results, or results cut short, or none of its failure.
    ("134", None, (0, 1, 0)),
    ("0", None, (0, 1, 0)),
    ("134", junit(0)[:60], (0, 1, 0)),
    ("3", junit(0, skip_reason='needs errors=&quot;1&quot;'), (3, 1, 1)),
], ids=["no_status_failed", "no_status_passed", "passed", "failed", "errors", "crashed",
        "exited_0_without_results", "cut_short", "interrupted"])
def test_each_pytest_run_counts_its_exit_status(summarize, tmp_path, capsys, status, xml,
                                                expected):
    if status is not None:
        (tmp_path / "pytest-jax.status").write_text(status + "\n")
    if xml is not None:
        (tmp_path / "pytest-jax.xml").write_text(xml)
    (tmp_path / "counts.txt").write_text("ruff 1 0 0\n")
    failed = expected[1] > 0
    assert summarize.main(tmp_path) == int(failed)
    passed, failures, skipped = expected
    last_line = capsys.readouterr().out.splitlines()[-1]
    assert last_line == f"{passed + 1} passed, {failures} failed, {skipped} skipped"


@pytest.mark.parametrize("line", ["testthat 10 0 0 extra", "testthat 1 0", "testthat"])
def test_a_counts_line_that_is_not_one_counts_as_a_failure(summarize, tmp_path, capsys, line):
    (tmp_path / "counts.txt").write_text(f"ruff 1 0 0\n{line}\n")
    assert summarize.main(tmp_path) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "1 passed, 1 failed, 0 skipped"
