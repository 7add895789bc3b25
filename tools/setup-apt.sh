#!/usr/bin/env bash
# Debian packages for R, the package's checks, its docs and the site test,
# and those keras3 needs to install from source (tools/setup-keras3.sh).
# Quick when everything is already installed.
set -euo pipefail
packages=(
  r-base-core r-cran-reticulate r-cran-testthat r-cran-cli r-cran-rlang
  r-cran-withr r-cran-roxygen2 r-cran-knitr r-cran-rmarkdown r-cran-pkgdown
  r-cran-callr pandoc qpdf tidy chromium fonts-dejavu-core
  # Python, for the project's virtual environment (Makefile):
  python3 python3-venv
  # keras3 and the newer reticulate it needs:
  r-base-dev r-cran-rcpp r-cran-rcpptoml r-cran-here r-cran-png r-cran-matrix
  r-cran-jsonlite r-cran-rappdirs r-cran-base64enc r-cran-whisker r-cran-generics
  r-cran-zeallot r-cran-rstudioapi r-cran-tidyselect r-cran-backports r-cran-yaml
  r-cran-processx r-cran-lifecycle r-cran-magrittr r-cran-glue r-cran-fastmap
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
