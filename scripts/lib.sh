# shellcheck shell=bash
# Shared helpers for scripts/ and softhsm-setup/. Source it from bash; it does nothing by itself.
#
# Everything here installs only when something is missing, so a second run is quick and
# touches nothing. Packages come from apt (Debian/Ubuntu); elsewhere we say what to install.

# shellcheck disable=SC2034 # used by the scripts that source this file
P11KMS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Where SoftHSMv2's module lives on Debian/Ubuntu, Fedora and source builds (as in src/dev.rs).
SOFTHSM_MODULE_CANDIDATES=(
  /usr/lib/softhsm/libsofthsm2.so
  /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so
  /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so
  /usr/lib64/pkcs11/libsofthsm2.so
  /usr/lib/pkcs11/libsofthsm2.so
  /usr/local/lib/softhsm/libsofthsm2.so
)

say() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# Names the failing command when `set -e` stops a script, instead of exiting silently.
trap_errors() {
  trap '_p11kms_failed $? "$LINENO" "$BASH_COMMAND"' ERR
}
_p11kms_failed() {
  printf 'error: %s, line %s: "%s" failed (exit %s)\n' "$(basename "$0")" "$2" "$3" "$1" >&2
}

# usage_from_header: prints the calling script's leading comment block (its help) and exits 2.
usage_from_header() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
  exit 2
}

# as_root CMD...: runs CMD as root: directly when we are root, else through sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "root is needed to run: $* (run this script as root, or install and configure sudo)"
  fi
}

_P11KMS_APT_UPDATED=0
apt_update() {
  if [ "$_P11KMS_APT_UPDATED" -eq 0 ]; then
    say "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q || die "apt-get update failed"
    _P11KMS_APT_UPDATED=1
  fi
}

# apt_install PKG...: installs Debian/Ubuntu packages. The package lists are refreshed only
# when there are none yet (fresh images) or when the install fails with the lists we have.
apt_install() {
  command -v apt-get >/dev/null 2>&1 ||
    die "apt-get not found: these scripts install packages on Debian/Ubuntu only; install $* with your package manager and rerun"
  say "installing $* (apt)"
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    apt_update
  fi
  local install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@")
  if ! as_root "${install[@]}"; then
    [ "$_P11KMS_APT_UPDATED" -eq 0 ] || die "apt-get install $* failed"
    warn "apt-get install failed; refreshing the package lists and retrying once"
    apt_update
    as_root "${install[@]}" || die "apt-get install $* failed"
  fi
}

# softhsm_module: prints the path of SoftHSMv2's PKCS#11 module; fails if there is none.
softhsm_module() {
  local m
  for m in "${SOFTHSM_MODULE_CANDIDATES[@]}"; do
    if [ -e "$m" ]; then
      printf '%s\n' "$m"
      return 0
    fi
  done
  return 1
}

ensure_softhsm() {
  if ! softhsm_module >/dev/null || ! command -v softhsm2-util >/dev/null 2>&1; then
    apt_install softhsm2
    softhsm_module >/dev/null || die "softhsm2 is installed but libsofthsm2.so is not where we look: ${SOFTHSM_MODULE_CANDIDATES[*]}"
    command -v softhsm2-util >/dev/null 2>&1 || die "softhsm2 is installed but softhsm2-util is not on PATH"
  fi
}

ensure_opensc() {
  if ! command -v pkcs11-tool >/dev/null 2>&1; then
    apt_install opensc
    command -v pkcs11-tool >/dev/null 2>&1 || die "opensc is installed but pkcs11-tool is not on PATH"
  fi
}

# util-linux `script`, with --echo (2.35+): gives softhsm2-util and pkcs11-tool the terminal
# they insist on before they read a PIN from anything but argv.
ensure_script_pty() {
  if ! command -v script >/dev/null 2>&1; then
    apt_install bsdutils
  fi
  script --help 2>&1 | grep -q -- '--echo' ||
    die "util-linux 'script' is too old (it needs --echo, util-linux 2.35 or newer); it is used to hand PINs to softhsm2-util and pkcs11-tool without putting them on their command line"
}

# A C linker: rustc links through `cc`.
ensure_cc() {
  if ! command -v cc >/dev/null 2>&1; then
    apt_install gcc libc6-dev
  fi
}

# ensure_cargo: puts cargo on PATH (also when rustup installed it but the shell has not
# sourced ~/.cargo/env yet); without a toolchain, says how to get one and fails.
ensure_cargo() {
  if command -v cargo >/dev/null 2>&1; then
    return 0
  fi
  local bin="${CARGO_HOME:-${HOME:-/nonexistent}/.cargo}/bin"
  if [ -x "$bin/cargo" ]; then
    export PATH="$bin:$PATH"
    return 0
  fi
  die "no Rust toolchain (cargo) found. Install one with rustup, then rerun:
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
  (see https://rustup.rs; the project needs Rust 1.85 or newer)"
}

# ensure_rust_components: rustfmt and clippy, added with rustup when missing.
ensure_rust_components() {
  local missing=()
  cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
  cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
  if [ "${#missing[@]}" -gt 0 ]; then
    command -v rustup >/dev/null 2>&1 ||
      die "cargo ${missing[*]} is missing and rustup is not available to add it; install the ${missing[*]} component(s) for your toolchain"
    say "rustup component add ${missing[*]}"
    rustup component add "${missing[@]}"
  fi
}

# pty_run [--stdin-pin VAR] CMD ARG...: runs CMD on a pseudo-terminal, because softhsm2-util
# and pkcs11-tool only prompt for a PIN when they have one. Secrets never go on a command line:
#   --stdin-pin VAR   pipes the value of the environment variable VAR, plus a newline, into
#                     CMD's stdin (pkcs11-tool reads its PIN prompt from stdin);
#   otherwise         this function's own stdin is typed into the terminal (softhsm2-util
#                     reads the terminal), with terminal echo off so nothing is shown.
# The arguments travel in environment variables, so no quoting can go wrong; output is CMD's,
# with the terminal's carriage returns removed.
pty_run() {
  local pin_var=""
  if [ "${1:-}" = "--stdin-pin" ]; then
    pin_var=$2
    shift 2
  fi
  (
    local i=0 cmd="exec"
    for arg in "$@"; do
      export "P11KMS_PTY_ARG_$i=$arg"
      cmd+=" \"\$P11KMS_PTY_ARG_$i\""
      i=$((i + 1))
    done
    if [ -n "$pin_var" ]; then
      cmd="printf '%s\\n' \"\$$pin_var\" | $cmd"
      exec </dev/null
    fi
    # SHELL: `script` runs the command with $SHELL -c; pin it to a POSIX shell.
    SHELL=/bin/sh script --quiet --return --echo never --command "$cmd" /dev/null
  ) | tr -d '\r'
}

# python3 with its venv module (python3-venv on Debian/Ubuntu).
ensure_python_venv() {
  if ! command -v python3 >/dev/null 2>&1; then
    apt_install python3 python3-venv
  fi
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' ||
    die "python3 is $(python3 --version 2>&1); the SDK tests and the deployment checks need Python 3.9 or newer"
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3-venv
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 ||
      die "$(command -v python3) ($(python3 --version 2>&1)) cannot create virtual environments: install its venv module (Debian/Ubuntu: python3-venv)"
  fi
}

# ensure_interop_venv VENV REQUIREMENTS: a Python venv with REQUIREMENTS installed from PyPI; the venv, rebuilt only when the requirements file or
# the interpreter changed.
ensure_interop_venv() {
  local venv=$1 requirements=$2
  local stamp="$venv/.p11kms-requirements.sha256" shown=${2#"$P11KMS_ROOT"/}
  if ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
    ensure_python_venv
    say "creating $venv"
    python3 -m venv --clear "$venv"
    rm -f "$stamp"
  fi
  local want
  want=$( (cat "$requirements" && "$venv/bin/python" -c 'import sys; print(sys.version)') | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    say "installing $shown into $venv (pip, PyPI)"
    "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$requirements" ||
      die "pip could not install $shown into $venv"
    printf '%s\n' "$want" >"$stamp"
  fi
}
