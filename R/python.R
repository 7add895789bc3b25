# Everything about finding, declaring and installing the Python side.

# The oldest Keras the Python core supports; keep in step with
# inst/python/pyproject.toml and SystemRequirements in DESCRIPTION.
keras_min_version <- "3.10"

# The Python package (pip requirement) and the importable module of each
# Keras backend that install_keraslion() offers.
backend_requirements <- c(tensorflow = "tensorflow", jax = "jax[cpu]", torch = "torch")

# Package-level state: the cached answer of keraslion_available().
the <- new.env(parent = emptyenv())

#' Is the Python side of keraslion available?
#'
#' Tells whether [optimizer_lion()] can work in this R session: whether
#' Python can be started and has Keras 3 (>= 3.10) and the module of the
#' Keras backend that will be used (set by the `KERAS_BACKEND` environment
#' variable, else by Keras's `keras.json`, else `"tensorflow"`).
#'
#' The check is cheap: it starts Python (as any use of keraslion would) but
#' only looks the modules up, without importing Keras or its backend, which
#' can take seconds. The answer is remembered for the rest of the session,
#' so call it as often as you like, for example in
#' `if (keraslion_available())` around code that needs Python. It never
#' fails: a missing or broken Python gives `FALSE`.
#'
#' Which Python reticulate starts is decided once per session; set
#' `RETICULATE_PYTHON`, or call `reticulate::use_virtualenv()`, before the
#' first use of Python. [install_keraslion()] sets up a Python environment
#' that passes this check.
#'
#' @returns `TRUE` or `FALSE`.
#' @family set-up
#' @export
#' @examples
#' keraslion_available()
#'
#' if (keraslion_available()) {
#'   optimizer <- optimizer_lion(learning_rate = 1e-4)
#' }
keraslion_available <- function() {
  if (is.null(the$available)) {
    the$available <- isTRUE(probe_python()$available)
  }
  the$available
}

# Looks up Keras and its backend in the Python that reticulate uses, without
# importing them (reticulate 1.28's py_module_available() imports the module,
# and importing Keras imports the backend). Returns a list: available (a
# flag), keras_version, backend and reason (why it is not available).
probe_python <- function() {
  not_available <- function(reason) {
    list(available = FALSE, keras_version = NA_character_, backend = NA_character_, reason = reason)
  }
  tryCatch(
    {
      if (!reticulate::py_available(initialize = TRUE)) {
        return(not_available("Python cannot be started."))
      }
      found <- reticulate::py_run_string(probe_code, local = TRUE, convert = TRUE)$found
      if (is.null(found$keras_version)) {
        return(not_available("The Python module keras is not installed."))
      }
      version <- numeric_version(sub("^([0-9]+(\\.[0-9]+)*).*$", "\\1", found$keras_version), strict = FALSE)
      reason <- if (is.na(version) || version < keras_min_version) {
        paste0("Keras ", found$keras_version, " is installed; keraslion needs Keras >= ", keras_min_version, ".")
      } else if (!isTRUE(found$backend_found)) {
        paste0("The Keras backend \"", found$backend, "\" is not installed.")
      }
      list(
        available = is.null(reason),
        keras_version = found$keras_version,
        backend = found$backend,
        reason = if (is.null(reason)) "" else reason
      )
    },
    error = function(e) not_available(conditionMessage(e))
  )
}

# Runs in Python; leaves `found`, a dict, in its local namespace.
probe_code <- '
def _keraslion_probe():
    import importlib.metadata
    import importlib.util
    import json
    import os
    import sys

    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):
        # Already imported, so its backend works.
        return {"keras_version": keras.__version__, "backend": keras.backend.backend(),
                "backend_found": True}
    if importlib.util.find_spec("keras") is None:
        return {"keras_version": None, "backend": None, "backend_found": False}
    try:
        version = importlib.metadata.version("keras")
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    backend = os.environ.get("KERAS_BACKEND")
    if not backend:
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
        try:
            with open(os.path.join(home, "keras.json")) as f:
                backend = json.load(f).get("backend")
        except (OSError, ValueError, AttributeError):
            backend = None
    backend = backend or "tensorflow"
    modules = {"jax": ["jax", "jaxlib"]}.get(backend, [backend])
    found = all(importlib.util.find_spec(m) is not None for m in modules)
    return {"keras_version": version, "backend": backend, "backend_found": found}


found = _keraslion_probe()
'

#' Import keraslion's Python module
#'
#' Imports `keraslion`, the Python package that ships inside this R
#' package, and returns it: the whole Python API, e.g.
#' `import_keraslion()$Lion`, with Python's argument names and types.
#'
#' Loading a saved model needs no call to it. Importing `keraslion`
#' registers the `Lion` class with Keras, and `library(keraslion)` arranges
#' for that to happen as soon as Python imports `keras` (or at once, if it
#' already has), so `keras3::load_model()` and `keras$saving$load_model()`
#' find `Lion` in a new R session, in whatever order keras3, keraslion and
#' Python were started. Loading keraslion itself never starts Python. From
#' Python alone, `import keraslion` before `keras.saving.load_model()`.
#'
#' @returns The Python module `keraslion`.
#' @family helpers
#' @export
#' @examplesIf keraslion_available()
#' lion <- import_keraslion()
#' lion$`__version__`
#'
#' # The Python API, with Python's argument names and types:
#' optimizer <- lion$Lion(learning_rate = 1e-4, cautious = TRUE)
#' optimizer$cautious
import_keraslion <- function() {
  if (!keraslion_available()) {
    abort_python_unavailable()
  }
  python_core()
}

abort_python_unavailable <- function(parent = NULL, call = caller_env()) {
  cli::cli_abort(c(
    "keraslion's Python side is not available.",
    "i" = probe_python()$reason,
    "i" = "See {.fun keraslion::install_keraslion}."
  ), parent = parent, call = call, class = "keraslion_error_python")
}

#' Install Keras and a backend for keraslion
#'
#' Creates a Python virtual environment (or reuses one that exists) and
#' installs into it Keras 3, one Keras backend and any extra packages you
#' name, as `keras3::install_keras()` does for 'keras3'. keraslion's own
#' Python code ships inside the R package and needs no installation.
#'
#' To use the environment, tell reticulate before Python starts in the R
#' session, for example in your `~/.Renviron`:
#'
#' ```
#' RETICULATE_PYTHON=~/.virtualenvs/r-keraslion/bin/python
#' KERAS_BACKEND=jax
#' ```
#'
#' or, at the top of a script, `reticulate::use_virtualenv("r-keraslion")`
#' and `Sys.setenv(KERAS_BACKEND = "jax")`. When Python has not started yet
#' in this session, `install_keraslion()` does both for you. If it has
#' started with another Python, restart R.
#'
#' With reticulate older than 1.38, which cannot pass arrays to NumPy 2,
#' `"numpy<2"` is added to the requirements (and for JAX, the last JAX that
#' accepts it). With reticulate 1.41 or newer you may not need this function
#' at all: loading keraslion declares its requirements with
#' `reticulate::py_require()`, and reticulate then provides them in a
#' temporary environment when no other Python is configured.
#'
#' @param envname The name of the virtual environment (created under
#'   reticulate's virtualenv root, usually `~/.virtualenvs`), or a path to
#'   one (any string that contains a `/`).
#' @param backend The Keras backend to install: `"tensorflow"`, `"jax"` or
#'   `"torch"`. All three are CPU builds unless your platform's default
#'   wheel has GPU support.
#' @param extra_packages `NULL` or a character vector of further Python
#'   packages (pip requirements such as `"pandas>=2"`) to install.
#' @param python `NULL` or the path to the Python executable to create the
#'   environment with; `NULL` lets reticulate pick one. Ignored when the
#'   environment exists already.
#' @param new_env `TRUE` to delete the environment first if it exists, so
#'   that everything is installed afresh.
#' @param pip_options A character vector of further options for
#'   `pip install`, such as `"--index-url=..."`.
#'
#' @returns The path of the environment's Python, invisibly.
#' @seealso [keraslion_available()] to check the result.
#' @family set-up
#' @export
#' @examples
#' \dontrun{
#' # Downloads Keras and JAX (several hundred MB):
#' install_keraslion(backend = "jax")
#'
#' # TensorFlow, with pandas, in a fresh environment:
#' install_keraslion(backend = "tensorflow", extra_packages = "pandas", new_env = TRUE)
#' }
install_keraslion <- function(envname = "r-keraslion",
                              backend = c("tensorflow", "jax", "torch"),
                              extra_packages = NULL,
                              python = NULL,
                              new_env = FALSE,
                              pip_options = character()) {
  envname <- check_string(envname, "envname")
  backend <- rlang::arg_match(backend)
  if (!is.null(extra_packages) &&
    (!is.character(extra_packages) || anyNA(extra_packages) || !all(nzchar(extra_packages)))) {
    abort_arg("extra_packages", "`NULL` or a character vector of package names (no `NA` or empty strings)", extra_packages, rlang::current_env())
  }
  python <- check_string(python, "python", allow_null = TRUE)
  new_env <- check_flag(new_env, "new_env")
  if (!is.character(pip_options) || anyNA(pip_options)) {
    abort_arg("pip_options", "a character vector", pip_options, rlang::current_env())
  }

  packages <- keraslion_python_packages(backend, extra_packages)
  if (new_env && reticulate::virtualenv_exists(envname)) {
    cli::cli_inform("Removing the existing virtual environment {.val {envname}}.")
    reticulate::virtualenv_remove(envname, confirm = FALSE)
  }
  if (!reticulate::virtualenv_exists(envname)) {
    cli::cli_inform("Creating the virtual environment {.val {envname}}.")
    reticulate::virtualenv_create(envname, python = python, packages = NULL)
  }
  cli::cli_inform("Installing {.val {packages}} into {.val {envname}}.")
  reticulate::virtualenv_install(envname, packages, pip_options = pip_options)
  env_python <- reticulate::virtualenv_python(envname)

  if (reticulate::py_available(initialize = FALSE)) {
    cli::cli_inform(c(
      "!" = "Python has already started in this R session; restart R to use the new environment.",
      "i" = "Then set {.envvar RETICULATE_PYTHON} to {.path {env_python}} and {.envvar KERAS_BACKEND} to {.val {backend}}."
    ))
  } else {
    Sys.setenv(RETICULATE_PYTHON = env_python, KERAS_BACKEND = backend)
    the$available <- NULL
    cli::cli_inform(c(
      "v" = "Done. This R session will use {.path {env_python}} with the {.val {backend}} backend.",
      "i" = "In later sessions, set {.envvar RETICULATE_PYTHON} and {.envvar KERAS_BACKEND} the same way (e.g. in {.file ~/.Renviron})."
    ))
  }
  invisible(env_python)
}

# The pip requirements install_keraslion() installs.
keraslion_python_packages <- function(backend, extra_packages = NULL,
                                      reticulate_version = utils::packageVersion("reticulate")) {
  packages <- c(paste0("keras>=", keras_min_version), backend_requirements[[backend]])
  if (reticulate_version < "1.38") {
    # reticulate < 1.38 cannot convert arrays to or from NumPy 2; JAX 0.7.1 is
    # the last JAX that accepts NumPy 1.
    packages <- c(packages, "numpy<2")
    if (backend == "jax") packages[[2]] <- "jax[cpu]<=0.7.1"
  }
  unique(c(packages, extra_packages))
}

# With reticulate >= 1.41, declare the Python requirements so that reticulate
# can provide them itself when the user has not configured a Python.
# py_require() is looked up at run time: reticulate 1.28 does not have it and
# R CMD check would flag a direct reference.
declare_python_requirements <- function(py_require = find_py_require()) {
  if (is.null(py_require)) {
    return(invisible(FALSE))
  }
  backend <- Sys.getenv("KERAS_BACKEND", "tensorflow")
  packages <- c(paste0("keras>=", keras_min_version), backend_requirements[backend])
  packages <- packages[!is.na(packages)]
  # Never let the declaration stop the package from loading.
  ok <- tryCatch(
    {
      py_require(unname(packages))
      TRUE
    },
    error = function(e) FALSE,
    warning = function(w) FALSE
  )
  invisible(ok)
}

find_py_require <- function(reticulate_version = utils::packageVersion("reticulate")) {
  if (reticulate_version < "1.41") {
    return(NULL)
  }
  getExportedValue("reticulate", "py_require")
}
