"""Statistics and hypothesis tests of the seam experiment (bottom layer: numpy, scipy, models, data)."""
