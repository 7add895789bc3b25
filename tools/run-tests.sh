#!/usr/bin/env bash
# Runs every test suite, then prints one summary line:
#   N passed, N failed, N skipped
# and exits non-zero if anything failed. Called by `make test` (which sets up
# the environment first) and so by .ci/run.
set -uo pipefail
cd "$(dirname "$0")/.."

python="${RETICULATE_PYTHON:-$PWD/.venv/bin/python}"
# The project's R library (keras3 and its reticulate; tools/setup-keras3.sh)
# comes first for every R process, unless the caller chose otherwise.
export R_LIBS="${R_LIBS-$PWD/.Rlib}"
results=.test-results
rm -rf "$results" keraslion.Rcheck keraslion_*.tar.gz docs
mkdir -p "$results"

# One line per non-pytest suite: name passed failed skipped.
record() { echo "$1 $2 $3 $4" >> "$results/counts.txt"; }
section() { printf '\n==== %s ====\n' "$1"; }
# Which reticulate and keras3 the R processes started from here will use.
r_libraries() {
  Rscript -e 'v <- function(p) if (requireNamespace(p, quietly = TRUE)) format(packageVersion(p)) else' \
    -e '  if (nzchar(system.file(package = p))) "installed, cannot be loaded" else "not installed"' \
    -e 'cat("reticulate", v("reticulate"), "| keras3", v("keras3"), "\n")'
}

section "ruff (Python lint)"
if "$python" -m ruff check --config inst/python/pyproject.toml inst/python tests/python bench tools; then
  record ruff 1 0 0
else
  record ruff 0 1 0
fi

for backend in jax tensorflow torch; do
  section "pytest, KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend "$python" -m pytest tests/python -q -p no:cacheprovider \
    --junitxml="$results/pytest-$backend.xml"
  # pytest writes its XML when the session ends, so a run that crashed left
  # none, or one without its failure: summarize.py weighs its exit status.
  echo $? > "$results/pytest-$backend.status"
done

# R CMD check --as-cran, offline. The CRAN incoming feasibility check needs
# the network (CRAN's package database, URL and DOI checks) and notes the
# maintainer of every package; with _R_CHECK_CRAN_INCOMING_=false it is
# skipped and every other --as-cran check runs. _R_CHECK_SYSTEM_CLOCK_=0 (from
# the Makefile) skips the clock check, which also needs the network.
export _R_CHECK_CRAN_INCOMING_=false
# So does --as-cran's check for orphaned dependencies once one is not
# installed (keras3, suggested, in the check without Keras): it reads CRAN's
# package database. Offline, it reads an empty one, so nothing is orphaned.
mkdir -p "$results/cran/web/packages"
Rscript -e 'saveRDS(data.frame(Package = character(), Maintainer = character()), commandArgs(TRUE))' \
  "$results/cran/web/packages/packages.rds"
export R_CRAN_WEB="file://$PWD/$results/cran"
export _R_CHECK_SYSTEM_CLOCK_=0

# Without keras3 (keras3_absent=1: it could not be installed), --as-cran notes
# that the suggested package is missing, and R 4.2 has no switch for that
# NOTE: it alone passes.
only_keras3_missing_note() {
  [ -n "${keras3_absent:-}" ] && grep -Eq '^Status: 1 NOTE$' "$1" &&
    grep -Fq "Package suggested but not available for checking: ‘keras3’" "$1"
}

# check_package NAME TESTS DIR: R CMD build and R CMD check --as-cran in DIR,
# then records TESTS (testthat's counts) and NAME (the check itself, which
# passes only with "Status: OK": 0 errors, 0 warnings and 0 notes).
check_package() {
  local name=$1 tests=$2 dir=$3 status
  mkdir -p "$dir"
  (cd "$dir" && R CMD build --no-manual "$OLDPWD" && R CMD check --as-cran --no-manual keraslion_*.tar.gz)
  status=$?
  local rcheck="$dir/keraslion.Rcheck"
  local tests_out counts fail skip pass
  tests_out=$(ls "$rcheck"/tests/testthat.Rout* 2>/dev/null | head -n 1)
  counts=$(grep -Eo '\[ FAIL [0-9]+ \| WARN [0-9]+ \| SKIP [0-9]+ \| PASS [0-9]+ \]' "${tests_out:-/dev/null}" | tail -n 1)
  if [ -n "$counts" ]; then
    read -r fail skip pass < <(echo "$counts" | sed -E 's/.*FAIL ([0-9]+).*SKIP ([0-9]+).*PASS ([0-9]+).*/\1 \2 \3/')
    record "$tests" "$pass" "$fail" "$skip"
  else
    [ -n "$tests_out" ] && tail -n 40 "$tests_out"
    record "$tests" 0 1 0
  fi
  grep -E '^Status: ' "$rcheck/00check.log" 2>/dev/null | sed "s/^/$name: /"
  if [ "$status" -eq 0 ] && { grep -Eq '^Status: OK$' "$rcheck/00check.log" ||
    only_keras3_missing_note "$rcheck/00check.log"; }; then
    record "$name" 1 0 0
  else
    grep -E -B2 -A12 '\.\.\. *(\[.*\] *)?(NOTE|WARNING|ERROR)$' "$rcheck/00check.log" 2>/dev/null
    record "$name" 0 1 0
  fi
}

section "R CMD check --as-cran with Python and Keras (KERAS_BACKEND=$KERAS_BACKEND)"
r_libraries
check_package R-CMD-check testthat "$PWD"
# Where keras3 is installed, its suite must have run in that check, not skipped
# (skip_if_not_installed() says "keras3 cannot be loaded" or "is not installed").
if Rscript -e 'quit(status = !requireNamespace("keras3", quietly = TRUE))' 2>/dev/null; then
  if grep -Eq 'keras3 (cannot be loaded|is not installed)' keraslion.Rcheck/tests/testthat.Rout*; then
    echo "keras3 is installed, but R CMD check skipped its tests."
    record keras3-suite-ran 0 1 0
  else
    record keras3-suite-ran 1 0 0
  fi
fi

# The README's installation route: the tarball that R CMD build made (with
# the vignettes it built), installed with R CMD INSTALL into an empty library,
# has both vignettes where vignette() finds them.
section "Install the built tarball: vignettes"
vignette_lib=$(mktemp -d)
if R CMD INSTALL -l "$vignette_lib" keraslion_*.tar.gz > "$results/install-tarball.log" 2>&1 &&
  R_LIBS="$vignette_lib${R_LIBS:+:$R_LIBS}" Rscript -e '
    found <- vignette(package = "keraslion")$results
    found <- found[found[, "Package"] == "keraslion", "Item"]
    cat("vignette(package = \"keraslion\") lists:", found, "\n")
    quit(status = !setequal(found, c("keraslion", "lion-vs-adamw")))
  '; then
  record installed-vignettes 1 0 0
else
  tail -n 20 "$results/install-tarball.log"
  echo "The installed tarball does not have both vignettes."
  record installed-vignettes 0 1 0
fi
rm -rf "$vignette_lib"

# The keras3 tests again on a second backend, with the keraslion that R CMD
# check installed.
other_backend=torch
[ "$KERAS_BACKEND" = torch ] && other_backend=tensorflow
section "keras3 testthat suite, KERAS_BACKEND=$other_backend"
KERAS_BACKEND=$other_backend R_LIBS="$PWD/keraslion.Rcheck${R_LIBS:+:$R_LIBS}" Rscript -e '
  args <- commandArgs(trailingOnly = TRUE)
  results <- as.data.frame(testthat::test_dir(
    "tests/testthat", filter = "keras3", package = "keraslion",
    load_package = "installed", stop_on_failure = FALSE
  ))
  counts <- c(sum(results$passed), sum(results$failed) + sum(results$error), sum(results$skipped))
  cat(args[[1]], counts, "\n", file = args[[2]], append = TRUE)
' "testthat-keras3-$other_backend" "$results/counts.txt"
grep -q "^testthat-keras3-$other_backend " "$results/counts.txt" ||
  record "testthat-keras3-$other_backend" 0 1 0
# The vignettes in that tarball must have run their code, keras3's included:
# the getting-started one prints the class of the optimizer that a new R
# session found in the model it loaded.
# doc_has TARBALL VIGNETTE TEXT: the built vignette's HTML contains TEXT.
doc_has() {
  local html
  html=$(tar -xOzf "$1" "keraslion/inst/doc/$2.html" 2>/dev/null) && [[ $html == *"$3"* ]]
}
if doc_has keraslion_*.tar.gz keraslion 'chr &quot;keraslion.lion.Lion&quot;' &&
  doc_has keraslion_*.tar.gz lion-vs-adamw 'training runs, which took'; then
  record vignettes-with-keras 1 0 0
else
  echo "The vignettes built with Keras do not show the results of their code."
  record vignettes-with-keras 0 1 0
fi

# Again with a Python that has no Keras, and Debian's reticulate 1.28: the
# system's R libraries come first, .Rlib after them. keras3 is then installed
# (so R CMD check finds every suggested package) but cannot load, as it needs
# reticulate >= 1.42: its tests skip saying so, like those that need Keras,
# and the vignettes must build without evaluating their code.
section "R CMD check --as-cran with a Python without Keras"
no_keras_python=/usr/bin/python3
if ! "$no_keras_python" -c 'import sys' 2>/dev/null ||
  "$no_keras_python" -c 'import keras' 2>/dev/null; then
  # No system Python, or one with Keras: a bare virtual environment.
  "$python" -m venv --without-pip "$results/venv-no-keras"
  no_keras_python=$PWD/$results/venv-no-keras/bin/python
fi
system_first="$(R_LIBS= Rscript -e 'cat(.Library.site, sep = ":")'):$PWD/.Rlib"
R_LIBS= R_LIBS_SITE=$system_first r_libraries
# Where keras3 could not be installed at all, it is missing here too.
keras3_absent=$(R_LIBS= R_LIBS_SITE=$system_first Rscript -e 'cat(if (!nzchar(system.file(package = "keras3"))) 1)')
R_LIBS= R_LIBS_SITE=$system_first _R_CHECK_FORCE_SUGGESTS_=false keras3_absent=$keras3_absent \
  RETICULATE_PYTHON=$no_keras_python \
  check_package R-CMD-check-no-keras testthat-no-keras "$results/no-keras"
no_keras_tarball=$(ls "$results"/no-keras/keraslion_*.tar.gz 2>/dev/null | head -n 1)
if doc_has "$no_keras_tarball" keraslion 'Python with Keras was not available' &&
  doc_has "$no_keras_tarball" lion-vs-adamw 'Python with Keras was not available'; then
  record vignettes-no-keras 1 0 0
else
  echo "The vignettes built without Keras do not both say that their code did not run."
  record vignettes-no-keras 0 1 0
fi

section "pkgdown site (offline) + headless Chromium"
if Rscript tools/build-site.R > "$results/site-build.log" 2>&1; then
  record site-build 1 0 0
else
  tail -n 40 "$results/site-build.log"
  record site-build 0 1 0
fi
# Records site-test in counts.txt itself; a crash before that, or a failing
# exit after recording no failure, counts as one.
"$python" tools/site-test.py --site docs --out "$results" --record "$results/counts.txt"
status=$?
site_failed=$(awk '$1 == "site-test" { print $3 }' "$results/counts.txt")
if [ -z "$site_failed" ]; then
  record site-test 0 1 0
elif [ "$status" -ne 0 ] && [ "$site_failed" -eq 0 ]; then
  record site-test-exit 0 1 0
fi

section "summary"
"$python" tools/summarize.py "$results"
