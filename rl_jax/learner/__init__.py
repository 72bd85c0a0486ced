"""The learner: what a training run does around the train step (its metrics log, ...)."""
