# keraslion as keras3 users meet it: keras3's verbs, schedules and callbacks
# with optimizer_lion(), each checked by its result. (Saving, loading and
# resuming across R processes: test-keras3-sessions.R.)

test_that("compile, fit, evaluate and predict with keras3 verbs classify iris", {
  skip_if_no_keras3()
  withr::local_package("keras3")
  data <- iris_data()
  set_random_seed(1)
  model <- keras_model_sequential(input_shape = 4) |>
    layer_dense(16, activation = "relu") |>
    layer_dense(3, activation = "softmax")
  model |> compile(
    optimizer = keraslion::optimizer_lion(learning_rate = 0.01, weight_decay = 0.01),
    loss = "sparse_categorical_crossentropy",
    metrics = "accuracy"
  )
  history <- model |> fit(data$x, data$y, epochs = 30, batch_size = 16, verbose = 0)
  expect_s3_class(model$optimizer, "keraslion.lion.Lion")
  expect_lt(history$metrics$loss[[30]], history$metrics$loss[[1]])

  scores <- model |> evaluate(data$x, data$y, verbose = 0)
  expect_gte(scores$accuracy, 0.9)
  probabilities <- model |> predict(data$x, verbose = 0)
  expect_identical(dim(probabilities), c(150L, 3L))
  predicted <- max.col(probabilities, ties.method = "first") - 1L
  expect_equal(mean(predicted == data$y), scores$accuracy, tolerance = 1e-6)
})

test_that("a keras3 schedule sets the learning rate of every step", {
  skip_if_no_keras3()
  schedule <- keras3::learning_rate_schedule_cosine_decay(0.01, decay_steps = 10)
  model <- linear_probe(optimizer_lion(learning_rate = schedule))
  steps <- step_sizes(model, epochs = 6)
  # Step t (from 0) uses the schedule's value at t.
  t <- 0:5
  expected <- 0.01 * 0.5 * (1 + cos(pi * t / 10))
  expect_equal(steps, matrix(expected, 6, 4), tolerance = 1e-5)
})

test_that("an R function is called for the learning rate", {
  skip_if_no_keras3()
  calls <- 0
  rate <- function() {
    calls <<- calls + 1
    0.005
  }
  model <- linear_probe(optimizer_lion(learning_rate = rate))
  steps <- step_sizes(model, epochs = 3)
  expect_gt(calls, 0)
  expect_equal(steps, matrix(0.005, 3, 4), tolerance = 1e-5)
})

test_that("callback_learning_rate_scheduler() changes the rate Lion uses", {
  skip_if_no_keras3()
  model <- linear_probe(optimizer_lion(learning_rate = 0.01))
  halve <- keras3::callback_learning_rate_scheduler(function(epoch, lr) 0.01 / 2^epoch)
  steps <- step_sizes(model, epochs = 3, callbacks = list(halve))
  expect_equal(steps, matrix(0.01 / 2^(0:2), 3, 4), tolerance = 1e-5)
})

test_that("callback_reduce_lr_on_plateau() changes the rate Lion uses", {
  skip_if_no_keras3()
  model <- linear_probe(optimizer_lion(learning_rate = 0.01))
  # No epoch after the first counts as an improvement: from the third epoch
  # on, the rate halves at the end of each.
  plateau <- keras3::callback_reduce_lr_on_plateau(
    monitor = "loss", factor = 0.5, patience = 1, min_delta = 1e9
  )
  steps <- step_sizes(model, epochs = 4, callbacks = list(plateau))
  expect_equal(steps, matrix(c(0.01, 0.01, 0.005, 0.0025), 4, 4), tolerance = 1e-5)
})

test_that("callback_model_checkpoint() saves models that load with their Lion", {
  skip_if_no_keras3()
  data <- iris_data()
  model <- linear_probe(optimizer_lion(learning_rate = 0.01, beta_1 = 0.95))
  dir <- withr::local_tempdir()
  checkpoint <- keras3::callback_model_checkpoint(
    file.path(dir, "epoch-{epoch:02d}.keras"),
    monitor = "loss"
  )
  keras3::fit(
    model, data$x, iris$Petal.Width,
    epochs = 3, batch_size = 50, shuffle = FALSE, verbose = 0,
    callbacks = list(checkpoint)
  )
  expect_setequal(dir(dir), sprintf("epoch-%02d.keras", 1:3))
  last <- keras3::load_model(file.path(dir, "epoch-03.keras"))
  expect_s3_class(last$optimizer, "keraslion.lion.Lion")
  expect_equal(last$optimizer$get_config()$beta_1, 0.95)
  expect_equal(as.vector(as_r_array(last$optimizer$iterations)), 9)
  expect_identical(weights_of(last), weights_of(model))
})

test_that("callback_early_stopping() restores the best weights", {
  skip_if_no_keras3()
  data <- iris_data()
  model <- linear_probe(optimizer_lion(learning_rate = 0.01))
  kernels <- list()
  record <- keras3::callback_lambda(on_epoch_end = function(epoch, logs) {
    kernels[[epoch]] <<- weights_of(model)[[1]] # keras3 counts epochs from 1
  })
  # The loss falls, so with mode = "max" the first epoch is the best one and
  # training stops after `patience` more.
  stop_early <- keras3::callback_early_stopping(
    monitor = "loss", mode = "max", patience = 2, restore_best_weights = TRUE
  )
  history <- keras3::fit(
    model, data$x, iris$Petal.Width,
    epochs = 10, batch_size = 50, shuffle = FALSE, verbose = 0,
    callbacks = list(record, stop_early)
  )
  losses <- unlist(history$metrics$loss)
  expect_length(losses, 3)
  expect_identical(which.max(losses), 1L)
  expect_identical(weights_of(model)[[1]], kernels[[1]])
  expect_false(identical(kernels[[3]], kernels[[1]]))
})

test_that("keras3's and keraslion's optimizer_lion() follow the same trajectory", {
  skip_if_no_keras3()
  data <- iris_data()
  train <- function(optimizer) {
    model <- iris_classifier(optimizer, seed = 7)
    keras3::fit(model, data$x, data$y, epochs = 3, batch_size = 30, shuffle = FALSE, verbose = 0)
    weights_of(model)
  }
  settings <- list(learning_rate = 0.003, beta_1 = 0.9, beta_2 = 0.99, weight_decay = 0.05)
  theirs <- train(do.call(keras3::optimizer_lion, settings))
  ours <- train(do.call(keraslion::optimizer_lion, settings))
  expect_equal(ours, theirs, tolerance = 1e-6)
})

test_that("a layer frozen mid-training keeps its weights while the rest train", {
  skip_if_no_keras3()
  data <- iris_data()
  keras3::set_random_seed(3)
  model <- keras3::keras_model_sequential(input_shape = 4) |>
    keras3::layer_dense(8, activation = "relu") |>
    keras3::layer_dense(3, activation = "softmax")
  fit_epochs <- function() {
    keras3::compile(
      model,
      optimizer = optimizer_lion(learning_rate = 0.01, weight_decay = 0.1),
      loss = "sparse_categorical_crossentropy"
    )
    keras3::fit(model, data$x, data$y, epochs = 2, batch_size = 30, verbose = 0)
  }
  fit_epochs()
  before <- weights_of(model)
  first <- keras3::get_layer(model, index = 1)
  first$trainable <- FALSE
  fit_epochs()
  after <- weights_of(model)
  expect_identical(after[1:2], before[1:2])
  for (i in 3:4) expect_false(identical(after[[i]], before[[i]]))
})

test_that("a one-byte momentum trains with keras3 verbs", {
  skip_if_no_keras3()
  withr::local_package("keras3")
  data <- iris_data()
  set_random_seed(1)
  model <- keras_model_sequential(input_shape = 4) |>
    layer_dense(64, activation = "relu") |>
    layer_dense(3, activation = "softmax")
  model |> compile(
    optimizer = keraslion::optimizer_lion(learning_rate = 0.01, momentum_dtype = "int8"),
    loss = "sparse_categorical_crossentropy",
    metrics = "accuracy"
  )
  history <- model |> fit(data$x, data$y, epochs = 30, batch_size = 16, verbose = 0)
  expect_lt(history$metrics$loss[[30]], history$metrics$loss[[1]])
  expect_gte(history$metrics$accuracy[[30]], 0.9)
  # The (4, 64) kernel is stored in int8; the biases and the (64, 3) kernel,
  # too small to gain, keep float32.
  dtypes <- vapply(model$optimizer$`_momentums`, function(v) v$dtype, "")
  expect_identical(dtypes, c("int8", "float32", "float32", "float32"))
  expect_identical(model$optimizer$get_config()$momentum_dtype, "int8")
})
