.onLoad <- function(libname, pkgname) {
  declare_python_requirements()
  register_lion_with_keras()
}

# The Python core, imported on first use. (reticulate's delayed import would
# import it, and with it keras, as soon as the package loads if Python has
# already started.)
python_core <- function() {
  if (is.null(the$python_core)) {
    # Every function that needs Python comes here first (optimizer_lion()
    # too): without Python or Keras, the error says what is missing.
    core <- tryCatch(
      reticulate::import_from_path(
        "keraslion",
        path = system.file("python", package = "keraslion")
      ),
      error = function(cnd) {
        if (keraslion_available()) stop(cnd)
        abort_python_unavailable(parent = cnd, call = NULL)
      }
    )
    route_state_warnings(core)
    the$python_core <- core
  }
  the$python_core
}

# Python shows its warnings on stderr, where an R user may never see them.
# keraslion's StateWarning says that optimizer state was dropped while
# loading a checkpoint (e.g. by `load_model_weights()`), so it is signalled
# as an R warning instead; other Python warnings keep their usual path.
route_state_warnings <- function(core) {
  core$`_restore`$route_state_warnings(signal_state_warning)
  invisible()
}

signal_state_warning <- function(message) {
  if (exiting_handler_catches(state_warning_classes)) {
    # Such a handler (tryCatch()) would unwind through the Python frames of
    # the load that is running, which crashes R: the warning waits until the
    # top-level call returns.
    addTaskCallback(function(...) {
      warn_state(message)
      FALSE
    })
  } else {
    warn_state(message)
  }
  invisible()
}

state_warning_classes <- c("keraslion_warning_state", "rlang_warning", "warning", "condition")

warn_state <- function(message) {
  cli::cli_warn("{message}", class = "keraslion_warning_state")
}

# Whether a tryCatch() (or rlang::try_fetch()) on the call stack has a handler
# for one of `classes`. Calling handlers (withCallingHandlers(),
# suppressWarnings(), testthat's expect_warning()) are safe and not counted.
exiting_handler_catches <- function(classes) {
  for (i in seq_len(sys.nframe())) {
    if (any(handled_classes(sys.function(i), sys.frame(i), sys.call(i)) %in% classes)) {
      return(TRUE)
    }
  }
  FALSE
}

# The classes a tryCatch() or try_fetch() frame handles, from its evaluated
# handlers: names injected with `!!` (testthat's expect_no_warning() calls
# `try_fetch(code, !!class := handler)`) do not show in the call.
handled_classes <- function(fn, frame, call) {
  if (identical(fn, base::tryCatch)) {
    return(get0("classes", envir = frame, inherits = FALSE) %||% names(call))
  }
  if (identical(fn, rlang::try_fetch)) {
    handlers <- tryCatch(eval(quote(rlang::list2(...)), frame), error = function(e) NULL)
    return(names(handlers) %||% names(call))
  }
  NULL
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
    python_core(),
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
