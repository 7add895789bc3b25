# .onLoad(): declares the Python requirements where reticulate can use them,
# and sets up the delayed import of the Python core without starting Python.

test_that("loading keraslion does not start Python", {
  skip_on_cran()
  skip_if(
    length(find.package("keraslion", lib.loc = .libPaths(), quiet = TRUE)) == 0,
    "keraslion is not installed"
  )
  rscript <- file.path(R.home("bin"), "Rscript")
  code <- paste(
    "suppressPackageStartupMessages(library(keraslion))",
    "cat('python started:', reticulate::py_available(), '\\n')",
    sep = "; "
  )
  out <- system2(rscript, c("--vanilla", "-e", shQuote(code)),
    env = paste0("R_LIBS=", paste(.libPaths(), collapse = .Platform$path.sep)),
    stdout = TRUE, stderr = TRUE
  )
  expect_true(any(grepl("python started: FALSE", out, fixed = TRUE)))
})

test_that("Python requirements are declared only where py_require() exists", {
  expect_null(keraslion:::find_py_require(package_version("1.28")))
  expect_false(keraslion:::declare_python_requirements(py_require = NULL))

  declared <- NULL
  fake_py_require <- function(packages) declared <<- packages
  withr::local_envvar(KERAS_BACKEND = "jax")
  expect_true(keraslion:::declare_python_requirements(fake_py_require))
  expect_identical(declared, c("keras>=3.10", "jax[cpu]"))

  withr::local_envvar(KERAS_BACKEND = "numpy")
  keraslion:::declare_python_requirements(fake_py_require)
  expect_identical(declared, "keras>=3.10")

  # A failing declaration never stops the package from loading.
  expect_false(keraslion:::declare_python_requirements(function(packages) stop("offline")))
  expect_false(keraslion:::declare_python_requirements(function(packages) warning("too late")))
})

