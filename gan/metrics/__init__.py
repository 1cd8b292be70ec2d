"""Image-set metrics for generated images; `gan.metrics.swd` computes the sliced Wasserstein distance."""
