"""Sums the test results in a folder into one line: N passed, N failed, N skipped.

It reads each pytest run's exit status (NAME.status) with its JUnit XML
(NAME.xml), and counts.txt, whose lines are `suite passed failed skipped`.
It exits with 1 if anything failed and 0 otherwise.
"""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def junit_counts(path: Path) -> tuple[int, int, int]:
    """Passed, failed (errors too) and skipped in a JUnit XML file; one failure if cut short."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return 0, 1, 0
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    tests = failed = skipped = 0
    for suite in suites:
        tests += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    return tests - failed - skipped, failed, skipped


def pytest_counts(folder: Path, run: str) -> tuple[int, int, int]:
    """A pytest run's counts, from RUN.xml and its exit status, RUN.status.
    pytest writes its XML when the session ends: a run that crashed (a
    segfault, the OOM killer) left none, or one without its failure; such a
    run, or one that exited failing with no failure recorded, counts one
    failure."""
    xml, status_file = folder / f"{run}.xml", folder / f"{run}.status"
    passed, failed, skipped = junit_counts(xml) if xml.exists() else (0, 0, 0)
    status = status_file.read_text().strip() if status_file.exists() else "unknown"
    if failed == 0 and (status != "0" or not xml.exists()):
        print(f"{run}: exit status {status}, "
              f"{'no failure recorded' if xml.exists() else 'no results written'}")
        failed = 1
    return passed, failed, skipped


def counts_line(line: str) -> tuple[str, int, int, int]:
    """`suite passed failed skipped`; a line that is not one counts as a failure."""
    try:
        name, passed, failed, skipped = line.rsplit(maxsplit=3)
        return name, int(passed), int(failed), int(skipped)
    except ValueError:
        print(f"counts.txt: not `suite passed failed skipped`: {line!r}")
        return line, 0, 1, 0


def main(folder: Path) -> int:
    """Prints each suite's counts and the summary line; 1 if anything failed."""
    runs = sorted({p.stem for p in [*folder.glob("*.xml"), *folder.glob("*.status")]})
    rows = [(run, *pytest_counts(folder, run)) for run in runs]
    counts = folder / "counts.txt"
    if counts.exists():
        rows += [counts_line(line) for line in counts.read_text().splitlines() if line.strip()]
    for name, passed, failed, skipped in rows:
        print(f"  {name:<20} {passed:>5} passed {failed:>3} failed {skipped:>3} skipped")
    passed, failed, skipped = (sum(row[i] for row in rows) for i in (1, 2, 3))
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
