#!/usr/bin/env bash
# Runs every test suite, then prints one summary line:
#   N passed, N failed, N skipped
# and exits non-zero if anything failed. Called by `make test` (which sets up
# the environment first) and so by .ci/run.
set -uo pipefail
cd "$(dirname "$0")/.."

python="${RETICULATE_PYTHON:-$PWD/.venv/bin/python}"
results=.test-results
rm -rf "$results" keraslion.Rcheck keraslion_*.tar.gz
mkdir -p "$results"

# One line per non-pytest suite: name passed failed skipped.
record() { echo "$1 $2 $3 $4" >> "$results/counts.txt"; }
section() { printf '\n==== %s ====\n' "$1"; }

section "ruff (Python lint)"
if "$python" -m ruff check --config inst/python/pyproject.toml inst/python tests/python; then
  record ruff 1 0 0
else
  record ruff 0 1 0
fi

for backend in jax tensorflow torch; do
  section "pytest, KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend "$python" -m pytest tests/python -q -p no:cacheprovider \
    --junitxml="$results/pytest-$backend.xml"
done

section "R CMD build + R CMD check (testthat, KERAS_BACKEND=$KERAS_BACKEND)"
R CMD build . && R CMD check --no-manual keraslion_*.tar.gz
check_status=$?
tests_out=$(ls keraslion.Rcheck/tests/testthat.Rout* 2>/dev/null | head -n 1)
counts=$(grep -Eo '\[ FAIL [0-9]+ \| WARN [0-9]+ \| SKIP [0-9]+ \| PASS [0-9]+ \]' "${tests_out:-/dev/null}" | tail -n 1)
if [ -n "$counts" ]; then
  read -r fail skip pass < <(echo "$counts" | sed -E 's/.*FAIL ([0-9]+).*SKIP ([0-9]+).*PASS ([0-9]+).*/\1 \2 \3/')
  record testthat "$pass" "$fail" "$skip"
else
  [ -n "$tests_out" ] && tail -n 40 "$tests_out"
  record testthat 0 1 0
fi
# The check itself: an ERROR or WARNING fails it.
if [ "$check_status" -eq 0 ] && ! grep -Eq '^Status: .*(ERROR|WARNING)' keraslion.Rcheck/00check.log; then
  record "R-CMD-check" 1 0 0
else
  record "R-CMD-check" 0 1 0
fi

section "summary"
"$python" tools/summarize.py "$results"
