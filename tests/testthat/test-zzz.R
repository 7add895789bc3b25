# .onLoad(): declares the Python requirements where reticulate can use them,
# sets up the delayed import of the Python core without starting Python, and
# registers Lion with Keras once Python imports keras.

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

test_that("loading keraslion after Python started does not import keras", {
  skip_on_cran()
  skip_if_no_python()
  skip_if(
    length(find.package("keraslion", lib.loc = .libPaths(), quiet = TRUE)) == 0,
    "keraslion is not installed"
  )
  rscript <- file.path(R.home("bin"), "Rscript")
  code <- paste(
    "invisible(reticulate::py_available(TRUE))",
    "suppressPackageStartupMessages(library(keraslion))",
    "modules <- names(reticulate::import('sys')$modules)",
    "cat('keras imported:', 'keras' %in% modules, '\n')",
    "cat('hook set:', length(getHook('reticulate::keras::load')) > 0, '\n')",
    sep = "; "
  )
  out <- system2(rscript, c("--vanilla", "-e", shQuote(code)),
    env = paste0("R_LIBS=", paste(.libPaths(), collapse = .Platform$path.sep)),
    stdout = TRUE, stderr = TRUE
  )
  expect_true(any(grepl("keras imported: FALSE", out, fixed = TRUE)))
  # Lion is registered when Python imports keras (test-keras3-sessions.R).
  expect_true(any(grepl("hook set: TRUE", out, fixed = TRUE)))
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

