#!/usr/bin/env bash
# Debian packages for R, the package's checks, its docs and the site test.
# Quick when everything is already installed.
set -euo pipefail
packages=(
  r-base-core r-cran-reticulate r-cran-testthat r-cran-cli r-cran-rlang
  r-cran-withr r-cran-roxygen2 r-cran-knitr r-cran-rmarkdown r-cran-pkgdown
  pandoc qpdf tidy chromium fonts-dejavu-core
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
