"""Training and using a model in one process: the loop and KL schedule, evaluation (ELBO,
importance-sampled log-likelihood), inference and safetensors + JSON checkpoints."""
