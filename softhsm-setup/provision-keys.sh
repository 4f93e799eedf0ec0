#!/usr/bin/env bash
# softhsm-setup/provision-keys.sh [--label TOKEN_LABEL] [--module PATH]
#
# Generates on the token, with OpenSC's pkcs11-tool, the five key pairs that
# deploy/p11kms.softhsm-sample.toml serves (the table below and that file must agree):
#
#   KMS key id (config)       CKA_ID  CKA_LABEL               key                 config selects by
#   softhsm-ecdsa-p256        a001    p11kms-ecdsa-p256       EC P-256            object_id
#   softhsm-ecdsa-p384        a002    p11kms-ecdsa-p384       EC P-384            object_label
#   softhsm-ecdsa-secp256k1   a003    p11kms-ecdsa-secp256k1  EC secp256k1        object_id
#   softhsm-rsa-2048          a004    p11kms-rsa-2048         RSA 2048, e=65537   object_id
#   softhsm-rsa-3072          a005    p11kms-rsa-3072         RSA 3072, e=65537   object_label
#
# Private keys are generated on the token and are private, sensitive, never extractable, with
# CKA_SIGN, and limited by CKA_ALLOWED_MECHANISMS to the one mechanism p11kms signs with
# (CKM_ECDSA or CKM_RSA_PKCS_PSS), which SoftHSM enforces: pkcs11-tool cannot clear the
# CKA_DECRYPT/CKA_UNWRAP that SoftHSM sets by default, so the mechanism list is what makes them
# sign-only. After generating, every private key's attributes are read back and checked.
#
# The user PIN comes from the environment variable P11KMS_USER_PIN, never from arguments; it is
# handed to pkcs11-tool's PIN prompt through a pipe, not through --pin. If the token uses a
# private SoftHSM config (create-token.sh --dir), export SOFTHSM2_CONF first.
#
#   --label TOKEN_LABEL  the token (default p11kms)
#   --module PATH        the PKCS#11 module (default: SoftHSMv2's, found in the usual places)
#
# Keys whose CKA_ID exists already are left alone, so rerunning is safe.
set -euo pipefail
# shellcheck source=../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
trap_errors

# CKA_ID, CKA_LABEL, pkcs11-tool --key-type, allowed mechanism (pkcs11-tool's name).
KEYS=(
  "a001 p11kms-ecdsa-p256 EC:prime256v1 ECDSA"
  "a002 p11kms-ecdsa-p384 EC:secp384r1 ECDSA"
  "a003 p11kms-ecdsa-secp256k1 EC:secp256k1 ECDSA"
  "a004 p11kms-rsa-2048 rsa:2048 RSA-PKCS-PSS"
  "a005 p11kms-rsa-3072 rsa:3072 RSA-PKCS-PSS"
)

token="p11kms"
module=""
while [ $# -gt 0 ]; do
  case "$1" in
    --label) [ $# -ge 2 ] || usage_from_header; token=$2; shift 2 ;;
    --module) [ $# -ge 2 ] || usage_from_header; module=$2; shift 2 ;;
    -h | --help) usage_from_header ;;
    *) printf 'unknown argument: %s\n\n' "$1" >&2; usage_from_header ;;
  esac
done

[ -n "${P11KMS_USER_PIN:-}" ] ||
  die "P11KMS_USER_PIN is not set: export the token's user PIN first, e.g. read -rs P11KMS_USER_PIN && export P11KMS_USER_PIN"
command -v pkcs11-tool >/dev/null 2>&1 || die "pkcs11-tool not found: run softhsm-setup/install.sh first"
ensure_script_pty
if [ -z "$module" ]; then
  module=$(softhsm_module) || die "SoftHSMv2's module (libsofthsm2.so) not found: run softhsm-setup/install.sh, or pass --module"
fi
[ -e "$module" ] || die "no PKCS#11 module at $module"

p11() {
  pty_run --stdin-pin P11KMS_USER_PIN pkcs11-tool --module "$module" --token-label "$token" --login "$@"
}

# p11_checked WHAT ARG...: runs pkcs11-tool (logged in) and prints its output; on failure shows
# that output, minus the PIN prompt, and stops.
p11_checked() {
  local what=$1 out
  shift
  if ! out=$(p11 "$@"); then
    sed '/^Please enter/d' <<<"$out" >&2
    die "$what failed"
  fi
  printf '%s\n' "$out"
}

# One line per private key: "<id>|<usage>|<access>|<allowed mechanisms>", from --list-objects.
private_keys() {
  local listing
  listing=$(p11_checked "logging in to token \"$token\" with P11KMS_USER_PIN and listing its keys" \
    --list-objects --type privkey) || exit 1
  awk '
    function flush() { if (id != "") print id "|" usage "|" access "|" allowed; id = usage = access = allowed = "" }
    /^Private Key Object/ { flush(); inkey = 1; next }
    /^[^ ]/ { flush(); inkey = 0; next }
    inkey && /^ +ID:/ { id = $2 }
    inkey && /^ +Usage:/ { sub(/^ +Usage: +/, ""); usage = $0 }
    inkey && /^ +Access:/ { sub(/^ +Access: +/, ""); access = $0 }
    inkey && /^ +Allowed mechanisms:/ { sub(/^ +Allowed mechanisms: +/, ""); allowed = $0 }
    END { flush() }' <<<"$listing"
}

# has_item "a, b, c" b: whether the comma-separated list has that exact item.
has_item() { [[ ", $1," == *", $2,"* ]]; }

say "token \"$token\" via $module (SOFTHSM2_CONF=${SOFTHSM2_CONF:-<system default>})"
pkcs11-tool --module "$module" --list-token-slots 2>/dev/null |
  awk -F' : ' -v want="$token" '/^ +token label +:/ { sub(/ +$/, "", $2); if ($2 == want) found = 1 } END { exit !found }' ||
  die "no token labelled \"$token\" (SOFTHSM2_CONF=${SOFTHSM2_CONF:-<system default>}): run softhsm-setup/create-token.sh first"

# Logging in also checks the PIN, once: a wrong PIN stops here and is never retried.
existing=$(private_keys) || exit 1

for entry in "${KEYS[@]}"; do
  read -r id label keytype mechanism <<<"$entry"
  if grep -q "^$id|" <<<"$existing"; then
    say "key $label (CKA_ID $id) exists already; skipping"
    continue
  fi
  say "generating $keytype key pair $label (CKA_ID $id)"
  p11_checked "generating $label" --keypairgen --key-type "$keytype" --id "$id" --label "$label" \
    --usage-sign --sensitive --allowed-mechanisms "$mechanism" >/dev/null
done

say "checking the private keys' attributes"
listed=$(private_keys)
for entry in "${KEYS[@]}"; do
  read -r id label _ mechanism <<<"$entry"
  line=$(grep "^$id|" <<<"$listed") || die "private key $label (CKA_ID $id) not found after generation"
  IFS='|' read -r _ usage access allowed <<<"$line"
  has_item "$usage" sign || die "$label: CKA_SIGN is not set (usage: $usage)"
  has_item "$access" sensitive || die "$label: CKA_SENSITIVE is not set (access: $access)"
  has_item "$access" "never extractable" || die "$label: CKA_NEVER_EXTRACTABLE is not set (access: $access)"
  ! has_item "$access" extractable || die "$label: CKA_EXTRACTABLE is set (access: $access)"
  [ "$allowed" = "$mechanism" ] || die "$label: allowed mechanisms are \"$allowed\", expected only $mechanism"
  printf '  %-24s CKA_ID %s  usage: %s; access: %s; allowed: %s\n' "$label" "$id" "$usage" "$access" "$allowed" >&2
done
say "keys ready; serve them with: cargo run --release -- serve --config deploy/p11kms.softhsm-sample.toml"
say "(with P11KMS_USER_PIN${SOFTHSM2_CONF:+ and SOFTHSM2_CONF=$SOFTHSM2_CONF} in the environment)"
