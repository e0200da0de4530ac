"""S3's rules for bucket names, checked at submission: a job naming a bucket S3 would refuse
could never sync, and would only fail on a node hours later, attempt after attempt."""

import ipaddress
import re

MIN_LENGTH = 3
MAX_LENGTH = 63
# Lowercase letters, digits, dots and hyphens; a letter or digit at each end.
PATTERN = r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$"
# Reserved by AWS for its own features (access point aliases, directory buckets, ...).
RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def problem(name: str) -> str | None:
    """Why S3 would refuse this bucket name, or None when it is valid."""
    if not MIN_LENGTH <= len(name) <= MAX_LENGTH:
        return f"must be {MIN_LENGTH} to {MAX_LENGTH} characters (S3 bucket naming rules)"
    if not re.match(PATTERN, name):
        return ("may hold only lowercase letters, digits, dots and hyphens, and must begin and "
                "end with a letter or digit (S3 bucket naming rules)")
    if ".." in name:
        return "must not contain two dots in a row (S3 bucket naming rules)"
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        pass
    else:
        return "must not look like an IP address (S3 bucket naming rules)"
    if name.startswith(RESERVED_PREFIXES) or name.endswith(RESERVED_SUFFIXES):
        return "uses a prefix or suffix S3 reserves (S3 bucket naming rules)"
    return None
