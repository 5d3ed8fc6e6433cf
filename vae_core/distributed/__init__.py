"""The distributed layer: Ray Train for training, Ray Data for batch jobs. The only place importing ray."""
