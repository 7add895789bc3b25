#!/usr/bin/env bash
# Installs keras3 into the project's R library .Rlib/ (git-ignored) unless R
# already finds it there or elsewhere: from ../shared/r-repo, a CRAN-like
# repository, when that folder exists, else from CRAN. keras3 needs a newer
# reticulate than Debian's, which comes along. It never fails: without keras3
# its tests skip and say why, and everything else runs. Quick when done.
set -uo pipefail
cd "$(dirname "$0")/.."
lib=$PWD/.Rlib
if [ -d ../shared/r-repo ]; then
  repo="file://$(cd ../shared/r-repo && pwd)"
else
  repo=https://cloud.r-project.org
fi
R_LIBS=$lib Rscript --vanilla - "$lib" "$repo" <<'R'
args <- commandArgs(trailingOnly = TRUE)
lib <- args[[1]]
repo <- args[[2]]
if (!requireNamespace("keras3", quietly = TRUE)) {
  dir.create(lib, showWarnings = FALSE)
  # R_LIBS names it, but R drops library folders that did not exist at start.
  .libPaths(c(lib, .libPaths()))
  message("Installing keras3 into ", lib, " from ", repo)
  install.packages("keras3", lib = lib, repos = repo, quiet = TRUE, Ncpus = 2L)
  if (!requireNamespace("keras3", quietly = TRUE)) {
    message("keras3 could not be installed; the tests that need it will skip.")
  }
}
R
exit 0
