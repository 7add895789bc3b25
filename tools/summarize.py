"""Sums the test results in a folder into one line: N passed, N failed, N skipped.

It reads pytest's JUnit XML files (*.xml) and counts.txt, whose lines are
`suite passed failed skipped`. It exits with 1 if anything failed and 0
otherwise.
"""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def junit_counts(path: Path) -> tuple[int, int, int]:
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


def main(folder: Path) -> int:
    rows = [(p.stem, *junit_counts(p)) for p in sorted(folder.glob("*.xml"))]
    counts = folder / "counts.txt"
    if counts.exists():
        for line in counts.read_text().splitlines():
            name, *numbers = line.rsplit(maxsplit=3)
            rows.append((name, *map(int, numbers)))
    for name, passed, failed, skipped in rows:
        print(f"  {name:<20} {passed:>5} passed {failed:>3} failed {skipped:>3} skipped")
    passed, failed, skipped = (sum(row[i] for row in rows) for i in (1, 2, 3))
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
