# Saving, loading and resuming across R processes: a model saved with
# optimizer_lion() loads in a new R session after library(keraslion) with no
# further call, whatever the order of keras3, keraslion and Python's start.

# A small model compiled with optimizer_lion() and trained one epoch, saved.
saved_lion_model <- function() {
  data <- iris_data()
  model <- linear_probe(optimizer_lion(learning_rate = 0.01, beta_1 = 0.95))
  keras3::fit(model, data$x, iris$Petal.Width, epochs = 1, batch_size = 50, verbose = 0)
  path <- withr::local_tempfile(fileext = ".keras", .local_envir = parent.frame())
  keras3::save_model(model, path)
  path
}

# In a new R process: runs `before` (R code as text), then loads `path` with
# every loader available there, with `safe_mode = TRUE` and FALSE; returns
# the class of each loaded optimizer and the reticulate version.
load_in_new_r <- function(path, before, libpath = .libPaths()) {
  run_in_new_r(function(path, before) {
    eval(parse(text = before), globalenv())
    keras <- reticulate::import("keras")
    loaders <- list(
      reticulate = function(safe) keras$saving$load_model(path, safe_mode = safe)
    )
    if ("keras3" %in% loadedNamespaces()) {
      loaders$keras3 <- function(safe) keras3::load_model(path, safe_mode = safe)
    }
    classes <- unlist(lapply(loaders, function(load) {
      c(safe = class(load(TRUE)$optimizer)[[1]], unsafe = class(load(FALSE)$optimizer)[[1]])
    }))
    list(classes = classes, reticulate = as.character(utils::packageVersion("reticulate")))
  }, list(path = path, before = before), libpath = libpath)
}

# Each way keraslion, keras3 and Python can meet in a session.
orders <- c(
  keraslion_then_keras3 = "library(keraslion); library(keras3)",
  keras3_then_keraslion = "library(keras3); library(keraslion)",
  keras3_running_then_keraslion = "library(keras3); invisible(op_add(1, 1)); library(keraslion)",
  python_then_keraslion = "reticulate::py_available(TRUE); library(keraslion)",
  keras_then_keraslion = "invisible(reticulate::import('keras')); library(keraslion)"
)

test_that("a saved model loads in a new session, whatever came first", {
  skip_if_no_keras3()
  path <- saved_lion_model()
  for (order in names(orders)) {
    loaded <- load_in_new_r(path, orders[[order]])
    with_keras3 <- grepl("keras3", orders[[order]], fixed = TRUE)
    expect_length(loaded$classes, if (with_keras3) 4 else 2)
    expect_true(all(loaded$classes == "keraslion.lion.Lion"), label = order)
  }
})

# The R libraries of this session without the one that holds the reticulate
# in use, when a library further on holds an older reticulate (Debian's
# 1.28 under the project's .Rlib): reticulate's Python import hooks changed
# between versions, so loading must work with both.
libraries_with_older_reticulate <- function() {
  libs <- .libPaths()
  holders <- libs[file.exists(file.path(libs, "reticulate", "DESCRIPTION"))]
  if (length(holders) < 2) {
    return(NULL)
  }
  setdiff(libs, holders[[1]])
}

test_that("a saved model loads in a new session with an older reticulate", {
  skip_if_no_keras3()
  libpath <- libraries_with_older_reticulate()
  # R CMD check --as-cran shows its tests only the libraries it needs.
  skip_if(is.null(libpath), "no older reticulate in the R libraries")
  path <- saved_lion_model()
  for (order in c("python_then_keraslion", "keras_then_keraslion")) {
    loaded <- load_in_new_r(path, orders[[order]], libpath = libpath)
    expect_true(package_version(loaded$reticulate) < utils::packageVersion("reticulate"))
    expect_identical(unname(loaded$classes), rep("keraslion.lion.Lion", 2), label = order)
  }
  loaded <- load_in_new_r(path, "library(keraslion)", libpath = libpath)
  expect_identical(unname(loaded$classes), rep("keraslion.lion.Lion", 2))
})

test_that("a model saved in one session trains on in another bit for bit", {
  skip_if_no_keras3()
  data <- iris_data()
  keras3::set_random_seed(5)
  model <- keras3::keras_model_sequential(input_shape = 4) |>
    keras3::layer_dense(8, activation = "tanh") |>
    keras3::layer_dense(3, activation = "softmax")
  keras3::compile(
    model,
    optimizer = optimizer_lion(learning_rate = 0.01, weight_decay = 0.1, beta_1 = 0.95),
    loss = "sparse_categorical_crossentropy"
  )
  train <- function(model, from, to) {
    keras3::fit(
      model, data$x, data$y,
      epochs = to, initial_epoch = from, batch_size = 32, shuffle = FALSE, verbose = 0
    )
  }
  train(model, 0, 2)
  path <- withr::local_tempfile(fileext = ".keras")
  keras3::save_model(model, path)
  train(model, 2, 4)

  resumed <- run_in_new_r(function(path, x, y) {
    library(keras3)
    library(keraslion)
    model <- load_model(path)
    fit(model, x, y, epochs = 4, initial_epoch = 2, batch_size = 32, shuffle = FALSE, verbose = 0)
    list(weights = get_weights(model), class = class(model$optimizer)[[1]])
  }, list(path = path, x = data$x, y = data$y))
  expect_identical(resumed$class, "keraslion.lion.Lion")
  expect_identical(resumed$weights, weights_of(model))
})

test_that("callback_backup_and_restore() resumes a run that died in epoch 3", {
  skip_if_no_keras3()
  data <- iris_data()
  # Trains 5 epochs from seed 9, backing up into `backup_dir` after each;
  # with `die_in_epoch`, the R process quits in the middle of that epoch
  # (counted from 1, as keras3 does).
  train <- function(x, y, backup_dir, die_in_epoch = NULL) {
    library(keras3)
    library(keraslion)
    set_random_seed(9)
    model <- keras_model_sequential(input_shape = 4) |>
      layer_dense(8, activation = "tanh") |>
      layer_dense(3, activation = "softmax")
    model |> compile(
      optimizer = optimizer_lion(learning_rate = 0.01, weight_decay = 0.1),
      loss = "sparse_categorical_crossentropy"
    )
    epoch_now <- 0L
    die <- callback_lambda(
      on_epoch_begin = function(epoch, logs) epoch_now <<- as.integer(epoch),
      on_train_batch_end = function(batch, logs) {
        if (identical(epoch_now, die_in_epoch) && batch == 2) quit(save = "no", status = 3)
      }
    )
    model |> fit(
      x, y,
      epochs = 5, batch_size = 32, shuffle = FALSE, verbose = 0,
      callbacks = list(callback_backup_and_restore(backup_dir), die)
    )
    get_weights(model)
  }
  interrupted <- withr::local_tempdir()
  died <- tryCatch(
    run_in_new_r(train, list(data$x, data$y, interrupted, die_in_epoch = 3L)),
    error = function(e) e
  )
  expect_s3_class(died, "callr_status_error")
  expect_true(length(dir(interrupted, recursive = TRUE)) > 0)

  resumed <- run_in_new_r(train, list(data$x, data$y, interrupted))
  uninterrupted <- run_in_new_r(train, list(data$x, data$y, withr::local_tempdir()))
  expect_identical(resumed, uninterrupted)
})

test_that("a pickled model keeps its Lion's state; a Lion pickled alone says it lost it", {
  skip_if_no_keras3()
  data <- iris_data()
  model <- linear_probe(optimizer_lion(learning_rate = 0.01))
  keras3::fit(model, data$x, iris$Petal.Width, epochs = 1, batch_size = 50, verbose = 0)
  path <- withr::local_tempfile(fileext = ".pickle")
  before <- lapply(model$optimizer$variables, as_r_array)

  reticulate::py_save_object(model, path)
  copy <- reticulate::py_load_object(path)
  expect_s3_class(copy$optimizer, "keraslion.lion.Lion")
  expect_identical(lapply(copy$optimizer$variables, as_r_array), before)
  expect_equal(as.integer(as_r_array(copy$optimizer$iterations)), 3L)

  # On its own, the copy is not built: it has no place for the state.
  reticulate::py_save_object(model$optimizer, path)
  expect_warning(
    copy <- reticulate::py_load_object(path),
    "starts afresh, without the state saved with it after 3 steps",
    class = "keraslion_warning_state"
  )
  expect_false(copy$built)
  expect_equal(copy$get_config(), model$optimizer$get_config())
  expect_identical(lapply(model$optimizer$variables, as_r_array), before)
})
