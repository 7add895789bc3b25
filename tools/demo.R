# The main job: train a classifier from R with optimizer_lion(), then the same
# model with AdamW at matched settings, and compare held-out accuracy. Written
# with keras3's verbs; without keras3 it says so and uses Keras's Python API
# through reticulate.
#
# Data: iris (ships with R), 150 flowers, 4 measurements, 3 species; a
# stratified 2/3 train, 1/3 test split.
# Run with `make demo` (which sets up Python and keras3 and installs the
# package first).

install_and_attach <- function() {
  lib <- file.path(tempdir(), "keraslion-lib")
  dir.create(lib, showWarnings = FALSE)
  install.packages(".", lib = lib, repos = NULL, type = "source", quiet = TRUE)
  with_keras3 <- requireNamespace("keras3", quietly = TRUE)
  if (with_keras3) library(keras3)
  # After keras3: both export optimizer_lion(), and keraslion's must win.
  library(keraslion, lib.loc = lib)
  with_keras3
}
with_keras3 <- install_and_attach()

keras <- reticulate::import("keras")
cat("Keras", keras$`__version__`, "on the", keras$backend$backend(), "backend, ")
if (with_keras3) {
  cat("from R with keras3", format(packageVersion("keras3")), "\n\n")
} else {
  cat("from R through reticulate: keras3 is not installed\n\n")
}

set.seed(1)
test_rows <- unlist(lapply(split(seq_len(nrow(iris)), iris$Species), function(rows) {
  sample(rows, length(rows) / 3)
}))
x <- as.matrix(iris[, 1:4])
centre <- colMeans(x[-test_rows, ])
spread <- apply(x[-test_rows, ], 2, sd)
x <- scale(x, centre, spread)
y <- as.integer(iris$Species) - 1L

# Each returns the test loss and accuracy of the same network, from the same
# initial weights, trained for `epochs` epochs with `optimizer`.
train_keras3 <- function(optimizer, epochs) {
  set_random_seed(42)
  model <- keras_model_sequential(input_shape = 4) |>
    layer_dense(32, activation = "relu") |>
    layer_dense(32, activation = "relu") |>
    layer_dense(3, activation = "softmax")
  model |> compile(
    optimizer = optimizer,
    loss = "sparse_categorical_crossentropy",
    metrics = "accuracy"
  )
  model |> fit(
    x[-test_rows, ], y[-test_rows],
    epochs = epochs, batch_size = 16, verbose = 2,
    validation_data = list(x[test_rows, ], y[test_rows])
  )
  unlist(evaluate(model, x[test_rows, ], y[test_rows], verbose = 0))[c("loss", "accuracy")]
}

train_reticulate <- function(optimizer, epochs) {
  keras$utils$set_random_seed(42L)
  model <- keras$Sequential(list(
    keras$Input(shape = list(4L)),
    keras$layers$Dense(32L, activation = "relu"),
    keras$layers$Dense(32L, activation = "relu"),
    keras$layers$Dense(3L, activation = "softmax")
  ))
  model$compile(
    optimizer = optimizer,
    loss = "sparse_categorical_crossentropy",
    metrics = list("accuracy")
  )
  model$fit(
    x[-test_rows, ], array(y[-test_rows]),
    epochs = as.integer(epochs), batch_size = 16L, verbose = 2L,
    validation_data = list(x[test_rows, ], array(y[test_rows]))
  )
  unlist(model$evaluate(x[test_rows, ], array(y[test_rows]), verbose = 0L, return_dict = TRUE))[c("loss", "accuracy")]
}

train <- if (with_keras3) train_keras3 else train_reticulate
adamw_optimizer <- if (with_keras3) optimizer_adam_w else keras$optimizers$AdamW
epochs <- 60

# AdamW settings, and Lion's from them: learning rate / 3, weight decay x 3.
adamw <- list(learning_rate = 3e-3, weight_decay = 0.01)
lion <- lion_hparams_from_adamw(adamw$learning_rate, adamw$weight_decay)

cat(sprintf("== Lion (learning_rate = %g, weight_decay = %g) ==\n", lion$learning_rate, lion$weight_decay))
lion_score <- train(do.call(optimizer_lion, lion), epochs)
cat(sprintf("== AdamW (learning_rate = %g, weight_decay = %g) ==\n", adamw$learning_rate, adamw$weight_decay))
adamw_score <- train(do.call(adamw_optimizer, adamw), epochs)

cat("\nHeld-out loss and accuracy on", length(test_rows), "iris flowers after", epochs, "epochs:\n")
print(round(rbind(Lion = lion_score, AdamW = adamw_score), 3))
