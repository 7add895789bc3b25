#' @keywords internal
"_PACKAGE"

#' @importFrom rlang caller_env
NULL
