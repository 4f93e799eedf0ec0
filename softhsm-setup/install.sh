#!/usr/bin/env bash
# softhsm-setup/install.sh
#
# Installs SoftHSMv2 (softhsm2: the token and softhsm2-util) and OpenSC (pkcs11-tool) when they
# are missing, on Debian/Ubuntu (apt; sudo when not root). Safe to rerun: it installs nothing
# that is already there.
set -euo pipefail
# shellcheck source=../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
trap_errors

ensure_softhsm
ensure_opensc
ensure_script_pty

say "SoftHSMv2: $(softhsm2-util --version), module $(softhsm_module)"
say "OpenSC: $(command -v pkcs11-tool)"
say "next: P11KMS_SO_PIN=... P11KMS_USER_PIN=... softhsm-setup/create-token.sh [--dir DIR]"
