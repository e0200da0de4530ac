"""`certifi` as seen by botocore inside the `kelpie` executable (not the PyPI package).

botocore picks its default CA bundle with `from certifi import where`. This stand-in answers
SSL_CERT_FILE when the user set one, so a site's own CA (a TLS-inspecting proxy, a private S3
endpoint) reaches botocore the same way it reaches OpenSSL, and the bundle packed into the
executable otherwise. AWS_CA_BUNDLE is still read by botocore itself and wins over both.
"""

import os
import sys


def where() -> str:
    override = os.environ.get("SSL_CERT_FILE")
    if override:
        return override
    base = getattr(sys, "_MEIPASS", None)
    if base is None:
        # Imported outside the frozen executable: fall back to botocore's own copy.
        import botocore

        base = os.path.dirname(os.path.dirname(botocore.__file__))
    return os.path.join(base, "botocore", "cacert.pem")


def contents() -> str:
    with open(where(), encoding="ascii") as bundle:
        return bundle.read()
