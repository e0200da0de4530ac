"""PyInstaller runtime hook for `kelpie`: runs before agent/__main__.py in the frozen executable.

Two things differ between the frozen agent and `python -m agent`, and both are put right here so
the agent's own code does not need to know it is frozen.

1. Trust store. The executable carries its own CA bundle (botocore/cacert.pem) because the host
   may have none (an empty or distroless image) or keep it where our bundled OpenSSL does not
   look (Alpine, RHEL). ssl.SSLContext.load_default_certs() - used by urllib3, http.client and
   ssl.create_default_context() when no CA file is given - loads that bundle, unless the user
   set SSL_CERT_FILE or SSL_CERT_DIR, in which case OpenSSL's own lookup (which reads them) runs.
   botocore gets the same rule through the `certifi` stand-in in build/pyinstaller/shim.

2. Environment. The onefile bootloader leaves private _PYI_* variables (its unpack directory,
   its archive, its process level) in the environment. The user's command inherits our
   environment; if that command is itself a PyInstaller program - or another kelpie - its
   bootloader would take them as its own and run from our unpack directory. They are dropped
   here: this process has already used them, and nothing in it reads them again.
"""

import os
import sys


def _drop_bootloader_environment() -> None:
    for name in [name for name in os.environ if name.startswith("_PYI_")]:
        del os.environ[name]
    # Older bootloaders also prepended their directory to LD_LIBRARY_PATH and kept the user's
    # value aside; the children get the user's value back.
    if "LD_LIBRARY_PATH_ORIG" in os.environ:
        os.environ["LD_LIBRARY_PATH"] = os.environ.pop("LD_LIBRARY_PATH_ORIG")


def _patch_ssl(ssl) -> None:
    bundle = os.path.join(sys._MEIPASS, "botocore", "cacert.pem")
    system_lookup = ssl.SSLContext.load_default_certs

    def load_default_certs(self, purpose=ssl.Purpose.SERVER_AUTH):
        if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
            return system_lookup(self, purpose)
        if purpose == ssl.Purpose.SERVER_AUTH:
            self.load_verify_locations(cafile=bundle)
        return None

    ssl.SSLContext.load_default_certs = load_default_certs


class _PatchingLoader:
    """Runs the real loader of `ssl`, then patches the module before anyone can use it."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _patch_ssl(module)

    def __getattr__(self, name):  # get_code, get_source, ... for tracebacks and inspect
        return getattr(self._loader, name)


class _SslImportHook:
    """Patches `ssl` when it is first imported instead of importing it here: loading OpenSSL
    costs ~40 ms, which `kelpie --version` and `--help` need not pay."""

    def find_spec(self, name, path=None, target=None):
        if name != "ssl":
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


def _use_bundled_ca() -> None:
    if "ssl" in sys.modules:
        _patch_ssl(sys.modules["ssl"])
    else:
        sys.meta_path.insert(0, _SslImportHook())


_drop_bootloader_environment()
_use_bundled_ca()
