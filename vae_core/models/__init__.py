"""Models: the latent posterior, observation likelihoods, encoder/decoder backbones, the model and
the family registry (ae, dae, vae). Pure PyTorch; knows nothing of storage, Ray or Prefect."""
