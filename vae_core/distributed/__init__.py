"""The distributed layer: Ray Train for training, Ray Data for batch jobs. The only place importing ray.

Importing it changes nothing: a local cluster's token auth is set up when vaeflow starts one
(`cluster.start_local_ray`), and the private Ray APIs it relies on are gathered in `ray_internals`.
"""
