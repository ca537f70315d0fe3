"""A user project: a regression model with an MSE loss on data it makes itself."""
