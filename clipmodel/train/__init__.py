"""The CLIP trainer behind `wit train`: run config, optimisation step, logging, checkpoints, distributed setup."""
