test_that("keraslion_available() answers TRUE or FALSE and remembers it", {
  available <- keraslion_available()
  expect_true(isTRUE(available) || isFALSE(available))
  expect_identical(keraslion:::the$available, available)
  expect_identical(keraslion_available(), available)
})

test_that("keraslion_available() agrees with importing keras", {
  skip_if_no_keras()
  probe <- keraslion:::probe_python()
  expect_true(probe$available)
  expect_identical(probe$reason, "")
  keras <- reticulate::import("keras")
  expect_identical(probe$keras_version, keras$`__version__`)
  expect_identical(probe$backend, keras$backend$backend())
  expect_s3_class(optimizer_lion(), "keraslion.lion.Lion")
})

# Runs `code` in a fresh R process with environment variables `env`, with the
# library this keraslion is installed in.
run_in_fresh_r <- function(code, env) {
  rscript <- file.path(R.home("bin"), "Rscript")
  libs <- paste0("R_LIBS=", paste(.libPaths(), collapse = .Platform$path.sep))
  out <- suppressWarnings(system2(
    rscript, c("--vanilla", "-e", shQuote(code)),
    env = c(libs, env), stdout = TRUE, stderr = TRUE
  ))
  status <- attr(out, "status")
  list(status = if (is.null(status)) 0L else status, output = out)
}

test_that("keraslion_available() is FALSE, not an error, without a usable Python", {
  skip_on_cran()
  skip_if(
    length(find.package("keraslion", lib.loc = .libPaths(), quiet = TRUE)) == 0,
    "keraslion is not installed"
  )
  code <- paste(
    "suppressPackageStartupMessages(library(keraslion))",
    "cat('available:', keraslion_available(), '\\n')",
    "cat('reason:', keraslion:::probe_python()$reason, '\\n')",
    "tryCatch(import_keraslion(), keraslion_error_python = function(e) cat('import: error\\n'))",
    # The function users call first says what is missing, as import_keraslion() does.
    "tryCatch(optimizer_lion(), keraslion_error_python = function(e) cat('optimizer: error\\n'))",
    sep = "; "
  )
  missing_python <- run_in_fresh_r(code, "RETICULATE_PYTHON=/nonexistent/bin/python")
  expect_identical(missing_python$status, 0L)
  expect_true(any(grepl("available: FALSE", missing_python$output, fixed = TRUE)))
  expect_true(any(grepl("import: error", missing_python$output, fixed = TRUE)))
  expect_true(any(grepl("optimizer: error", missing_python$output, fixed = TRUE)))

  # A backend that is not installed.
  skip_if_no_keras()
  python <- reticulate::py_config()$python
  no_backend <- run_in_fresh_r(code, c(
    paste0("RETICULATE_PYTHON=", python), "KERAS_BACKEND=no_such_backend"
  ))
  expect_identical(no_backend$status, 0L)
  expect_true(any(grepl("available: FALSE", no_backend$output, fixed = TRUE)))
  expect_true(any(grepl("no_such_backend", no_backend$output, fixed = TRUE)))
  expect_true(any(grepl("optimizer: error", no_backend$output, fixed = TRUE)))
})

test_that("import_keraslion() returns the module that loading a saved model needs", {
  skip_if_no_keras()
  lion <- import_keraslion()
  expect_s3_class(lion, "python.builtin.module")
  expect_identical(lion$`__name__`, "keraslion")
  keras <- reticulate::import("keras")
  model <- keras$Sequential(list(keras$Input(shape = list(2L)), keras$layers$Dense(1L)))
  model$compile(optimizer = optimizer_lion(learning_rate = 0.01), loss = "mse")
  path <- withr::local_tempfile(fileext = ".keras")
  model$save(path)
  restored <- keras$saving$load_model(path)
  expect_s3_class(restored$optimizer, "keraslion.lion.Lion")
})

test_that("install_keraslion() asks for keras and the backend", {
  packages <- keraslion:::keraslion_python_packages
  new <- package_version("1.41")
  expect_identical(packages("jax", reticulate_version = new), c("keras>=3.10", "jax[cpu]"))
  expect_identical(packages("tensorflow", reticulate_version = new), c("keras>=3.10", "tensorflow"))
  expect_identical(
    packages("torch", c("pandas", "torch"), reticulate_version = new),
    c("keras>=3.10", "torch", "pandas")
  )
  # reticulate < 1.38 cannot use NumPy 2.
  old <- package_version("1.28")
  expect_identical(packages("jax", reticulate_version = old), c("keras>=3.10", "jax[cpu]<=0.7.1", "numpy<2"))
  expect_identical(packages("torch", reticulate_version = old), c("keras>=3.10", "torch", "numpy<2"))
})

test_that("install_keraslion() checks its arguments before touching Python", {
  expect_snapshot(error = TRUE, {
    install_keraslion(envname = "")
    install_keraslion(backend = "theano")
    install_keraslion(extra_packages = c("pandas", NA))
    install_keraslion(extra_packages = 1)
    install_keraslion(python = 3)
    install_keraslion(new_env = NA)
    install_keraslion(pip_options = NA)
  })
})

test_that("the keras version in R, DESCRIPTION and pyproject.toml agree", {
  desc <- utils::packageDescription("keraslion")$SystemRequirements
  expect_match(desc, paste0("keras (>= ", keraslion:::keras_min_version, ")"), fixed = TRUE)
  pyproject <- system.file("python", "pyproject.toml", package = "keraslion")
  skip_if(!nzchar(pyproject), "pyproject.toml is not installed")
  expect_true(any(grepl(
    paste0("\"keras>=", keraslion:::keras_min_version, "\""), readLines(pyproject),
    fixed = TRUE
  )))
})
