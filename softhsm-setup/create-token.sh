#!/usr/bin/env bash
# softhsm-setup/create-token.sh [--dir DIR] [--label LABEL]
#
# Creates (initialises) a SoftHSMv2 token with softhsm2-util. The PINs come from the environment,
# never from this script's arguments:
#   P11KMS_SO_PIN    the Security Officer PIN (4-255 characters)
#   P11KMS_USER_PIN  the user PIN p11kms logs in with (4-255 characters)
# softhsm2-util would take them as --so-pin/--pin, where every local user can read them in the
# process list; instead they are typed into its own prompt on a pseudo-terminal (util-linux
# `script`, echo off).
#
#   --dir DIR      keep the token in DIR/tokens with its own DIR/softhsm2.conf (created, mode
#                  700) instead of the system-wide SoftHSM config; export
#                  SOFTHSM2_CONF=DIR/softhsm2.conf for every later step, the daemon included.
#                  Without --dir: $SOFTHSM2_CONF, else /etc/softhsm/softhsm2.conf (its token
#                  directory /var/lib/softhsm/tokens needs root or the softhsm group).
#   --label LABEL  token label (default p11kms, as in deploy/p11kms.softhsm-sample.toml).
#
# If a token with that label exists already, nothing is changed.
set -euo pipefail
# shellcheck source=../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
trap_errors

usage() { usage_from_header; }

dir=""
label="p11kms"
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) [ $# -ge 2 ] || usage; dir=$2; shift 2 ;;
    --label) [ $# -ge 2 ] || usage; label=$2; shift 2 ;;
    -h | --help) usage ;;
    *) printf 'unknown argument: %s\n\n' "$1" >&2; usage ;;
  esac
done

for var in P11KMS_SO_PIN P11KMS_USER_PIN; do
  value=${!var:-}
  [ -n "$value" ] || die "$var is not set: export the PINs first, e.g. read -rs $var && export $var"
  if [ "${#value}" -lt 4 ] || [ "${#value}" -gt 255 ]; then
    die "$var must be 4 to 255 characters"
  fi
done
if [ -z "$label" ] || [ "${#label}" -gt 32 ]; then
  die "--label must be 1 to 32 characters (a PKCS#11 token label)"
fi

command -v softhsm2-util >/dev/null 2>&1 || die "softhsm2-util not found: run softhsm-setup/install.sh first"
ensure_script_pty

if [ -n "$dir" ]; then
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  (umask 077 && mkdir -p "$dir/tokens")
  chmod 700 "$dir" "$dir/tokens"
  if [ ! -e "$dir/softhsm2.conf" ]; then
    cat >"$dir/softhsm2.conf" <<CONF
# SoftHSMv2 config written by softhsm-setup/create-token.sh
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
  fi
  export SOFTHSM2_CONF="$dir/softhsm2.conf"
fi

# Labels are padded with spaces to 32 characters in the slot list.
token_exists() {
  softhsm2-util --show-slots 2>/dev/null |
    sed -n 's/^[[:space:]]*Label:[[:space:]]*//p' | sed 's/[[:space:]]*$//' | grep -qxF -- "$label"
}

if token_exists; then
  say "a token labelled \"$label\" exists already; leaving it as it is"
else
  say "initialising SoftHSM token \"$label\" (SOFTHSM2_CONF=${SOFTHSM2_CONF:-<system default>})"
  # softhsm2-util asks for each PIN twice; the lines that echo the prompts are dropped.
  printf '%s\n%s\n%s\n%s\n' "$P11KMS_SO_PIN" "$P11KMS_SO_PIN" "$P11KMS_USER_PIN" "$P11KMS_USER_PIN" |
    pty_run softhsm2-util --init-token --free --label "$label" | sed -e '/PIN/d' -e '/^Slot .* free/d' >&2
  token_exists || die "softhsm2-util reported success but no token labelled \"$label\" is listed"
fi

serial=$(softhsm2-util --show-slots | awk -v want="$label" '
  /Serial number:/ { serial = $3 }
  /Label:/ { sub(/^[[:space:]]*Label:[[:space:]]*/, ""); sub(/[[:space:]]*$/, ""); if ($0 == want) { print serial; exit } }')
say "token \"$label\" is ready (serial ${serial:-unknown})"
if [ -n "$dir" ]; then
  say "use it with: export SOFTHSM2_CONF=$SOFTHSM2_CONF"
fi
say "next: softhsm-setup/provision-keys.sh (with P11KMS_USER_PIN set)"
