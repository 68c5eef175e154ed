#!/usr/bin/env bash
# A minimal Debian base image made here, for hosts that reach no image registry:
#   scripts/debootstrap-base.sh ENGINE TAG      (ENGINE: podman or docker; needs root and debootstrap)
# debootstrap's minbase plus python3 (3.11 on bookworm), venv and CA certificates, from this host's own
# Debian mirror and release; apt's lists and caches, docs, man pages and locales are left out.
set -euo pipefail
ENGINE="${1:?usage: debootstrap-base.sh ENGINE TAG}"
TAG="${2:?usage: debootstrap-base.sh ENGINE TAG}"

if ! command -v debootstrap >/dev/null; then
    echo "error: --base debootstrap needs debootstrap (Debian: apt-get install debootstrap)." >&2
    exit 1
fi
. /etc/os-release
SUITE="${DEBOOTSTRAP_SUITE:-${VERSION_CODENAME:-bookworm}}"
# The host's mirror: the first deb URI of its apt sources (deb822 or one-line), else Debian's own.
MIRROR="${DEBOOTSTRAP_MIRROR:-}"
if [ -z "$MIRROR" ]; then
    MIRROR="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2; exit}')"
fi
if [ -z "$MIRROR" ]; then
    MIRROR="$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' \
        /etc/apt/sources.list 2>/dev/null | head -n 1)"
fi
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
echo "debootstrap-base: $SUITE from $MIRROR" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$root/fs" "$MIRROR" \
    > "$root/log" 2>&1 || { tail -n 20 "$root/log" >&2; exit 1; }
rm -rf "$root"/fs/var/cache/apt/* "$root"/fs/var/lib/apt/lists/* "$root"/fs/usr/share/doc/* \
    "$root"/fs/usr/share/man/* "$root"/fs/usr/share/info/*
find "$root/fs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
tar -C "$root/fs" -c . | "$ENGINE" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' - "$TAG" >/dev/null
echo "debootstrap-base: made $TAG" >&2
