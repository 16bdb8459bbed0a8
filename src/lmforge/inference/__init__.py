"""Fast batched inference: predictors and forward passes."""
