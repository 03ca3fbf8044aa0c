"""The training container's entrypoint (``python -m training_jobs.train``); the logic is pricepipe.training."""
