"""A user project: a recurrent sequence classifier for MNIST-1D, trained by Wide Valley."""
