"""Ray Tune search over the reduced learning-rate scale and warmup (``gsv-ray tune``)."""
