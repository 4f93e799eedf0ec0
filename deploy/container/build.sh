#!/usr/bin/env bash
# deploy/container/build.sh [--target runtime|demo] [--tag NAME]
#
# Builds deploy/container/Containerfile with buildah, without any container registry: the base
# images are Debian bookworm root filesystems made here with mmdebstrap (from Debian's package
# mirror, the one apt uses) and imported with `buildah from scratch`:
#   localhost/p11kms-runtime-base:bookworm   minbase (what debian:bookworm-slim holds)
#   localhost/p11kms-builder-base:bookworm   minbase + gcc, libc6-dev, ca-certificates
# The builder stage uses this machine's Rust toolchain (rustc --print sysroot), bind-mounted
# read-only at /opt/rust, and downloads crates from crates.io (cached in
# target/container/cargo-home). With a registry at hand, plain `podman build` / `docker build`
# with the Containerfile's defaults (rust:1.85-slim-bookworm, debian:bookworm-slim) does the
# same.
#
#   --target T   runtime (default: the production image) or demo (plus SoftHSMv2)
#   --tag NAME   image name (default localhost/p11kms:latest, localhost/p11kms:demo for demo)
#
# Installs buildah, mmdebstrap and runc with apt when missing (root or sudo). RUN steps use
# buildah's chroot isolation and the host network: this sandbox has cgroups in hybrid mode,
# which crun (buildah's default OCI runtime) refuses. To run the image here, use podman with
# runc and ulimits within the sandbox's own (podman's defaults are refused):
#   podman run --runtime runc --ulimit nofile=16384:16384 --ulimit nproc=4096:4096 ...
set -euo pipefail
# shellcheck source=../../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
trap_errors
cd "$P11KMS_ROOT"

target=runtime
tag=""
while [ $# -gt 0 ]; do
  case "$1" in
    --target) [ $# -ge 2 ] || usage_from_header; target=$2; shift 2 ;;
    --tag) [ $# -ge 2 ] || usage_from_header; tag=$2; shift 2 ;;
    -h | --help) usage_from_header ;;
    *) printf 'unknown argument: %s\n\n' "$1" >&2; usage_from_header ;;
  esac
done
case "$target" in
  runtime) tag=${tag:-localhost/p11kms:latest} ;;
  demo) tag=${tag:-localhost/p11kms:demo} ;;
  *) die "--target must be runtime or demo, not $target" ;;
esac

missing=()
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
command -v runc >/dev/null 2>&1 || missing+=(runc)
[ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
ensure_cargo
sysroot=$(rustc --print sysroot)
[ -x "$sysroot/bin/cargo" ] || die "no cargo in the toolchain $sysroot (rustc --print sysroot)"

WORK="$P11KMS_ROOT/target/container"
mkdir -p "$WORK/cargo-home"
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
PATH_IN_IMAGE=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# base_image NAME ENV... -- MMDEBSTRAP_ARGS...: makes the image NAME from a fresh Debian root
# filesystem, once (delete it with `buildah rmi NAME` to make it again).
base_image() {
  local name=$1
  shift
  local envs=()
  while [ "$1" != "--" ]; do
    envs+=(--env "$1")
    shift
  done
  shift
  if buildah inspect --type image "$name" >/dev/null 2>&1; then
    return 0
  fi
  local tar="$WORK/${name##*/}.tar"
  tar=${tar//:/-}
  say "mmdebstrap $* $SUITE -> $name"
  mmdebstrap --variant=minbase "$@" "$SUITE" "$tar" "$MIRROR"
  local ctr
  ctr=$(buildah from scratch)
  buildah add --quiet "$ctr" "$tar" /
  buildah config --env "PATH=$PATH_IN_IMAGE" "${envs[@]}" --cmd /bin/bash "$ctr"
  buildah commit --quiet "$ctr" "$name" >/dev/null
  buildah rm "$ctr" >/dev/null
  rm -f "$tar"
}

base_image localhost/p11kms-runtime-base:$SUITE -- 
base_image localhost/p11kms-builder-base:$SUITE "PATH=/opt/rust/bin:$PATH_IN_IMAGE" \
  CARGO_HOME=/opt/cargo-home -- --include=gcc,libc6-dev,ca-certificates

# The machine's CA bundle, bind-mounted for the build only (never in a layer): cargo then
# trusts what the host trusts, e.g. a TLS-inspecting proxy's CA in front of crates.io.
ca_mount=()
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  ca_mount=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
fi

say "buildah bud --target $target -t $tag (a release build of p11kms inside the builder stage)"
# --format docker keeps HEALTHCHECK (the OCI image format has no field for it).
buildah bud --layers --format docker --isolation chroot --network host \
  --volume "$sysroot:/opt/rust:ro" --volume "$WORK/cargo-home:/opt/cargo-home" "${ca_mount[@]}" \
  --build-arg BUILDER_IMAGE=localhost/p11kms-builder-base --build-arg BUILDER_TAG=$SUITE \
  --build-arg RUNTIME_IMAGE=localhost/p11kms-runtime-base --build-arg RUNTIME_TAG=$SUITE \
  --file deploy/container/Containerfile --target "$target" --tag "$tag" .
say "built $tag"
