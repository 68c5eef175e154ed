#!/usr/bin/env bash
# Make this (Debian) host able to build and run the image with Podman, for tests/test_image.py: Podman,
# runc and debootstrap from Debian's packages, and a containers.conf that uses runc (crun fails on hosts
# with hybrid cgroups) with ulimits the host allows. Best effort: where it cannot (not root, no apt), it
# says so and the image test skips with its reason. `.ci/run` runs it.
set -uo pipefail

say() { echo "container-host: $*" >&2; }

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    say "not root or no apt-get: leaving the host as it is"
    exit 0
fi
missing=()
for tool in podman runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap \
            uidmap slirp4netns fuse-overlayfs >/dev/null; }; then
        say "could not install them; the image test will skip"
        exit 0
    fi
fi
conf=/etc/containers/containers.conf
if ! grep -qs '^runtime *=' "$conf"; then
    nofile="$(ulimit -Hn)"
    [ "$nofile" = unlimited ] && nofile=65536
    mkdir -p /etc/containers
    cat >> "$conf" <<EOF
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=4096:4096"]

[engine]
runtime = "runc"
EOF
    say "wrote $conf (runtime runc, nofile $nofile)"
fi
podman info >/dev/null 2>&1 && say "podman works" || say "podman does not work here; the image test will skip"
