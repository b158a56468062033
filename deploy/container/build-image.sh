#!/usr/bin/env bash
# Build the streaminfer image with podman, offline: the project's wheel and its
# dependencies' wheels go to build/wheelhouse (pip, on the host), the base image is made
# if it is missing (base-image.sh), and `podman build --network=none` installs from the
# wheelhouse mounted at /wheels.
#   build-image.sh [PYTHON] [IMAGE]      BASE=python:3.11-slim to build on another base
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${1:-python3}
VERSION=$("$PYTHON" -c "import tomllib; print(tomllib.load(open('$ROOT/pyproject.toml', 'rb'))['project']['version'])")
IMAGE=${2:-localhost/streaminfer:$VERSION}
BASE=${BASE:-localhost/streaminfer-base:bookworm}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/deploy/container/containers.conf}
WHEELS=$ROOT/build/wheelhouse

mkdir -p "$WHEELS"
rm -f "$WHEELS"/streaminfer-*.whl
"$PYTHON" -m build --wheel --outdir "$WHEELS" "$ROOT" > "$ROOT/build/wheel.log"
"$PYTHON" -m pip wheel --quiet --wheel-dir "$WHEELS" --find-links "$WHEELS" "$WHEELS"/streaminfer-*.whl
# What the wheels hold (file hashes, not build times): the install layer's cache key.
DIGEST=$("$PYTHON" - "$WHEELS" <<'PY'
import hashlib, sys, zipfile
from pathlib import Path
digest = hashlib.sha256()
for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    with zipfile.ZipFile(wheel) as archive:
        record = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
        digest.update(wheel.name.encode() + archive.read(record))
print(digest.hexdigest())
PY
)
if [[ $BASE == localhost/streaminfer-base:* ]]; then
  "$ROOT/deploy/container/base-image.sh" "$BASE"
fi
podman build --network=none --volume "$WHEELS:/wheels:ro" --build-arg "BASE=$BASE" \
  --build-arg "WHEELS_DIGEST=$DIGEST" \
  --tag "$IMAGE" --file "$ROOT/Containerfile" "$ROOT/deploy/container"
