#!/usr/bin/env bash
# CI only: make a local base image for docker/Dockerfile where no image registry is reachable (only the Debian apt
# mirror and the Python package index are). Debootstraps a Debian minbase of the host's own release from the host's
# own apt mirror (both read from this machine's apt config at run time), with python3, venv, g++ and the host's
# extra CA certificates, and `docker import`s it. The CA certificates (TLS-intercepting egress proxies) and the
# wheelhouse below are this host's quirks: they live in this CI-only layer, never in docker/Dockerfile.
#
# Usage:  docker/ci/make-base-image.sh [IMAGE]      (IMAGE default: sa-megatron-ci/base:<release>; printed on stdout)
# Env:    SUITE, MIRROR        override the release codename / the apt mirror URL read from /etc/apt/sources.list*
#         PIP                  the pip that resolves CPU torch for the wheelhouse (default: python3 -m pip)
#         TORCH_INDEX          an index for that pip to take torch from (e.g. https://download.pytorch.org/whl/cpu)
#         FORCE=1              rebuild even if IMAGE exists (otherwise an existing image is kept: cache-friendly)
# The wheelhouse: the torch pinned in requirements/cpu.txt, as the host's pip resolves it (its find-links, indexes
# and TORCH_INDEX), is put in /opt/wheels with PIP_FIND_LINKS pointing there, so a build with
# --build-arg TORCH_REQUIREMENTS=requirements/cpu.txt installs a CPU torch where PyPI's Linux torch is the CUDA build.
# Needs root, debootstrap and a running Docker engine.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
log() { echo "make-base-image: $*" >&2; }

# shellcheck disable=SC1091
. /etc/os-release
SUITE=${SUITE:-${VERSION_CODENAME:-}}
[ -n "$SUITE" ] || { log "cannot tell the host's release codename; set SUITE"; exit 1; }
IMAGE=${1:-sa-megatron-ci/base:$SUITE}

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE exists; kept (FORCE=1 rebuilds it)"
    echo "$IMAGE"
    exit 0
fi
[ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 1; }
command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }

# The first mirror URI serving "$1" (a suite name) in the host's apt sources, one-line or deb822 format.
mirror_for() {
    local suite=$1 file
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$file" ] || continue
        case $file in
        *.sources)
            awk -v suite="$suite" '
                function flush() { if (deb && uri != "" && (" " suites " ") ~ (" " suite " ")) { print uri; exit } }
                /^[[:space:]]*$/ { flush(); deb = 0; uri = ""; suites = ""; next }
                /^Types:/ { deb = ($0 ~ /[[:space:]]deb([[:space:]]|$)/) }
                /^URIs:/ { uri = $2 }
                /^Suites:/ { $1 = ""; suites = $0 }
                END { flush() }' "$file" ;;
        *)
            awk -v suite="$suite" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                                                 if ($(i + 1) == suite) { print $i; exit } }' "$file" ;;
        esac
    done | head -n 1
}
MIRROR=${MIRROR:-$(mirror_for "$SUITE")}
[ -n "$MIRROR" ] || { log "no apt source for '$SUITE' in /etc/apt/sources.list*; set MIRROR"; exit 1; }
SECURITY=$(mirror_for "$SUITE-security")
log "debootstrap $SUITE from $MIRROR into $IMAGE"

WORK=$(mktemp -d /tmp/sa-base-image.XXXXXX)
ROOTFS=$WORK/rootfs
trap 'rm -rf "$WORK"' EXIT
debootstrap --variant=minbase --include=ca-certificates,python3,python3-dev,python3-venv,g++,git \
    "$SUITE" "$ROOTFS" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 || { tail -30 "$WORK/debootstrap.log" >&2; exit 1; }
{
    echo "deb $MIRROR $SUITE main"
    if mirror_for "$SUITE-updates" | grep -q .; then echo "deb $(mirror_for "$SUITE-updates") $SUITE-updates main"; fi
    if [ -n "$SECURITY" ]; then echo "deb $SECURITY $SUITE-security main"; fi
} > "$ROOTFS/etc/apt/sources.list"

# The host's extra CA certificates (e.g. a TLS-inspecting egress proxy's), so apt and pip inside builds trust it.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
    chroot "$ROOTFS" update-ca-certificates >/dev/null
    log "added $(ls /usr/local/share/ca-certificates/*.crt | wc -l) CA certificate(s) from /usr/local/share/ca-certificates"
fi

# The wheelhouse: CPU torch as this host's pip resolves requirements/cpu.txt.
read -r -a PIP_CMD <<< "${PIP:-python3 -m pip}"
mkdir -p "$ROOTFS/opt/wheels"
"${PIP_CMD[@]}" download --quiet --no-deps --only-binary=:all: --dest "$ROOTFS/opt/wheels" \
    ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} -r "$REPO/requirements/cpu.txt" >&2
log "wheelhouse: $(cd "$ROOTFS/opt/wheels" && ls)"
host_py=$("${PIP_CMD[@]}" --version | sed -E 's/.*\(python ([0-9.]+)\)$/\1/')
image_py=$(chroot "$ROOTFS" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$host_py" = "$image_py" ] || log "WARNING: the wheelhouse was resolved by Python $host_py, the image has $image_py"

rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV PIP_FIND_LINKS=/opt/wheels' \
    --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
log "made $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}'))"
echo "$IMAGE"
