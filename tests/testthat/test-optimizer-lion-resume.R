# Saving and resuming from R through reticulate: a model compiled with
# optimizer_lion(), saved mid-training with model$save() and loaded with
# keras$saving$load_model(), gets back its Lion (class, hyperparameters,
# iteration count, momentum) and trains on to exactly the weights of a run
# that never stopped.

test_that("a model saved mid-training resumes bit for bit from R", {
  skip_if_no_keras()
  keras <- keras_module()
  np <- reticulate::import("numpy", convert = FALSE)
  set.seed(1)
  # 7 batches of 8: with accumulation over 2 steps, the save falls mid-cycle.
  x <- np$asarray(matrix(rnorm(56 * 5), ncol = 5), dtype = "float32")
  y <- np$asarray(matrix(rnorm(56 * 2), ncol = 2), dtype = "float32")
  build <- function() {
    keras$utils$set_random_seed(3L)
    model <- keras$Sequential(list(
      keras$Input(shape = list(5L)),
      keras$layers$Dense(8L, activation = "tanh"),
      keras$layers$Dense(2L)
    ))
    model$compile(
      optimizer = optimizer_lion(
        learning_rate = 0.01, weight_decay = 0.1, beta_1 = 0.95,
        gradient_accumulation_steps = 2, skip_nonfinite = TRUE,
        exclude_from_weight_decay = "bias"
      ),
      loss = "mse"
    )
    model
  }
  fit <- function(model, from, to) {
    invisible(model$fit(
      x, y,
      batch_size = 8L, epochs = as.integer(to), initial_epoch = as.integer(from),
      shuffle = FALSE, verbose = 0L
    ))
  }
  values <- function(variables) lapply(variables, as_r_array)

  model <- build()
  model$optimizer$build(model$trainable_variables)
  state <- c(model$weights, model$optimizer$variables)
  # Copies, as NumPy arrays (R would turn 0-d arrays into 1-d ones).
  to_numpy <- reticulate::import("keras", convert = FALSE)$ops$convert_to_numpy
  initial <- lapply(state, function(v) np$copy(to_numpy(v)))
  fit(model, 0, 2)
  saved <- values(model$optimizer$variables)
  path <- tempfile(fileext = ".keras")
  on.exit(unlink(path), add = TRUE)
  model$save(path)

  # The run that never stopped: the same model from the same start.
  for (i in seq_along(state)) state[[i]]$assign(initial[[i]])
  fit(model, 0, 4)
  uninterrupted <- model

  loaded <- keras$saving$load_model(path, safe_mode = TRUE)
  optimizer <- loaded$optimizer
  expect_s3_class(optimizer, "keraslion.lion.Lion")
  expect_identical(optimizer$get_config(), model$optimizer$get_config())
  expect_gt(as_r_array(optimizer$iterations), 0)
  # Iteration count, momentum, accumulators, skip counter: every variable.
  expect_identical(values(optimizer$variables), saved)
  expect_identical(optimizer$nonfinite_steps, 0L)

  fit(loaded, 2, 4)
  expect_identical(values(loaded$weights), values(uninterrupted$weights))
  expect_identical(values(optimizer$variables), values(uninterrupted$optimizer$variables))
})
