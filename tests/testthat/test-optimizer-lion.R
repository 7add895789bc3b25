# The signature users know from keras3's reference page (the seed).
seed_formals <- alist(
  learning_rate = 0.001, beta_1 = 0.9, beta_2 = 0.99, weight_decay = NULL,
  clipnorm = NULL, clipvalue = NULL, global_clipnorm = NULL, use_ema = FALSE,
  ema_momentum = 0.99, ema_overwrite_frequency = NULL, name = "lion", ... = ,
  loss_scale_factor = NULL, gradient_accumulation_steps = NULL
)

test_that("the signature keeps the seed's formals, order and defaults", {
  f <- formals(optimizer_lion)
  expect_identical(names(f)[seq_along(seed_formals)], names(seed_formals))
  expect_identical(as.list(f)[seq_along(seed_formals)], as.list(seed_formals))
  # New options come after the seed's and default to Keras's behaviour.
  expect_identical(
    as.list(f)[-seq_along(seed_formals)],
    list(momentum_dtype = NULL, cautious = FALSE,
         exclude_from_weight_decay = NULL, skip_nonfinite = FALSE)
  )
})

test_that("bad arguments get an error naming the argument and the value", {
  # These fail in R, before Python is needed.
  expect_snapshot(error = TRUE, {
    optimizer_lion(learning_rate = -1)
    optimizer_lion(learning_rate = "0.1")
    optimizer_lion(learning_rate = c(0.1, 0.2))
    optimizer_lion(lion_hparams_from_adamw(3e-3, 0.01))
    optimizer_lion(learning_rate = NA_real_)
    optimizer_lion(learning_rate = Inf)
    optimizer_lion(learning_rate = function(step) 0.1)
    optimizer_lion(beta_1 = 0)
    optimizer_lion(beta_1 = 1.5)
    optimizer_lion(beta_2 = 1)
    optimizer_lion(beta_2 = -0.1)
    optimizer_lion(weight_decay = -0.01)
    optimizer_lion(weight_decay = NaN)
    optimizer_lion(clipnorm = 0)
    optimizer_lion(clipvalue = -1)
    optimizer_lion(global_clipnorm = "1")
    optimizer_lion(clipnorm = 1, global_clipnorm = 1)
    optimizer_lion(use_ema = NA)
    optimizer_lion(use_ema = "yes")
    optimizer_lion(ema_momentum = 1.01)
    optimizer_lion(ema_overwrite_frequency = 2.5)
    optimizer_lion(ema_overwrite_frequency = 0)
    optimizer_lion(gradient_accumulation_steps = 1)
    optimizer_lion(gradient_accumulation_steps = 2.5)
    optimizer_lion(gradient_accumulation_steps = NA_integer_)
    optimizer_lion(loss_scale_factor = 0)
    optimizer_lion(name = "")
    optimizer_lion(name = c("a", "b"))
    optimizer_lion(momentum_dtype = "int16")
    optimizer_lion(cautious = 1)
    optimizer_lion(exclude_from_weight_decay = c("bias", NA))
    optimizer_lion(skip_nonfinite = NULL)
    optimizer_lion(0.1, 0.9, 0.99, NULL, NULL, NULL, NULL, FALSE, 0.99, NULL, "lion", TRUE)
  })
})

test_that("a classed value is named by its class in the error", {
  expect_snapshot(error = TRUE, {
    optimizer_lion(learning_rate = factor("0.001"))
    optimizer_lion(weight_decay = as.Date("2024-01-01"))
    optimizer_lion(clipnorm = data.frame(x = 1))
    optimizer_lion(momentum_dtype = factor("float32"))
    optimizer_lion(use_ema = factor("TRUE"))
    optimizer_lion(ema_momentum = structure(0.5, class = "units"))
  })
})

test_that("a function must be callable with no arguments; primitives are refused in R", {
  expect_snapshot(error = TRUE, {
    optimizer_lion(learning_rate = function(step, ...) 0.1)
    optimizer_lion(beta_1 = function(x, y = 1) 0.9)
    optimizer_lion(learning_rate = sum)
    optimizer_lion(beta_2 = max)
  })
})

test_that("numbers that float32 rounds to 0 or infinity are refused, naming the argument", {
  expect_snapshot(error = TRUE, {
    optimizer_lion(learning_rate = 1e39)
    optimizer_lion(weight_decay = 1e39)
    optimizer_lion(weight_decay = 1e-46)
    optimizer_lion(clipnorm = 1e-46)
    optimizer_lion(clipvalue = 1e39)
    optimizer_lion(global_clipnorm = 1e-300)
    optimizer_lion(loss_scale_factor = 1e39)
  })
})

test_that("zero and the betas' documented edge values stay accepted", {
  skip_if_no_keras()
  config <- optimizer_lion(
    learning_rate = 0, weight_decay = 0, beta_1 = 2^-126, beta_2 = 2^-126,
    clipnorm = 2^-149
  )$get_config()
  expect_identical(config$learning_rate, 0)
  expect_identical(config$weight_decay, 0)
  expect_identical(config$beta_1, 2^-126)
  expect_identical(config$beta_2, 2^-126)
  expect_identical(optimizer_lion(beta_2 = 0)$get_config()$beta_2, 0)
  # Betas that the float32 step would round or flush to 0 are refused.
  for (tiny in c(1e-40, 1e-300)) {
    expect_error(optimizer_lion(beta_1 = tiny), "beta_1.*1.1754944e-38",
      class = "keraslion_error_argument"
    )
    expect_error(optimizer_lion(beta_2 = tiny), "beta_2.*1.1754944e-38.*or 0",
      class = "keraslion_error_argument"
    )
  }
  config <- optimizer_lion(clipvalue = 3e38, global_clipnorm = NULL)$get_config()
  expect_identical(config$clipvalue, 3e38)
  # Keras divides by these: a number or reciprocal that XLA would flush to 0 is refused.
  config <- optimizer_lion(global_clipnorm = 2^126, loss_scale_factor = 2^-126)$get_config()
  expect_identical(c(config$global_clipnorm, config$loss_scale_factor), c(2^126, 2^-126))
  expect_error(
    optimizer_lion(global_clipnorm = 3e38),
    "global_clipnorm. must be `NULL` or a number in \\[2\\^-126, 2\\^126\\]",
    class = "keraslion_error_argument"
  )
  expect_error(
    optimizer_lion(loss_scale_factor = 1e-40), "flushed to 0",
    class = "keraslion_error_argument"
  )
})

test_that("an optimizer's config makes the same optimizer again", {
  skip_if_no_keras()
  # A default config has no patterns, an empty list; a schedule's is a list
  # (its class and config), which was refused.
  schedule <- keras_module()$optimizers$schedules$CosineDecay(1e-3, 100L, warmup_steps = 10L)
  for (optimizer in list(
    optimizer_lion(), optimizer_lion(exclude_from_weight_decay = "bias"),
    optimizer_lion(exclude_from_weight_decay = c("bias", "norm")),
    optimizer_lion(learning_rate = schedule)
  )) {
    config <- optimizer$get_config()
    config$name <- NULL
    copy <- do.call(optimizer_lion, config)$get_config()
    copy$name <- NULL
    expect_identical(copy, config)
  }
  expect_null(keraslion:::as_patterns(character(), "p"))
})

test_that("a NumPy bool or a 1 x 1 matrix is a flag, given or set", {
  skip_if_no_keras()
  np <- reticulate::import("numpy", convert = FALSE)
  optimizer <- optimizer_lion(cautious = np$bool_(TRUE), use_ema = np$array(FALSE))
  expect_true(optimizer$cautious)
  expect_false(optimizer$use_ema)
  optimizer$cautious <- np$bool_(FALSE)
  expect_false(optimizer$cautious)
  # A 1 x 1 matrix reached Python as an array, which Python refused.
  optimizer$cautious <- matrix(TRUE)
  expect_true(optimizer$cautious)
  optimizer$cautious <- FALSE
  expect_error(optimizer$cautious <- np$float32(1), "<numpy.float32>",
    class = "keraslion_error_argument"
  )
  expect_false(optimizer$cautious)
})

test_that("exclude_from_weight_decay is checked by Python's re, which applies it", {
  skip_if_no_keras()
  expect_identical(
    keraslion:::as_patterns(c("bias", "norm$", "^dense_[0-9]+/kernel"), "p"),
    list("bias", "norm$", "^dense_[0-9]+/kernel")
  )
  expect_snapshot(error = TRUE, {
    optimizer_lion(exclude_from_weight_decay = "(unclosed")
    # R's character classes mean a set of characters to Python (it warns).
    optimizer_lion(exclude_from_weight_decay = c("bias", "[[:alpha:]]+"))
    # Valid in R (PCRE), not in Python.
    optimizer_lion(exclude_from_weight_decay = "\\p{L}+")
  })
})

test_that("the default name is numbered, as Keras does; a name given is kept", {
  skip_if_no_keras()
  first <- optimizer_lion()
  second <- optimizer_lion()
  from_null <- optimizer_lion(name = NULL)
  names <- c(first$name, second$name, from_null$name)
  expect_match(names, "^lion(_[0-9]+)?$")
  expect_identical(anyDuplicated(names), 0L)
  expect_identical(optimizer_lion(name = "lion_head")$name, "lion_head")
  expect_identical(optimizer_lion(name = "lion")$name, "lion")
  expect_identical(optimizer_lion(name = "lion")$name, "lion")

  # So two optimizers for two parts of one model have distinct variable paths.
  keras <- keras_module()
  a <- keras$Variable(array(c(1, 2)))
  b <- keras$Variable(array(c(3, 4)))
  first$build(list(a))
  second$build(list(b))
  paths <- vapply(c(first$variables, second$variables), function(v) v$path, "")
  expect_identical(anyDuplicated(paths), 0L)
})

test_that("NumPy scalars and 0-d tensors are accepted as numbers", {
  skip_if_no_keras()
  keras <- keras_module()
  np <- reticulate::import("numpy", convert = FALSE)
  opt <- optimizer_lion(
    learning_rate = np$float32(0.25),
    beta_1 = np$array(0.5),
    weight_decay = keras$ops$convert_to_tensor(0.125),
    clipvalue = np$float64(2),
    gradient_accumulation_steps = np$int64(3L),
    ema_momentum = keras$ops$convert_to_tensor(0.75),
    use_ema = TRUE,
    ema_overwrite_frequency = keras$ops$convert_to_tensor(4L)
  )
  config <- opt$get_config()
  expect_identical(config$learning_rate, 0.25)
  expect_identical(config$beta_1, 0.5)
  expect_identical(config$weight_decay, 0.125)
  expect_identical(config$clipvalue, 2)
  expect_identical(config$gradient_accumulation_steps, 3L)
  expect_identical(config$ema_momentum, 0.75)
  expect_identical(config$ema_overwrite_frequency, 4L)

  # They are checked like R numbers.
  expect_error(optimizer_lion(weight_decay = keras$ops$convert_to_tensor(-1)), "not `-1`")
  expect_error(optimizer_lion(gradient_accumulation_steps = np$float64(2.5)), "not `2.5`")
  expect_snapshot(error = TRUE, {
    optimizer_lion(weight_decay = np$array(c(0.1, 0.2)))
    optimizer_lion(clipnorm = np$bool_(TRUE))
    optimizer_lion(beta_2 = np$array(c(0.9, 0.99)))
  })
})

test_that("an unknown argument in ... is an error naming it", {
  skip_if_no_keras()
  expect_snapshot(error = TRUE, {
    optimizer_lion(decay = 0.1, amsgrad = TRUE)
  })
})

test_that("it returns the Python optimizer with the arguments converted", {
  skip_if_no_keras()
  keras <- keras_module()
  opt <- optimizer_lion(
    learning_rate = 1L, weight_decay = NULL, gradient_accumulation_steps = 10,
    use_ema = TRUE, ema_overwrite_frequency = 3, exclude_from_weight_decay = "bias"
  )
  expect_true(reticulate::import_builtins()$isinstance(opt, keras$optimizers$Optimizer))
  expect_s3_class(opt, "keraslion.lion.Lion")
  config <- opt$get_config()
  expect_identical(config$learning_rate, 1)
  expect_null(config$weight_decay)
  # Whole numbers arrive as Python ints (a Python float would come back a double).
  expect_identical(config$gradient_accumulation_steps, 10L)
  expect_identical(config$ema_overwrite_frequency, 3L)
  # One pattern stays one pattern, not a set of characters.
  expect_identical(config$exclude_from_weight_decay, "bias")
  expect_match(config$name, "^lion(_[0-9]+)?$")
})

test_that("a Python-side error reaches R as an R error and R carries on", {
  skip_if_no_keras()
  expect_error(keraslion:::python_core()$Lion(beta_2 = 1.5), "beta_2")
  expect_s3_class(optimizer_lion(), "keraslion.lion.Lion")
})

test_that("one step reproduces Keras's published Lion example", {
  skip_if_no_keras()
  keras <- keras_module()
  opt <- optimizer_lion(learning_rate = 0.5)
  variable <- keras$Variable(array(c(1, 2, 3, 4)))
  opt$apply(list(keras$ops$convert_to_tensor(array(c(1, 6, 7, 2)))), list(variable))
  expect_equal(as.vector(as_r_array(variable)), c(0.5, 1.5, 2.5, 3.5))
})

test_that("a gradient of another shape is an R error that changes nothing", {
  skip_if_no_keras()
  keras <- keras_module()
  opt <- optimizer_lion(learning_rate = 0.5, momentum_dtype = "int8")
  variable <- keras$Variable(matrix(1, 4, 64), name = "kernel")
  wrong <- keras$ops$convert_to_tensor(matrix(1, 64, 4))
  expect_error(opt$apply(list(wrong), list(variable)), "kernel.*\\(4, 64\\)")
  expect_equal(as_r_array(variable), matrix(1, 4, 64))
  expect_equal(as.integer(as_r_array(opt$iterations)), 0L)
})

test_that("R functions work as learning rate and betas", {
  skip_if_no_keras()
  keras <- keras_module()
  calls <- 0
  opt <- optimizer_lion(
    learning_rate = function() {
      calls <<- calls + 1
      0.25
    },
    beta_1 = function() 0.5
  )
  variable <- keras$Variable(array(c(1, 1)))
  gradient <- keras$ops$convert_to_tensor(array(c(1, -1)))
  opt$apply(list(gradient), list(variable))
  expect_equal(as.vector(as_r_array(variable)), c(0.75, 1.25))
  expect_gt(calls, 0)
})

test_that("functions that can be called with no arguments work as learning rate", {
  skip_if_no_keras()
  keras <- keras_module()
  for (lr in list(function(...) 0.25, function(scale = 1) scale * 0.25)) {
    opt <- optimizer_lion(learning_rate = lr)
    variable <- keras$Variable(array(c(1, 1)))
    opt$apply(list(keras$ops$convert_to_tensor(array(c(1, -1)))), list(variable))
    expect_equal(as.vector(as_r_array(variable)), c(0.75, 1.25))
  }
})

test_that("a learning rate function's result is checked when it is called", {
  skip_if_no_keras()
  keras <- keras_module()
  one_step <- function(learning_rate) {
    opt <- optimizer_lion(learning_rate = learning_rate)
    variable <- keras$Variable(array(c(1, 1)))
    opt$apply(list(keras$ops$convert_to_tensor(array(c(1, -1)))), list(variable))
    as.vector(as_r_array(variable))
  }
  # R's NA reaches Python as True, which was a learning rate of 1; a negative
  # one trained uphill.
  bad <- list(
    function() NA, function() NA_real_, function() -0.05, function() Inf,
    function() NaN, function() "0.1", function() c(0.1, 0.2),
    reticulate::py_eval("lambda: -0.05"), reticulate::py_eval("lambda: float('nan')")
  )
  for (learning_rate in bad) {
    expect_error(one_step(learning_rate), "learning_rate")
  }
  # The value received is shown as it was, not as reticulate's True.
  expect_error(one_step(function() NA), "Received: learning_rate(\\(\\))?=nan")
  # The same inside a compiled fit() step.
  model <- keras$Sequential(list(keras$Input(shape = list(2L)), keras$layers$Dense(1L)))
  model$compile(optimizer = optimizer_lion(learning_rate = function() -0.05), loss = "mse")
  expect_error(
    model$fit(matrix(1, 4, 2), matrix(0, 4, 1), epochs = 1L, verbose = 0L),
    "learning_rate"
  )
  # A good one still works.
  expect_equal(one_step(function() 0.25), c(0.75, 1.25))
})

test_that("a variable given as learning rate or beta is followed, not copied", {
  skip_if_no_keras()
  keras <- keras_module()
  rate <- keras$Variable(0.25)
  beta_1 <- keras$Variable(0.9)
  opt <- optimizer_lion(learning_rate = rate, beta_1 = beta_1)
  variable <- keras$Variable(array(c(1, 1)))
  gradient <- keras$ops$convert_to_tensor(array(c(1, -1)))
  opt$apply(list(gradient), list(variable))
  expect_equal(as.vector(as_r_array(variable)), c(0.75, 1.25))
  rate$assign(0.5)
  opt$apply(list(gradient), list(variable))
  expect_equal(as.vector(as_r_array(variable)), c(0.25, 1.75))
  expect_error(optimizer_lion(learning_rate = keras$Variable(-0.5)), "learning_rate")
})

test_that("a variable's value is checked in R as a number would be", {
  skip_if_no_keras()
  keras <- keras_module()
  expect_error(
    optimizer_lion(learning_rate = keras$Variable(-1)),
    "`learning_rate` is a variable holding `-1`: its value must be a finite number >= 0",
    class = "keraslion_error_argument"
  )
  expect_error(optimizer_lion(beta_1 = keras$Variable(2)), "`beta_1` is a variable holding `2`",
    class = "keraslion_error_argument"
  )
  expect_error(optimizer_lion(weight_decay = keras$Variable(NaN)), "`weight_decay`.*`NaN`",
    class = "keraslion_error_argument"
  )
  expect_error(optimizer_lion(beta_1 = keras$Variable(2^-127)), "beta_1.*variable holding",
    class = "keraslion_error_argument"
  )
  expect_error(
    optimizer_lion(learning_rate = keras$Variable(1L, dtype = "int32", trainable = FALSE)),
    "dtype int32",
    class = "keraslion_error_argument"
  )
  expect_error(
    optimizer_lion(learning_rate = keras$Variable(matrix(1e-3))), "shape \\(1, 1\\)",
    class = "keraslion_error_argument"
  )
  opt <- optimizer_lion(beta_2 = 0.9)
  expect_error(opt$beta_2 <- keras$Variable(1), "`beta_2` is a variable holding `1`",
    class = "keraslion_error_argument"
  )
  expect_equal(opt$beta_2, 0.9)
  # A variable as learning rate is followed only when given at construction.
  rate <- keras$Variable(0.01)
  opt <- optimizer_lion(learning_rate = rate)
  opt$learning_rate <- rate
  expect_error(opt$learning_rate <- keras$Variable(0.02), "only when given",
    class = "keraslion_error_argument"
  )
  expect_equal(as.vector(keras$ops$convert_to_numpy(opt$learning_rate)), 0.01, tolerance = 1e-7)
  # The edges of the ranges stay accepted.
  expect_s3_class(optimizer_lion(beta_2 = keras$Variable(0), beta_1 = keras$Variable(1)),
    "keraslion.lion.Lion"
  )
})

test_that("another backend's variable is checked in R too", {
  skip_if_no_keras()
  skip_if_not(reticulate::py_module_available("tensorflow"))
  tf <- reticulate::import("tensorflow")
  # A NaN failed in R's own comparison, without naming the argument.
  expect_error(optimizer_lion(beta_1 = tf$Variable(NaN)), "`beta_1` is a variable holding `NaN`",
    class = "keraslion_error_argument"
  )
  expect_error(optimizer_lion(weight_decay = tf$Variable(-1)), "`weight_decay`.*`-1`",
    class = "keraslion_error_argument"
  )
  expect_error(optimizer_lion(beta_2 = tf$Variable(c(0.5, 0.5))), "shape \\(2\\)",
    class = "keraslion_error_argument"
  )
  # The reason a number would get is kept.
  expect_error(
    optimizer_lion(weight_decay = tf$Variable(1e-300, dtype = "float64")),
    "In float32.*rounds to 0",
    class = "keraslion_error_argument"
  )
})

test_that("a name with a slash is refused in R, given or set", {
  expect_error(optimizer_lion(name = "a/b"), 'name.*without "/".*"a/b"',
    class = "keraslion_error_argument"
  )
  skip_if_no_keras()
  opt <- optimizer_lion(name = "head")
  expect_error(opt$name <- "a/b", 'name.*without "/"', class = "keraslion_error_argument")
  expect_identical(opt$name, "head")
})

test_that("a beta given as an R function fails at save time, naming it", {
  skip_if_no_keras()
  keras <- keras_module()
  path <- withr::local_tempfile(fileext = ".keras")
  model <- keras$Sequential(list(keras$Input(shape = list(2L)), keras$layers$Dense(1L)))
  model$compile(optimizer = optimizer_lion(beta_2 = function() 0.95), loss = "mse")
  # Saved, it would not load: Keras cannot find an R function again.
  expect_error(model$save(path), "`beta_2` is a function that Keras cannot save")
  # The fix the message gives: a number.
  model$optimizer$beta_2 <- 0.95
  model$save(path)
  expect_equal(keras$saving$load_model(path)$optimizer$beta_2, 0.95)
})

test_that("a model trained with optimizer_lion() classifies iris", {
  skip_if_no_keras()
  keras <- keras_module()
  keras$utils$set_random_seed(1L)
  x <- scale(as.matrix(iris[, 1:4]))
  y <- as.integer(iris$Species) - 1L
  model <- keras$Sequential(list(
    keras$Input(shape = list(4L)),
    keras$layers$Dense(16L, activation = "relu"),
    keras$layers$Dense(3L, activation = "softmax")
  ))
  model$compile(
    optimizer = optimizer_lion(learning_rate = 0.01, weight_decay = 0.01),
    loss = "sparse_categorical_crossentropy",
    metrics = list("accuracy")
  )
  history <- model$fit(x, array(y), epochs = 40L, batch_size = 16L, verbose = 0L)
  accuracy <- unlist(history$history$accuracy)
  expect_gte(accuracy[[length(accuracy)]], 0.9)
  expect_lt(history$history$loss[[40]], history$history$loss[[1]])
})

test_that("keraslion's own options reach Python", {
  skip_if_no_keras()
  opt <- optimizer_lion(
    momentum_dtype = "bfloat16", cautious = TRUE,
    exclude_from_weight_decay = c("bias", "norm"), skip_nonfinite = TRUE
  )
  config <- opt$get_config()
  expect_identical(config$momentum_dtype, "bfloat16")
  expect_true(config$cautious)
  expect_identical(config$exclude_from_weight_decay, c("bias", "norm"))
  expect_true(config$skip_nonfinite)
})

test_that("exclude_from_weight_decay spares matching weights in a model", {
  skip_if_no_keras()
  keras <- keras_module()
  model <- keras$Sequential(list(
    keras$Input(shape = list(2L)),
    keras$layers$Dense(2L, bias_initializer = "ones", name = "dense")
  ))
  opt <- optimizer_lion(learning_rate = 0.1, weight_decay = 0.5,
                        exclude_from_weight_decay = "bias")
  variables <- model$trainable_variables
  zeros <- lapply(variables, function(v) keras$ops$zeros(v$shape))
  kernel_before <- as_r_array(variables[[1]])
  opt$apply(zeros, variables)
  # Zero gradients: only the decay moves weights, and only the kernel's.
  expect_equal(as_r_array(variables[[1]]), kernel_before * (1 - 0.1 * 0.5),
               tolerance = 1e-6)
  expect_equal(as.vector(as_r_array(variables[[2]])), c(1, 1))
})

test_that("a Keras learning-rate schedule is accepted as learning_rate", {
  skip_if_no_keras()
  keras <- keras_module()
  schedule <- keras$optimizers$schedules$CosineDecay(1e-3, 100L)
  opt <- optimizer_lion(learning_rate = schedule)
  expect_identical(opt$get_config()$learning_rate$class_name, "CosineDecay")
})

test_that("a learning rate set on the optimizer keeps its kind, with an R error", {
  skip_if_no_keras()
  keras <- keras_module()
  scheduled <- optimizer_lion(learning_rate = function() 1e-3)
  fresh <- optimizer_lion(learning_rate = 1e-3)
  built <- optimizer_lion(learning_rate = 1e-3)
  built$build(list(keras$Variable(c(1, 2))))
  expect_snapshot(error = TRUE, {
    scheduled$learning_rate <- 0.01
    scheduled$learning_rate <- keras$Variable(0.01)
    fresh$learning_rate <- "0.01"
    built$learning_rate <- function() 0.01
    built$learning_rate <- list(learning_rate = 1e-3, weight_decay = 0.1)
  })
  for (opt in list(scheduled, fresh, built)) {
    expect_error(opt$learning_rate <- "0.01", class = "keraslion_error_argument")
  }
  expect_equal(scheduled$learning_rate, 1e-3)
  expect_equal(as.vector(keras$ops$convert_to_numpy(built$learning_rate)), 1e-3,
    tolerance = 1e-7
  )
  # What each one takes.
  scheduled$learning_rate <- function() 0.02
  expect_equal(scheduled$learning_rate, 0.02)
  fresh$learning_rate <- keras$optimizers$schedules$CosineDecay(1e-3, 100L)
  expect_identical(fresh$get_config()$learning_rate$class_name, "CosineDecay")
  built$learning_rate <- 0.5
  expect_equal(as.vector(keras$ops$convert_to_numpy(built$learning_rate)), 0.5)
})

test_that("a Python class is not taken for a function or a variable", {
  skip_if_no_keras()
  keras <- keras_module()
  expect_snapshot(error = TRUE, {
    optimizer_lion(learning_rate = keras$optimizers$schedules$ExponentialDecay)
    optimizer_lion(beta_1 = keras$Variable)
  })
  opt <- optimizer_lion(learning_rate = 0.1, beta_2 = 0.9)
  expect_error(opt$learning_rate <- keras$optimizers$schedules$ExponentialDecay,
    "Python class", class = "keraslion_error_argument"
  )
  expect_error(opt$beta_2 <- keras$optimizers$schedules$ExponentialDecay, "Python class",
    class = "keraslion_error_argument"
  )
  expect_equal(as.vector(keras$ops$convert_to_numpy(opt$learning_rate)), 0.1, tolerance = 1e-7)
  expect_identical(opt$beta_2, 0.9)
  # An instance is still a schedule.
  opt$learning_rate <- keras$optimizers$schedules$ExponentialDecay(0.1, 10L, 0.5)
  expect_identical(opt$get_config()$learning_rate$class_name, "ExponentialDecay")
})

test_that("lion_hparams_from_adamw()'s list given as the learning rate gets a hint", {
  skip_if_no_keras()
  hparams <- lion_hparams_from_adamw(3e-3, 0.01)
  expect_snapshot(error = TRUE, {
    optimizer_lion(learning_rate = rev(hparams))
    optimizer_lion(weight_decay = hparams)
  })
})

test_that("setting an argument on the optimizer is checked in R as optimizer_lion() checks it", {
  skip_if_no_keras()
  opt <- optimizer_lion(beta_1 = 0.9)
  # reticulate alone would pass NA to Python as True, and a length-2 vector as a list.
  expect_snapshot(error = TRUE, {
    opt$momentum_dtype <- NA
    opt$beta_1 <- c(0.9, 0.95)
    opt[["beta_2"]] <- 1
    opt$learning_rate <- NA_real_
    opt$ema_overwrite_frequency <- 2.5
    opt$name <- NULL
    opt$exclude_from_weight_decay <- "bias"
  })
  expect_true(is.function(opt$exclude_from_weight_decay))
  expect_identical(opt$beta_1, 0.9)
  expect_identical(opt$momentum_dtype, NULL)
  # Good values are converted as optimizer_lion() converts them.
  opt$ema_overwrite_frequency <- 5
  expect_identical(opt$get_config()$ema_overwrite_frequency, 5L)
  opt[["beta_2"]] <- 0.9
  expect_identical(opt$beta_2, 0.9)
  opt$momentum_dtype <- "int8"
  expect_identical(opt$get_config()$momentum_dtype, "int8")
  # Attributes that are not optimizer_lion()'s arguments are reticulate's.
  opt$note <- "kept"
  expect_identical(opt$note, "kept")
})
