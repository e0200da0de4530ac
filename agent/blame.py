"""Whose fault a failed attempt is: the job's (charged to its max_failures) or this node's
(storage unreachable or refusing our credentials, disk full, work directory unusable: the job
goes back to pending uncharged, and the node counts it toward MAX_JOB_FAILURES).

One rule, used both by the check before the first claim and when a transfer fails, so a node
that would be refused at start-up is never allowed to charge a job later.
"""

import errno
import os
import uuid
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError
from urllib3.exceptions import HTTPError as Urllib3Error

from agent.s3fast import S3RequestError

# S3 error codes that mean "your credentials", never "this bucket or key".
CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                    "InvalidToken", "TokenRefreshRequired", "AuthorizationHeaderMalformed",
                    "InvalidSecurity", "MissingSecurityHeader"}
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
WORK_DIR_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}


def node_fault(error: BaseException | None) -> str | None:
    """A reason if `error` (or what caused it) is this node's problem, else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        reason = _own_fault(error)
        if reason:
            return reason
        error = error.__cause__ or error.__context__
    return None


def _own_fault(error: BaseException) -> str | None:
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code")
        if code in CREDENTIAL_CODES:
            return f"node failure: storage refused our credentials ({code})"
        return None
    if isinstance(error, S3RequestError):
        # The lean client has only the status: 403 on our own signed request is the key.
        return (f"node failure: storage refused our credentials ({error})"
                if error.status == 403 else None)
    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return f"node failure: no usable storage credentials ({error})"
    if isinstance(error, (BotoConnectionError, Urllib3Error)):
        return f"node failure: storage unreachable ({error})"
    if isinstance(error, BotoCoreError):
        return None
    if isinstance(error, OSError) and error.errno in DISK_ERRNOS:
        return f"node failure: disk full ({error})"
    if isinstance(error, OSError) and error.errno in WORK_DIR_ERRNOS:
        return f"node failure: work directory unusable ({error})"
    return None


def storage_problem(storage) -> str | None:
    """Whether the storage answers and accepts our credentials: a list of buckets (through
    agent.storage.Storage, which retries it). A refusal of that list alone (AccessDenied)
    still proves the key was recognised."""
    try:
        storage.list_buckets()
    except Exception as error:  # noqa: BLE001 - judged by node_fault; anything else is fine
        return node_fault(error)
    return None


def work_dir_problem(work_dir: Path) -> str | None:
    """Whether the work directory exists (or can be made) and takes a small file."""
    probe = work_dir / f".kelpie-probe-{uuid.uuid4().hex}"
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as file:
            file.write(b"x" * 4096)
            file.flush()
            os.fsync(file.fileno())
    except OSError as error:
        return node_fault(error) or f"node failure: work directory unusable ({error})"
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return None
