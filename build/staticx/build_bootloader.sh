#!/usr/bin/env bash
# Builds staticx's bootloader from its pinned source with our one change (tmpdir.patch) and
# prints the path of the result. build/build_agent.sh installs it in place of the bootloader
# that ships in the staticx wheel.
#
# Why: the bootloader unpacks the bundle into $TMPDIR, else /tmp, and fails when that is missing.
# An image built FROM scratch has no /tmp, so the documented `ADD ... /kelpie` + `CMD ["/kelpie"]`
# died at once: "Failed to create temporary directory in /tmp". staticx has no build-time option
# for this (only $TMPDIR at run time, which we cannot ask every user's image to set), so with no
# TMPDIR the patched bootloader creates /tmp (mode 1777, as every distribution has it) before
# using it. PyInstaller's stage, unpacked next, then finds /tmp as well.
#
# The source is staticx's sdist at the version requirements/build.txt pins, checked against the
# sha256 below; it is compiled with musl-gcc into a static executable, as staticx's own wheels
# are. Output and cache: build/work/staticx/.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${1:?usage: build_bootloader.sh PYTHON (with pip)}
VERSION=$(sed -n 's/^staticx==//p' requirements/build.txt)
SDIST_SHA256=bf7d5d35d5777a72b2d4c408eb25f9c61049b28b94a388a012122dba00fffa93  # 0.14.2
WORK=$PWD/build/work/staticx
OUT=$WORK/bootloader

[ "$VERSION" = "0.14.2" ] || {
  echo "staticx: requirements/build.txt pins $VERSION; update SDIST_SHA256 and check that" \
       "tmpdir.patch still applies" >&2; exit 1; }

# Rebuilt only when the patch, this script or the version changed.
stamp=$(cat build/staticx/tmpdir.patch build/staticx/build_bootloader.sh | sha256sum | cut -c1-64)
if [ -x "$OUT" ] && [ "$(cat "$OUT.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$OUT"; exit 0
fi

mkdir -p "$WORK"
sdist=$WORK/staticx-$VERSION.tar.gz
if ! echo "$SDIST_SHA256  $sdist" | sha256sum --status -c 2>/dev/null; then
  rm -f "$sdist"
  "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
    "staticx==$VERSION" -d "$WORK" >&2
  echo "$SDIST_SHA256  $sdist" | sha256sum --quiet -c >&2
fi

src=$WORK/src
rm -rf "$src" && mkdir -p "$src"
tar -xzf "$sdist" -C "$src" --strip-components=1
patch -s -d "$src" -p1 < build/staticx/tmpdir.patch

# The flags of staticx's SConstruct for its release bootloader; XZ_DEC_X86 is the BCJ filter
# staticx picks for x86-64.
(cd "$src" && musl-gcc -std=gnu99 -Wall -Werror -Wmissing-prototypes -Wstrict-prototypes -Os \
   -static -DNDEBUG -DXZ_DEC_X86=1 "-DSTATICX_VERSION=\"$VERSION+kelpie\"" \
   '-DCOMPILER_PATH="musl-gcc"' -Ilibtar -Ilibtar/compat -Ilibxz \
   bootloader/*.c libtar/*.c libtar/compat/*.c libxz/*.c -o "$OUT.tmp")
mv -f "$OUT.tmp" "$OUT"
echo "$stamp" > "$OUT.stamp"
echo "$OUT"
