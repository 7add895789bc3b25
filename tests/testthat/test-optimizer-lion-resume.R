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

test_that("under mixed precision a checkpoint loads into a Lion with other options", {
  skip_if_no_keras3()
  keras3::config_set_dtype_policy("mixed_float16")
  withr::defer(keras3::config_set_dtype_policy("float32"))
  data <- iris_data()
  # compile() wraps the Lion in Keras's LossScaleOptimizer, which saves its
  # loss scale, then the Lion's variables, all by position.
  trained <- function(...) {
    model <- linear_probe(optimizer_lion(learning_rate = 0.01, ...))
    keras3::fit(model, data$x, iris$Petal.Width, epochs = 1, batch_size = 50, verbose = 0)
    model
  }
  source <- trained(use_ema = TRUE, skip_nonfinite = TRUE)
  source$optimizer$dynamic_scale$assign(8)
  path <- withr::local_tempfile(fileext = ".weights.h5")
  keras3::save_model_weights(source, path)

  # Options with as many variables, of the same shapes: the moving averages
  # must not land in the gradient accumulators, which start fresh, and the
  # rest loads.
  model <- trained(gradient_accumulation_steps = 2L, skip_nonfinite = TRUE)
  lion <- model$optimizer$inner_optimizer
  expect_warning(
    keras3::load_model_weights(model, path),
    "dropped the moving averages",
    class = "keraslion_warning_state"
  )
  for (accumulator in lion$`_accumulated_gradients`) {
    expect_true(all(as_r_array(accumulator) == 0))
  }
  # (Steps taken: `iterations` counts updates, of 2 steps each here.)
  expect_equal(
    as_r_array(lion$`_iterations`),
    as_r_array(source$optimizer$inner_optimizer$`_iterations`)
  )
  expect_equal(as.numeric(as_r_array(model$optimizer$dynamic_scale)), 8)

  # Another count of variables: the loss scale loads, and the Lion's state
  # but for what its options have no place for (said in a warning).
  model <- trained()
  expect_warning(
    keras3::load_model_weights(model, path),
    "dropped the moving averages",
    class = "keraslion_warning_state"
  )
  expect_equal(as.numeric(as_r_array(model$optimizer$dynamic_scale)), 8)
  expect_equal(
    as_r_array(model$optimizer$inner_optimizer$iterations),
    as_r_array(source$optimizer$inner_optimizer$iterations)
  )
})

test_that("an AdamW checkpoint loads its weights into a Lion's model and leaves the Lion fresh", {
  skip_if_no_keras3()
  data <- iris_data()
  build <- function(optimizer) iris_classifier(optimizer, activation = "relu")
  adamw <- build(keras3::optimizer_adam_w(learning_rate = 1e-3, weight_decay = 0.01))
  keras3::fit(adamw, data$x, data$y, epochs = 1, batch_size = 50, verbose = 0)
  path <- withr::local_tempfile(fileext = ".weights.h5")
  keras3::save_model_weights(adamw, path)

  # Switching to Lion: Adam's velocities must not become Lion's momentums.
  model <- build(do.call(optimizer_lion, lion_hparams_from_adamw(1e-3, 0.01)))
  expect_warning(
    keras3::load_model_weights(model, path),
    "another optimizer's, not a Lion's",
    class = "keraslion_warning_state"
  )
  expect_equal(weights_of(model), weights_of(adamw))
  expect_false(model$optimizer$built)
  keras3::fit(model, data$x, data$y, epochs = 1, batch_size = 50, verbose = 0)
  expect_equal(as.integer(as_r_array(model$optimizer$iterations)), 3L)
})
