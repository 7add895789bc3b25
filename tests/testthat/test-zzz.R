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


test_that("state dropped while loading a checkpoint arrives as an R warning", {
  skip_if_not(keraslion_available())
  keras <- keras_module()
  lion <- import_keraslion()
  make_model <- function(optimizer) {
    model <- keras$Sequential(list(keras$Input(shape = list(3L)), keras$layers$Dense(2L)))
    model$compile(optimizer = optimizer, loss = "mse")
    model$optimizer$build(model$trainable_variables)
    model
  }
  source <- make_model(optimizer_lion(skip_nonfinite = TRUE))
  source$optimizer$`_nonfinite_steps`$assign(2L)
  path <- withr::local_tempfile(fileext = ".weights.h5")
  source$save_weights(path)

  # skip_nonfinite turned off: the count of skipped steps has no place.
  model <- make_model(optimizer_lion())
  expect_warning(model$load_weights(path), class = "keraslion_warning_state")
  expect_warning(model$load_weights(path), "skipped non-finite steps")
  if (requireNamespace("keras3", quietly = TRUE)) {
    expect_warning(keras3::load_model_weights(model, path), class = "keraslion_warning_state")
  }

  # Other Python warnings keep their path (Python's stderr), not R's.
  code <- paste(
    "import io, sys, warnings",
    "stderr, sys.stderr = sys.stderr, io.StringIO()",
    "try:",
    "    warnings.warn('not keraslion', UserWarning)",
    "finally:",
    "    shown, sys.stderr = sys.stderr.getvalue(), stderr",
    sep = "\n"
  )
  expect_no_warning(shown <- reticulate::py_run_string(code)$shown)
  expect_match(shown, "not keraslion")

  # What the checkpoint lacks is an error, or with skip_mismatch a warning.
  unbuilt <- keras$Sequential(list(keras$Input(shape = list(3L)), keras$layers$Dense(2L)))
  unbuilt$compile(optimizer = optimizer_lion(), loss = "mse")
  expect_error(unbuilt$load_weights(path), "not built")
  expect_warning(
    unbuilt$load_weights(path, skip_mismatch = TRUE),
    class = "keraslion_warning_state"
  )
})

test_that("a tryCatch() around a load that warns does not crash R", {
  skip_if_not(keraslion_available())
  keras <- keras_module()
  make_model <- function(optimizer) {
    model <- keras$Sequential(list(keras$Input(shape = list(3L)), keras$layers$Dense(2L)))
    model$compile(optimizer = optimizer, loss = "mse")
    model$optimizer$build(model$trainable_variables)
    model
  }
  source <- make_model(optimizer_lion(skip_nonfinite = TRUE))
  source$optimizer$`_nonfinite_steps`$assign(2L)
  source$optimizer$iterations$assign(5L)
  path <- withr::local_tempfile(fileext = ".weights.h5")
  source$save_weights(path)
  model <- make_model(optimizer_lion())
  # An exiting handler cannot take the warning from inside Python (it would
  # unwind through Python's frames): the load completes, the warning waits
  # for the top level, and R carries on.
  result <- tryCatch(
    {
      model$load_weights(path)
      "loaded"
    },
    keraslion_warning_state = function(w) "caught"
  )
  expect_equal(result, "loaded")
  expect_equal(as.integer(as_r_array(model$optimizer$iterations)), 5L)
  caught <- rlang::catch_cnd(model$load_weights(path), classes = "warning")
  expect_null(caught)
  expect_equal(as.integer(as_r_array(model$optimizer$iterations)), 5L)

  # Also where the handler's class is injected (testthat's expect_no_warning()
  # does this): it does not show in the call.
  class <- "warning"
  result <- rlang::try_fetch(
    {
      model$load_weights(path)
      "loaded"
    },
    !!class := function(w) "caught"
  )
  expect_equal(result, "loaded")
  model$optimizer$iterations$assign(1L)
  expect_equal(as.integer(as_r_array(model$optimizer$iterations)), 1L)
})
