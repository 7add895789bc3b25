# Helpers for the tests of keraslion as keras3 users meet it.

skip_if_no_keras3 <- function() {
  skip_if_not_installed("keras3")
  skip_if_no_keras()
}

# The library holding this keraslion, for new R processes; skips when it is
# not installed (e.g. under devtools::load_all()).
keraslion_library <- function() {
  path <- find.package("keraslion", lib.loc = .libPaths(), quiet = TRUE)
  skip_if(length(path) == 0, "keraslion is not installed")
  dirname(path[[1]])
}

# Runs `fn(...)` in a new R process with this keraslion and the same Python,
# backend and R libraries (or `libpath`); returns its value.
run_in_new_r <- function(fn, args = list(), libpath = .libPaths()) {
  skip_on_cran()
  skip_if_not_installed("callr")
  callr::r(fn, args, libpath = unique(c(keraslion_library(), libpath)))
}

# iris, scaled, with 0-based integer labels.
iris_data <- function() {
  list(x = unname(scale(as.matrix(iris[, 1:4]))), y = as.integer(iris$Species) - 1L)
}

# The weights of a keras3 model as a list of R arrays.
weights_of <- function(model) {
  keras3::get_weights(model)
}

# A model whose every training step moves each weight by exactly the
# learning rate Lion uses (a Lion step without weight decay is `lr * sign`):
# one linear unit without bias, on iris.
linear_probe <- function(optimizer) {
  keras3::set_random_seed(1)
  model <- keras3::keras_model_sequential(input_shape = 4)
  model <- keras3::layer_dense(model, 1, use_bias = FALSE)
  keras3::compile(model, optimizer = optimizer, loss = "mse")
  model
}

# A small iris classifier, compiled with `optimizer`: 8 hidden units, 3 classes.
iris_classifier <- function(optimizer, activation = "tanh", seed = 1) {
  keras3::set_random_seed(seed)
  model <- keras3::keras_model_sequential(input_shape = 4) |>
    keras3::layer_dense(8, activation = activation) |>
    keras3::layer_dense(3, activation = "softmax")
  keras3::compile(model, optimizer = optimizer, loss = "sparse_categorical_crossentropy")
  model
}

# Fits `model` (from linear_probe()) on iris for `epochs` steps, one batch of
# all 150 rows each, and returns a matrix with a row per step and a column per
# weight: how far each weight moved in that step. (Weights are read at the end
# of each epoch: under JAX, fit() holds them elsewhere within an epoch.)
step_sizes <- function(model, epochs, callbacks = list()) {
  data <- iris_data()
  kernels <- list(weights_of(model)[[1]])
  record <- keras3::callback_lambda(on_epoch_end = function(epoch, logs) {
    kernels[[length(kernels) + 1]] <<- weights_of(model)[[1]]
  })
  keras3::fit(
    model, data$x, iris$Petal.Width,
    epochs = epochs, batch_size = 150, verbose = 0,
    callbacks = c(callbacks, record)
  )
  abs(diff(t(sapply(kernels, as.vector))))
}
