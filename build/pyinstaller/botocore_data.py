"""Which files of botocore/data go into the `kelpie` executable.

botocore describes every AWS service in JSON under botocore/data; the agent talks to S3 only, and
the credential chain may create STS (assume-role, web identity), SSO / SSO-OIDC (SSO profiles) and
sign-in (console login profiles) clients. Everything else is left out of the executable; a client
for any other service would fail with botocore's UnknownServiceError.
"""

from pathlib import PurePosixPath

# Services whose models are shipped.
SERVICES = frozenset({"s3", "sts", "sso", "sso-oidc", "signin"})

# Within a service's versioned directory: the model, its SDK additions, the endpoint rules and
# the paginators / waiters botocore wires into every client. examples-1.json is documentation.
SERVICE_FILES = ("service-2.", "endpoint-rule-set-1.", "paginators-1.", "waiters-2.")


def botocore_data_kept(dest: str) -> bool:
    """True when the bundle entry `dest` (a path inside the executable) should be kept."""
    parts = PurePosixPath(dest.replace("\\", "/")).parts
    if parts[:2] != ("botocore", "data"):
        return True
    if len(parts) == 3:
        # Top-level files: endpoints.json, partitions.json, _retry.json, the SDK defaults.
        return True
    if parts[2] not in SERVICES:
        return False
    return parts[-1].startswith(SERVICE_FILES)
