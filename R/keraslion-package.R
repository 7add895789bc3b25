#' keraslion: the Lion optimizer for Keras 3
#'
#' @description
#' keraslion brings Lion (Chen et al. 2023), an optimizer that keeps a single
#' momentum per weight and steps by its sign, to Keras 3 models in R and in
#' Python. [optimizer_lion()] returns a Keras optimizer that goes wherever
#' 'keras3' accepts one, e.g. `compile(model, optimizer = optimizer_lion())`,
#' and works with the TensorFlow, JAX and PyTorch backends.
#'
#' @section Set-up:
#' The optimizer itself is Python code that ships inside this package, so
#' the only Python requirement is Keras 3 with a backend.
#' [install_keraslion()] installs them into a virtual environment, and
#' [keraslion_available()] tells whether the current R session can use them.
#' Choose the Python with `RETICULATE_PYTHON` (or
#' `reticulate::use_virtualenv()`) and the backend with `KERAS_BACKEND`,
#' both before Python starts.
#'
#' @section Where to start:
#' - `vignette("keraslion")`: compile and fit with Lion, pick its learning
#'   rate and weight decay from AdamW settings, schedules, saving and
#'   loading, and the same optimizer from Python.
#' - `vignette("lion-vs-adamw")`: Lion and AdamW trained side by side on
#'   real data, over batch sizes and seeds.
#' - [lion_hparams_from_adamw()]: Lion's hyperparameters from AdamW's.
#'
#' The vignettes are installed with the package when it is installed from a
#' tarball made by `R CMD build` (see the README); `vignette(package =
#' "keraslion")` lists them. `citation("keraslion")` says how to cite Lion
#' and this package.
#'
#' @keywords internal
"_PACKAGE"

#' @importFrom rlang caller_env %||%
#' @importFrom utils packageVersion
NULL
