"""The distributed layer: Ray Train for training, Ray Data for batch jobs. The only place importing ray.

Importing this package turns on token authentication for any local Ray cluster this process starts
(`use_token_auth`), before its modules import ray: Ray reads RAY_AUTH_MODE when it is imported.
"""

from __future__ import annotations

import os
import secrets

AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def use_token_auth() -> None:
    """Token auth for a local cluster: RAY_AUTH_MODE=token and a fresh random RAY_AUTH_TOKEN.

    Why: Ray 2.60's gRPC servers (GCS, raylet, workers) bind 0.0.0.0 even with a loopback node IP,
    and it has no loopback-only option, so with auth disabled anyone who can reach this machine can
    run code on the cluster. With a token, a caller without it is refused. Child processes (Ray's
    own, drivers started with RAY_ADDRESS) inherit the variables and so the token.

    Left alone: a cluster named by RAY_ADDRESS (its token is the user's, e.g. ~/.ray/auth_token), a
    RAY_AUTH_MODE the user set (including "disabled"), a RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH the
    user set. The token is never printed or logged.
    """
    if os.environ.get("RAY_ADDRESS") or "RAY_AUTH_MODE" in os.environ:
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    if "RAY_AUTH_TOKEN" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ:
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


use_token_auth()
