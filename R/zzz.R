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
}
