"""Who this node is, settled before the first poll.

With the Salad instance token as its only credential, the node's machine id and container group
are the ones the token names: the API checks them against the token, so a different
SALAD_MACHINE_ID / SALAD_CONTAINER_GROUP_ID could only ever earn 403s. Such a contradiction,
or no usable credential at all, stops the agent at start-up with one line instead.
"""

import dataclasses

from agent import retry
from agent.client import jwt_claims
from agent.config import Config
from agent.imds import Imds, ImdsUnavailable

MACHINE_CLAIM = "salad_machine_id"
GROUP_CLAIM = "salad_container_group_id"


class IdentityError(Exception):
    """The one line the agent exits with."""


def resolve(config: Config, imds: Imds) -> Config:
    """The config with the identity the agent will use; raises IdentityError."""
    if config.kelpie_api_key or config.salad_api_key:
        return config  # a key names its tenant; the node's ids are the configured ones
    token, error = None, None
    for _ in retry.Attempts(config.max_retries):  # it may still be starting: a few tries
        try:
            token = imds.token()
            break
        except ImdsUnavailable as problem:
            error = problem
    if token is None:
        raise IdentityError(
            "no usable credentials: no KELPIE_API_KEY, no SALAD_API_KEY with SALAD_PROJECT, "
            f"and no instance-metadata token ({error})") from None
    claims = jwt_claims(token)
    changes = {}
    for field, claim, setting in (("machine_id", MACHINE_CLAIM, "SALAD_MACHINE_ID"),
                                  ("container_group_id", GROUP_CLAIM,
                                   "SALAD_CONTAINER_GROUP_ID")):
        claimed = claims.get(claim)
        if not isinstance(claimed, str) or not claimed:
            continue  # the token does not say: the configured value stands
        explicit = config.environ.get(setting)
        if explicit and explicit != claimed:
            raise IdentityError(f"{setting}={explicit!r} contradicts the instance token, "
                                f"which names {claim}={claimed!r}")
        changes[field] = claimed
    return dataclasses.replace(config, **changes) if changes else config
