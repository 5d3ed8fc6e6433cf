"""Running models as a service: the model registry and promotion gate, drift records and the
nightly pipeline's layout of outputs."""
