"""Training a strong model: what a run reads (inputs), a loader batch made into a step's inputs
(batch), the losses, the optimizer and schedule, the weight average, the recipes, the run's
directory and its resumption."""
