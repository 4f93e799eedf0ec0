#!/usr/bin/env python3
"""Client keys made by `p11kms alibaba client-key create`, through the official
Alibaba Cloud KMS instance SDK (`alibabacloud-dkms-gcs`, unmodified), against
the real daemon: the files load, the configured key signs, and every way of
getting it wrong gets its precise code.

Usage:
  alibaba_client_key_sdk.py ENDPOINT KEY_DIR

ENDPOINT is host:port of the daemon's plaintext listener. Its per-subject rate
limit lets each subject make one request per 1000 s. KEY_DIR holds:

  good.json, good.password     a client key the daemon is configured with, whose
                               subject may sign with the key in key.txt
  norole.json, norole.password a configured client key whose subject has no role
  unknown.json, unknown.password   a client key the daemon is not configured with
  good.cert.pem                the certificate the daemon was configured with
  key.txt, key.pem             a P-256 key the good subject may sign with, and its
                               public key as read off the token

Checks, in order (9 requests reach the daemon):
  1. the ClientKey file loads with `cryptography` (PKCS#12 with its password):
     an RSA-2048 key whose certificate is the one the daemon has;
  2. Sign DIGEST: the signature verifies with `cryptography` under the token's
     public key, and the migration header names a version;
  3. the next Sign is over the subject's rate: Rejected.Throttling, HTTP 429,
     which the SDK retries (4 attempts) before it gives up;
  4. a wrong password: the SDK cannot load the key (no request is sent);
  5. an unknown client key: TeaException Unauthorized, HTTP 404;
  6. the good KeyId with another private key: SignatureNotMatch, HTTP 401;
  7. the client's clock 20 minutes fast: RequestTimeTooSkewed, HTTP 400;
  8. a subject without a role: Forbidden.NoPermission, HTTP 403.

Python sockets may only connect to loopback. Passwords come from files and are
never printed. Prints one line per check and a summary; exits 1 on failure.
"""

import base64
import hashlib
import ipaddress
import json
import os
import socket
import sys
import tempfile

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
from cryptography.hazmat.primitives.serialization import pkcs12

MIGRATION_HEADER = "x-kms-migrationkeyversionid"
DIGEST = hashlib.sha256(b"hello world from the official SDK").digest()


def loopback_sockets_only():
    real_connect = socket.socket.connect

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None:
            try:
                loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
            except ValueError:
                loopback = host == "localhost"
            if not loopback:
                raise AssertionError(f"a socket tried to connect to {address}")
        return real_connect(sock, address)

    socket.socket.connect = connect


def read(key_dir, name, mode="r"):
    with open(os.path.join(key_dir, name), mode) as f:
        return f.read()


class Checks:
    def __init__(self):
        self.failures = 0

    def ok(self, what):
        print(f"ok   {what}")

    def fail(self, what):
        print(f"FAIL {what}")
        self.failures += 1


def check_key_file(checks, key_dir):
    """1. The ClientKey file is a PKCS#12 that `cryptography` loads with its password."""
    client_key = json.loads(read(key_dir, "good.json"))
    password = read(key_dir, "good.password").encode()
    key, cert, extra = pkcs12.load_key_and_certificates(
        base64.b64decode(client_key["PrivateKeyData"]), password
    )
    server_cert = x509.load_pem_x509_certificate(read(key_dir, "good.cert.pem", "rb"))
    pub = lambda k: k.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if (
        isinstance(key, rsa.RSAPrivateKey)
        and key.key_size == 2048
        and cert is not None
        and cert == server_cert
        and pub(key.public_key()) == pub(cert.public_key())
        and not extra
        and client_key["KeyId"].startswith("KAAP.")
    ):
        checks.ok(f"ClientKey file loads with cryptography: RSA-2048, {cert.subject.rfc4514_string()}")
    else:
        checks.fail("ClientKey file: unexpected contents of the PKCS#12")


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[5], file=sys.stderr)
        return 2
    endpoint, key_dir = argv[1], argv[2]
    loopback_sockets_only()

    from Tea.exceptions import TeaException, UnretryableException
    from openapi.models import Config
    from openapi_util.models import RuntimeOptions
    from sdk import models as dkms
    from sdk.client import Client
    import alibabacloud_tea_util.client as tea_util

    checks = Checks()
    check_key_file(checks, key_dir)
    key_id = read(key_dir, "key.txt").strip()
    token_key = serialization.load_pem_public_key(read(key_dir, "key.pem", "rb"))

    def client(name, password=None):
        return Client(
            Config(
                protocol="http",
                endpoint=endpoint,
                client_key_file=os.path.join(key_dir, f"{name}.json"),
                password=password if password is not None else read(key_dir, f"{name}.password"),
            )
        )

    def sign(c):
        return c.sign_with_options(
            dkms.SignRequest(
                key_id=key_id, algorithm="ECDSA_SHA_256", message=DIGEST, message_type="DIGEST"
            ),
            RuntimeOptions(response_headers=[MIGRATION_HEADER]),
        )

    good = client("good")

    # 2. The configured key signs.
    r = sign(good)
    try:
        token_key.verify(r.signature, DIGEST, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        verified = True
    except InvalidSignature:
        verified = False
    version = (r.response_headers or {}).get(MIGRATION_HEADER)
    if verified and version and r.key_id == key_id:
        checks.ok(f"Sign DIGEST: verified under the token's public key, {MIGRATION_HEADER}={version}")
    else:
        checks.fail(f"Sign DIGEST: verified={verified}, version={version!r}, key_id={r.key_id!r}")

    def refused(label, call, code, status, retried=False):
        try:
            call()
        except TeaException as e:
            got = (e.code, (e.data or {}).get("httpCode"))
            if retried and not isinstance(e, UnretryableException):
                checks.fail(f"{label}: the SDK did not retry ({type(e).__name__})")
            elif got == (code, status):
                checks.ok(f"{label}: TeaException {code}, HTTP {status}: {e.message}")
            else:
                checks.fail(f"{label}: got {got}, expected {(code, status)}: {e.message}")
            return
        checks.fail(f"{label}: the request succeeded")

    # 3. Over the rate: the one code the SDK retries, until it gives up.
    refused("over the rate", lambda: sign(good), "Rejected.Throttling", 429, retried=True)

    # 4. A wrong password: the key never loads, nothing is sent.
    try:
        client("good", password=read(key_dir, "good.password") + "x")
        checks.fail("wrong password: the SDK loaded the key")
    except Exception as e:  # pyOpenSSL's crypto.Error: "mac verify failure"
        if "mac verify failure" in str(e):
            checks.ok("wrong password: the SDK cannot open the PKCS#12 (mac verify failure)")
        else:
            checks.fail(f"wrong password: unexpected error {type(e).__name__}: {e}")

    # 5. A client key the daemon does not know.
    refused("unknown client key", lambda: sign(client("unknown")), "Unauthorized", 404)

    # 6. The configured KeyId, signed with another private key.
    with tempfile.TemporaryDirectory() as tmp:
        forged = json.loads(read(key_dir, "unknown.json"))
        forged["KeyId"] = json.loads(read(key_dir, "good.json"))["KeyId"]
        path = os.path.join(tmp, "forged.json")
        with open(path, "w") as f:
            json.dump(forged, f)
        forger = Client(
            Config(
                protocol="http",
                endpoint=endpoint,
                client_key_file=path,
                password=read(key_dir, "unknown.password"),
            )
        )
        refused("good KeyId, other private key", lambda: sign(forger), "SignatureNotMatch", 401)

    # 7. A client clock 20 minutes fast (the SDK dates requests with this helper).
    from email.utils import formatdate
    import time

    real_date = tea_util.Client.get_date_utcstring
    tea_util.Client.get_date_utcstring = staticmethod(
        lambda: formatdate(time.time() + 20 * 60, usegmt=True)
    )
    try:
        refused("client clock 20 min fast", lambda: sign(good), "RequestTimeTooSkewed", 400)
    finally:
        tea_util.Client.get_date_utcstring = real_date

    # 8. Authenticated, but no role.
    refused("subject without a role", lambda: sign(client("norole")), "Forbidden.NoPermission", 403)

    if checks.failures:
        print(f"alibaba sdk: {checks.failures} check(s) FAILED")
        return 1
    print("alibaba sdk: key file OK, 1 signature verified, throttling retried, 6/6 error cases; all OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
