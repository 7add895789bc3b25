# Builds the pkgdown site into docs/ without touching the internet; `make
# site` runs it. The vignettes and the examples run when Python with Keras is
# available (see keraslion_available()), as in R CMD build.

options(pkgdown.internet = FALSE)

# downlit 0.4.2 (Debian 12) links `library(pkg)` in code to the package's
# site. For a package that is not installed (keras3, where tools/setup-keras3.sh
# could not install it) it downloads CRAN's package database, and stops
# with an error when it cannot. Give it an empty database instead: such calls
# are simply not linked. The override lives in this process only, hence
# new_process = FALSE below.
offline_cran_urls <- function() data.frame(Package = character(), URL = character())
utils::assignInNamespace("CRAN_urls", offline_cran_urls, ns = "downlit")

pkgdown::build_site(".", new_process = FALSE, install = TRUE, preview = FALSE)
