"""Training engine: the epoch loop shared by the baseline and gradual-unfreezing trainers."""
