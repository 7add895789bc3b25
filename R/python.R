#' Is the Python side of keraslion available?
#'
#' `TRUE` when Python with the `keras` module can be used from this R
#' session, so that [optimizer_lion()] can create the optimizer.
#'
#' @returns `TRUE` or `FALSE`.
#' @family set-up
#' @export
#' @examples
#' keraslion_available()
keraslion_available <- function() {
  reticulate::py_module_available("keras")
}
