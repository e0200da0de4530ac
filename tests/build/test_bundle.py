"""What goes into the executable and what its runtime hook does, checked without freezing.

The runtime hook and the `certifi` stand-in run in a separate interpreter with a fake
sys._MEIPASS, as the frozen executable would run them, so this test process's `ssl` module is
never patched.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import botocore
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_botocore_data():
    # By path: build/ is not a package (and `build` is also a PyPI name).
    path = REPO_ROOT / "build" / "pyinstaller" / "botocore_data.py"
    spec = importlib.util.spec_from_file_location("kelpie_botocore_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_botocore_data = _load_botocore_data()
SERVICES, botocore_data_kept = _botocore_data.SERVICES, _botocore_data.botocore_data_kept
HOOK = REPO_ROOT / "build" / "pyinstaller" / "rthook_kelpie.py"
SHIM = REPO_ROOT / "build" / "pyinstaller" / "shim"
BUILD_PYTHON = REPO_ROOT / "build" / "work" / "venv" / "bin" / "python"
FROZEN = REPO_ROOT / "build" / "work" / "pyinstaller" / "dist" / "kelpie"

PROBE = """
import json, os, sys
sys._MEIPASS = sys.argv[1]
exec(compile(open(sys.argv[2]).read(), sys.argv[2], "exec"))
ssl_loaded_by_hook = "ssl" in sys.modules
import ssl
import certifi
print(json.dumps({
    "ssl_loaded_by_hook": ssl_loaded_by_hook,
    "stats": ssl.create_default_context().cert_store_stats(),
    "pyi": sorted(name for name in os.environ if name.startswith("_PYI_")),
    "ld_library_path": os.environ.get("LD_LIBRARY_PATH"),
    "where": certifi.where(),
}))
"""


@pytest.fixture
def meipass(tmp_path) -> Path:
    """An unpack directory holding what the spec puts there: botocore/cacert.pem."""
    (tmp_path / "botocore").mkdir()
    shutil.copy(Path(botocore.__file__).parent / "cacert.pem", tmp_path / "botocore")
    return tmp_path


def run_probe(meipass: Path, **env: str) -> dict:
    base = {k: v for k, v in os.environ.items()
            if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR", "LD_LIBRARY_PATH")}
    base["PYTHONPATH"] = str(SHIM)
    result = subprocess.run([sys.executable, "-c", PROBE, str(meipass), str(HOOK)],
                            env={**base, **env}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_bundled_cas_are_the_default(meipass):
    probe = run_probe(meipass)
    assert not probe["ssl_loaded_by_hook"]  # patched when first imported, not before
    assert probe["stats"]["x509_ca"] > 100
    assert probe["where"] == str(meipass / "botocore" / "cacert.pem")


def test_ssl_cert_file_overrides_the_bundle(meipass, tmp_path):
    from tests.build.tls import make_test_pki

    ca, _, _ = make_test_pki(tmp_path)
    probe = run_probe(meipass, SSL_CERT_FILE=str(ca))
    assert probe["stats"]["x509_ca"] == 1
    assert probe["where"] == str(ca)


def test_bootloader_variables_do_not_reach_the_command(meipass):
    probe = run_probe(meipass, _PYI_APPLICATION_HOME_DIR=str(meipass), _PYI_PARENT_PROCESS_LEVEL="1",
                      LD_LIBRARY_PATH=str(meipass), LD_LIBRARY_PATH_ORIG="/opt/user/lib")
    assert probe["pyi"] == []
    assert probe["ld_library_path"] == "/opt/user/lib"


@pytest.mark.parametrize(("dest", "kept"), [
    ("botocore/data/endpoints.json", True),
    ("botocore/data/partitions.json", True),
    ("botocore/data/_retry.json", True),
    ("botocore/data/s3/2006-03-01/service-2.json.gz", True),
    ("botocore/data/s3/2006-03-01/service-2.sdk-extras.json", True),
    ("botocore/data/s3/2006-03-01/endpoint-rule-set-1.json.gz", True),
    ("botocore/data/s3/2006-03-01/examples-1.json", False),
    ("botocore/data/sts/2011-06-15/service-2.json.gz", True),
    ("botocore/data/ec2/2016-11-15/service-2.json.gz", False),
    ("botocore/cacert.pem", True),
    ("urllib3/py.typed", True),
])
def test_botocore_data_allow_list(dest, kept):
    assert botocore_data_kept(dest) is kept


def test_every_kept_service_exists_in_botocore():
    data = Path(botocore.__file__).parent / "data"
    assert all((data / service).is_dir() for service in SERVICES)


@pytest.mark.skipif(not (FROZEN.exists() and BUILD_PYTHON.exists()),
                    reason="no local PyInstaller build in build/work (run build/build_agent.sh)")
def test_frozen_archive_holds_only_what_the_agent_needs():
    """The PyInstaller stage's output, before staticx: the CA bundle and S3's model are in,
    other services' models and the API are out."""
    listing = subprocess.run(
        [str(BUILD_PYTHON), "-c",
         "import json, sys\n"
         "from PyInstaller.archive.readers import CArchiveReader\n"
         "print(json.dumps(sorted(CArchiveReader(sys.argv[1]).toc)))", str(FROZEN)],
        capture_output=True, text=True, timeout=60, check=True)
    names = json.loads(listing.stdout)
    assert "botocore/cacert.pem" in names
    assert "botocore/data/s3/2006-03-01/service-2.json.gz" in names
    services = {name.split("/")[2] for name in names
                if name.startswith("botocore/data/") and name.count("/") > 2}
    assert services <= SERVICES
    assert not [name for name in names if name.startswith(("api/", "sanic", "peewee"))]


@pytest.mark.skipif(not BUILD_PYTHON.exists(), reason="no build venv (run build/build_agent.sh)")
def test_staticx_stage_carries_glibc_and_libgcc(kelpie_binary, tmp_path):
    """The outer stage holds the C library and loader, and libgcc_s, which glibc only
    dlopen()s when a thread exits (without it the agent aborts at shutdown in images that lack
    it, as the empty-root job test once showed)."""
    subprocess.run([str(BUILD_PYTHON.parent / "sx-extract"), str(kelpie_binary), str(tmp_path)],
                   capture_output=True, timeout=120, check=True)
    names = set(os.listdir(tmp_path))
    assert {"libc.so.6", "ld-linux-x86-64.so.2", "libgcc_s.so.1"} <= names
