#!/usr/bin/env bash
# seed_base_image.sh - make the Docker image `python:3.11-slim-bookworm` exist
# locally, built from Debian's own packages (no registry pull needed).
#
# Usage:
#   scripts/seed_base_image.sh              # build once; later runs are a no-op
#   RUNNER_RESEED=1 scripts/seed_base_image.sh   # force a rebuild
#
# Environment:
#   RUNNER_RESEED=1         rebuild even if a seeded image is already present
#   RUNNER_DEBIAN_MIRROR    Debian mirror for debootstrap and the image's apt
#                           sources (default: http://deb.debian.org/debian)
#   TMPDIR                  where the temporary rootfs is built (default:
#                           /var/tmp; must allow exec and device nodes)
#
# Needs: root (debootstrap), a running Docker daemon, and network access to the
# Debian mirror. debootstrap is installed with apt-get if missing.
#
# What it builds: debootstrap --variant=minbase bookworm with python3,
# python3-pip, python3-venv and ca-certificates; `python`/`pip` on PATH via
# /usr/local/bin symlinks (like the official image); EXTERNALLY-MANAGED removed
# so `pip install` works system-wide; apt sources for bookworm, bookworm-updates
# and bookworm-security so `apt-get install` works inside containers. It is
# imported with `docker import` and labelled org.runner.seeded=debootstrap; that
# label is what makes later runs exit immediately. Takes a few minutes.
set -euo pipefail

IMAGE="python:3.11-slim-bookworm"
SUITE="bookworm"
MIRROR="${RUNNER_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="http://deb.debian.org/debian-security"
INCLUDE="python3,python3-pip,python3-venv,ca-certificates"

log() { printf 'seed_base_image: %s\n' "$*"; }
die() { printf 'seed_base_image: ERROR: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 || die "docker CLI not found on PATH"
docker info >/dev/null 2>&1 || die "Docker daemon is not answering ('docker info' failed); start dockerd first"

# --- fast path: already seeded -------------------------------------------------
if [[ "${RUNNER_RESEED:-0}" != "1" ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    seeded="$(docker image inspect -f '{{ index .Config.Labels "org.runner.seeded" }}' "$IMAGE" 2>/dev/null || true)"
    if [[ -n "$seeded" && "$seeded" != "<no value>" ]]; then
        log "$IMAGE already present (org.runner.seeded=$seeded); nothing to do"
        exit 0
    fi
    log "$IMAGE exists but has no org.runner.seeded label; rebuilding from Debian packages"
fi

[[ "$(id -u)" -eq 0 ]] || die "must run as root (debootstrap needs it)"

start=$SECONDS

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    apt-get update -q && apt-get install -y -q debootstrap
fi

# --- temporary rootfs, always removed --------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/runner-seed.XXXXXX")"
ROOTFS="$WORK/rootfs"

# debootstrap mounts proc/sys (and may bind-mount /dev) inside the target; make
# sure nothing is mounted under $WORK before deleting, so rm can never reach
# into host filesystems.
unmount_all() {
    local m
    awk -v w="$WORK" 'index($2, w "/") == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
}
cleanup() {
    local rc=$?
    if [[ -n "${WORK:-}" && -d "$WORK" ]]; then
        unmount_all
        rm -rf --one-file-system "$WORK" || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "debootstrap $SUITE (minbase + $INCLUDE) from $MIRROR into $ROOTFS"
if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    tail -n 30 "$WORK/debootstrap.log" >&2 || true
    [[ -f "$ROOTFS/debootstrap/debootstrap.log" ]] && tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2
    die "debootstrap failed (see output above)"
fi
log "debootstrap done ($((SECONDS - start))s); configuring rootfs"

[[ -x "$ROOTFS/usr/bin/python3" ]] || die "python3 missing from rootfs"
[[ -x "$ROOTFS/usr/bin/pip3" ]] || die "pip3 missing from rootfs"

# python / pip on PATH the way the official image has them (in /usr/local/bin).
mkdir -p "$ROOTFS/usr/local/bin"
ln -sf /usr/bin/python3 "$ROOTFS/usr/local/bin/python"
ln -sf /usr/bin/python3 "$ROOTFS/usr/local/bin/python3"
ln -sf /usr/bin/pip3 "$ROOTFS/usr/local/bin/pip"
ln -sf /usr/bin/pip3 "$ROOTFS/usr/local/bin/pip3"

# Let pip install system-wide (PEP 668 marker off), as in the official image.
rm -f "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED

# apt sources usable from inside containers.
cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
mkdir -p "$ROOTFS/etc/apt/sources.list.d"

# Like Debian's docker images: don't start services from maintainer scripts.
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod 0755 "$ROOTFS/usr/sbin/policy-rc.d"

unmount_all
# Shrink: package lists/caches, logs, docs, host-specific files.
rm -rf --one-file-system "$ROOTFS"/var/lib/apt/lists/* \
       "$ROOTFS"/var/cache/apt/* \
       "$ROOTFS"/var/cache/ldconfig/* \
       "$ROOTFS"/var/cache/man \
       "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/* \
       "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
       "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* \
       "$ROOTFS"/debootstrap
mkdir -p "$ROOTFS/var/lib/apt/lists/partial" "$ROOTFS/var/cache/apt/archives/partial"
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
# docker provides these at run time; don't bake in the build host's copies.
: >"$ROOTFS/etc/resolv.conf" || true
: >"$ROOTFS/etc/hostname" || true
rm -rf --one-file-system "$ROOTFS"/dev/* "$ROOTFS"/proc/* "$ROOTFS"/sys/* 2>/dev/null || true

old_id="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
log "rootfs size: $(du -sh --one-file-system "$ROOTFS" | cut -f1); importing as $IMAGE"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PYTHON_VERSION=3.11' \
    --change 'CMD ["python3"]' \
    --change 'LABEL org.runner.seeded=debootstrap' \
    --message "runner: debootstrap $SUITE minbase + $INCLUDE" \
    - "$IMAGE" >/dev/null

# A rebuild leaves the previous image untagged; drop it unless something uses it.
new_id="$(docker image inspect -f '{{.Id}}' "$IMAGE")"
if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
    docker image rm "$old_id" >/dev/null 2>&1 || true
fi

size="$(docker image inspect -f '{{.Size}}' "$IMAGE")"
log "done: $IMAGE ($((size / 1000000)) MB) built in $((SECONDS - start))s"
