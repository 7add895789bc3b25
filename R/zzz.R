# The Python core, imported on first use so that loading the package never
# starts Python.
keraslion_py <- NULL

.onLoad <- function(libname, pkgname) {
  declare_python_requirements()
  keraslion_py <<- reticulate::import_from_path(
    "keraslion",
    path = system.file("python", package = pkgname),
    delay_load = TRUE
  )
  register_lion_with_keras()
}

# Loading a saved model finds `Lion` only once the Python module keraslion has
# been imported, which registers the class with Keras. So import it as soon
# as Keras is: now if Python has already imported keras, else when it does.
# reticulate runs the hooks named "reticulate::<module>::load" once, after
# Python first imports that top-level module, from R or from Python code.
register_lion_with_keras <- function() {
  if (reticulate::py_available(initialize = FALSE) &&
    "keras" %in% names(reticulate::import("sys")$modules)) {
    import_on_keras_load()
  } else {
    setHook("reticulate::keras::load", import_on_keras_load)
  }
}

# reticulate turns an error in a hook into a warning without context; a
# failed import (e.g. a Keras too old for keraslion) is said here instead,
# and optimizer_lion() will raise the error itself.
import_on_keras_load <- function() {
  tryCatch(
    keraslion_py$`__name__`,
    error = function(e) {
      cli::cli_warn(c(
        "keraslion could not register {.cls Lion} with Keras.",
        "i" = "Loading a model saved with {.fun optimizer_lion} will fail.",
        "x" = conditionMessage(e)
      ))
    }
  )
  invisible()
}
