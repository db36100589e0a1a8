#!/usr/bin/env bash
# Build the worker's container image with whatever engine this machine has, and check it.
#
#   deploy/image.sh build [--variant gpu|cpu] [--tag T] [--base auto|registry|local]
#                         [--ca FILE] [--pip-conf FILE]
#   deploy/image.sh smoke [--tag T]       the smoke checks (tests/test_image.py) on a built image
#   deploy/image.sh engine ARGS...        the engine with this script's configuration (podman run ...)
#   deploy/image.sh size [--tag T]        the image's size and what fills its virtual environment
#   deploy/image.sh clean                 remove everything this script stored (one directory)
#
# Engines, first that works: docker (a daemon that answers), podman, buildah (build only; the
# smoke checks need podman or docker). podman and buildah run daemonless: runc, chroot isolation,
# host networking, overlay storage, every layer, cache and base under one directory
# (GRAD_IMAGE_WORKDIR, default /var/tmp/grad-image), reused from run to run on purpose (the
# build cache), removed by `clean`.
#
# Base images (--base): `registry` pulls the Dockerfile's defaults (NVIDIA's CUDA image, Ubuntu
# 24.04); `local` makes Debian bookworm with mmdebstrap from this machine's apt sources and
# builds FROM it (the air-gapped path: no container registry needed, only a Debian mirror);
# `auto` (the default) takes `local` when the registry cannot be reached.
#
# Behind a TLS-intercepting proxy: --ca FILE (the proxy's CA bundle for pip) and --pip-conf FILE
# (an index mirror, credentials) go in as build secrets, mounted only while pip runs, never in a
# layer. Environment: GRAD_IMAGE_WORKDIR, GRAD_IMAGE_ENGINE (force one), GRAD_IMAGE_CA,
# GRAD_IMAGE_PIP_CONF (defaults of --ca and --pip-conf).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORKDIR=${GRAD_IMAGE_WORKDIR:-/var/tmp/grad-image}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -n 1)
VARIANT=gpu
TAG=""
BASE=auto
CA=${GRAD_IMAGE_CA:-}
PIP_CONF=${GRAD_IMAGE_PIP_CONF:-}
LOCAL_BASE=localhost/grad-base:debian-bookworm
REGISTRY_PROBE=https://registry-1.docker.io/v2/

log() { echo "[image] $*" >&2; }
die() {
  log "$*"
  exit 1
}

# ------------------------------------------------------------------------------ the engine
# podman and buildah read their storage and runtime settings from files this script writes
# under WORKDIR, so nothing outside it is touched and `clean` is one rm -rf.
configure_daemonless() {
  mkdir -p "$WORKDIR/storage" "$WORKDIR/run" "$WORKDIR/tmp"
  cat >"$WORKDIR/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$WORKDIR/storage"
runroot = "$WORKDIR/run"
EOF
  # runc: crun fails on hybrid cgroups; cgroupfs and file events need no systemd; root may not
  # raise hard rlimits here, so containers get explicit ones.
  cat >"$WORKDIR/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
image_copy_tmp_dir = "$WORKDIR/tmp"
EOF
  export CONTAINERS_STORAGE_CONF="$WORKDIR/storage.conf"
  export CONTAINERS_CONF="$WORKDIR/containers.conf"
  export BUILDAH_ISOLATION=chroot
  export TMPDIR="$WORKDIR/tmp"
}

pick_engine() {
  if [[ -n "${GRAD_IMAGE_ENGINE:-}" ]]; then
    ENGINE=$GRAD_IMAGE_ENGINE
  elif command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; then
    ENGINE=docker
  elif command -v podman >/dev/null 2>&1; then
    ENGINE=podman
  elif command -v buildah >/dev/null 2>&1; then
    ENGINE=buildah
  else
    die "no container engine: install docker, or podman and buildah (apt-get install -y buildah podman runc)"
  fi
  [[ "$ENGINE" == docker ]] || configure_daemonless
}

# A command that runs containers: buildah cannot, so a buildah-only machine has none.
runner() {
  case "$ENGINE" in
  docker | podman) echo "$ENGINE" ;;
  *) command -v podman >/dev/null 2>&1 && echo podman || die "running an image needs podman or docker" ;;
  esac
}

# ------------------------------------------------------------------------------ base images
registry_reachable() {
  timeout 10 python3 -c "import sys, urllib.request as u
try:
    u.urlopen(sys.argv[1], timeout=8)
except u.HTTPError:
    pass  # 401 from a registry that answers is reachable
" "$REGISTRY_PROBE" >/dev/null 2>&1
}

# Debian bookworm, minbase, from this machine's apt configuration, imported as LOCAL_BASE.
# Remade only when missing (clean removes it). Without the PATH change the imported image has no
# PATH, and the Dockerfile's `ENV PATH=/opt/venv/bin:$PATH` would drop /usr/bin.
make_local_base() {
  local engine
  engine=$(runner)
  if "$engine" image exists "$LOCAL_BASE" 2>/dev/null ||
    { [[ "$engine" == docker ]] && docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; }; then
    log "local base $LOCAL_BASE is there (clean to remake it)"
    return
  fi
  command -v mmdebstrap >/dev/null 2>&1 || die "the local base needs mmdebstrap (apt-get install -y mmdebstrap)"
  log "making $LOCAL_BASE with mmdebstrap (Debian bookworm, minbase)"
  rm -f "$WORKDIR/base.tar"
  mmdebstrap --quiet --variant=minbase --aptopt='Acquire::Check-Valid-Until "false"' \
    bookworm "$WORKDIR/base.tar"
  "$engine" import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$WORKDIR/base.tar" "$LOCAL_BASE" >/dev/null
  rm -f "$WORKDIR/base.tar"
}

# ------------------------------------------------------------------------------ commands
image_id() { "$(runner)" image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

build() {
  local args=() secrets=() start=$SECONDS previous
  previous=$(image_id "$TAG")
  case "$BASE" in
  auto) registry_reachable && BASE=registry || BASE=local ;;
  registry | local) ;;
  *) die "--base is auto, registry or local, not '$BASE'" ;;
  esac
  if [[ "$BASE" == local ]]; then
    make_local_base
    args+=(--build-arg "BASE_GPU=$LOCAL_BASE" --build-arg "BASE_CPU=$LOCAL_BASE")
  fi
  [[ -z "$CA" ]] || { [[ -r "$CA" ]] || die "no CA bundle at $CA"; secrets+=(--secret "id=pip-ca,src=$CA"); }
  [[ -z "$PIP_CONF" ]] || { [[ -r "$PIP_CONF" ]] || die "no pip configuration at $PIP_CONF"; secrets+=(--secret "id=pip-conf,src=$PIP_CONF"); }
  log "building $TAG ($VARIANT, base: $BASE) with $ENGINE"
  case "$ENGINE" in
  docker)
    DOCKER_BUILDKIT=1 docker build -f "$REPO/deploy/Dockerfile" --build-arg "VARIANT=$VARIANT" \
      "${args[@]}" "${secrets[@]}" -t "$TAG" "$REPO"
    ;;
  podman | buildah)
    # --format docker keeps HEALTHCHECK (the OCI format has no such field); the allow-list
    # beside the Dockerfile is named, since buildah reads only a .dockerignore at the root.
    "$ENGINE" build --format docker --network host --layers \
      --ignorefile "$REPO/deploy/Dockerfile.dockerignore" \
      -f "$REPO/deploy/Dockerfile" --build-arg "VARIANT=$VARIANT" \
      "${args[@]}" "${secrets[@]}" -t "$TAG" "$REPO"
    ;;
  esac
  log "built $TAG in $((SECONDS - start)) s"
  # The image the tag named before, now untagged, is removed (its own layers are the project's
  # code, a few MB; the dependencies' layers stay as the build cache). Not a prune: that would
  # take the cache's intermediate images with it.
  if [[ -n "$previous" && "$previous" != "$(image_id "$TAG")" ]]; then
    "$(runner)" rmi "$previous" >/dev/null 2>&1 || true
  fi
  size
}

size() {
  local engine
  engine=$(runner)
  log "size of $TAG: $("$engine" image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.2f GB", $1 / 1e9}')"
  # What fills the virtual environment, largest first (read from the image, not the build).
  "$engine" run --rm --network host --no-healthcheck --entrypoint sh "$TAG" -c \
    'du -sm /opt/venv/lib/python3*/site-packages/* 2>/dev/null | sort -rn | head -n 15' >&2
}

smoke() {
  local engine
  engine=$(runner)
  "$engine" image inspect "$TAG" >/dev/null 2>&1 || die "no image $TAG: build it first"
  [[ -x "$REPO/.venv/bin/python" ]] || die "the smoke checks run from the development environment (.venv)"
  log "smoke checks of $TAG with $engine"
  GRAD_TEST_IMAGE=$TAG "$REPO/.venv/bin/python" -m pytest -q -p no:cacheprovider \
    "$REPO/tests/test_image.py"
}

usage() { sed -n '2,24s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

main() {
  local command=${1:-}
  [[ $# -eq 0 ]] || shift
  case "$command" in
  engine)
    pick_engine
    exec "$(runner)" "$@"
    ;;
  clean)
    log "removing $WORKDIR"
    # Layers an engine left mounted (an interrupted build) would keep rm from finishing.
    awk -v dir="$WORKDIR/" 'index($2, dir) == 1 {print $2}' /proc/mounts | sort -r |
      xargs -r -n 1 umount -l 2>/dev/null || true
    chmod -R u+w "$WORKDIR" 2>/dev/null || true
    rm -rf "$WORKDIR"
    return
    ;;
  build | smoke | size) ;;
  -h | --help | help | "")
    usage
    return
    ;;
  *) die "unknown command '$command' (build, smoke, engine, size, clean)" ;;
  esac
  while [[ $# -gt 0 ]]; do
    case "$1" in
    --variant) VARIANT=$2 ;;
    --tag) TAG=$2 ;;
    --base) BASE=$2 ;;
    --ca) CA=$2 ;;
    --pip-conf) PIP_CONF=$2 ;;
    *) die "unknown option '$1'" ;;
    esac
    shift 2
  done
  [[ "$VARIANT" == gpu || "$VARIANT" == cpu ]] || die "--variant is gpu or cpu, not '$VARIANT'"
  TAG=${TAG:-localhost/grad-inspect:$VERSION-$VARIANT}
  pick_engine
  "$command"
}

# One line: bash has read all of it before main runs, so editing this file mid-build is safe.
main "$@"; exit $?
