#' Lion's learning rate and weight decay from AdamW settings
#'
#' Lion moves every element of a weight by the full learning rate, so its
#' steps are larger than AdamW's. Chen et al. (2023, Section 5) find that a
#' learning rate 3-10x smaller than AdamW's works, with a weight decay 3-10x
#' larger so that the decay strength `learning_rate * weight_decay` stays the
#' same. This function divides the learning rate and multiplies the weight
#' decay by `factor`.
#'
#' The default `factor = 3` is the low end of the authors' range, the
#' smallest change from AdamW settings that worked; move towards 10 if
#' training is unstable. The authors' further advice: keep AdamW's
#' learning-rate schedule, warm-up and gradient clipping; for large models or
#' unstable runs use `beta_1 = 0.95, beta_2 = 0.98`; expect Lion's advantage
#' to grow with the batch size (at small batches AdamW is often as good).
#'
#' @param learning_rate AdamW's learning rate, a number > 0.
#' @param weight_decay AdamW's decoupled weight decay, a number >= 0.
#' @param factor A number >= 1: the learning rate is divided by it and the
#'   weight decay multiplied by it.
#'
#' @returns A named list with `learning_rate` and `weight_decay`, ready for
#'   `do.call(optimizer_lion, ...)`. The Python package has the same function,
#'   `keraslion.lion_hparams_from_adamw()`.
#'
#' @section References:
#' Chen, X. et al. (2023). Symbolic Discovery of Optimization Algorithms.
#' <https://arxiv.org/abs/2302.06675>
#'
#' @family optimizers
#' @export
#' @examples
#' lion_hparams_from_adamw(learning_rate = 1e-3, weight_decay = 0.01)
#' lion_hparams_from_adamw(3e-4, 0.1, factor = 10)
#'
#' if (keraslion_available()) {
#'   optimizer <- do.call(optimizer_lion, lion_hparams_from_adamw(1e-3, 0.01))
#' }
lion_hparams_from_adamw <- function(learning_rate, weight_decay, factor = 3) {
  learning_rate <- as_number(learning_rate, "learning_rate", 0, lower_closed = FALSE)
  weight_decay <- as_number(weight_decay, "weight_decay", 0)
  factor <- as_number(factor, "factor", 1)
  lion <- list(learning_rate = learning_rate / factor, weight_decay = weight_decay * factor)
  for (name in names(lion)) {
    # Values optimizer_lion() takes: in float32, where Keras keeps them.
    rlang::try_fetch(
      lion_argument(name, lion[[name]]),
      keraslion_error_argument = function(cnd) {
        cli::cli_abort(
          "With {.arg factor} = {factor}, Lion's {.arg {name}} would be {lion[[name]]},
           which {.fn optimizer_lion} refuses.",
          parent = cnd, class = "keraslion_error_argument"
        )
      }
    )
  }
  lion
}
