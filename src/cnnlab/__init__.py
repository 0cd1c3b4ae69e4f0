"""cnnlab: train CNN image classifiers from scratch, compare training choices, teach optimizers."""

__version__ = "0.1.0"
