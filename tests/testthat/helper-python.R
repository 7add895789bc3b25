skip_if_no_keras <- function() {
  if (!keraslion_available()) {
    skip("Python with keras is not available")
  }
}

skip_if_no_python <- function() {
  if (!reticulate::py_available(initialize = TRUE)) {
    skip("Python is not available")
  }
}

keras_module <- function() {
  reticulate::import("keras")
}

# Values of a Python tensor or variable as an R array.
as_r_array <- function(x) {
  keras_module()$ops$convert_to_numpy(x)
}
