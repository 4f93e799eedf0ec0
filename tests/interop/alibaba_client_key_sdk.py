#!/usr/bin/env python3
"""Drive p11kms's instance-API client-key authentication through the official
Alibaba Cloud KMS instance SDK (`alibabacloud-dkms-gcs`, unmodified), with
client keys made by `p11kms alibaba client-key create`.

Usage:
  alibaba_client_key_sdk.py ENDPOINT KEY_DIR

ENDPOINT is host:port of a plaintext loopback test server that runs p11kms's
authentication and answers Sign with a canned reply: a P-256 ECDSA signature
of the request's data (made with RustCrypto, key in KEY_DIR/server-key.pem)
and the `x-kms-migrationkeyversionid` header. KEY_DIR holds:

  good.json, good.password     a client key the server is configured with
  unknown.json, unknown.password   a client key it is not configured with
  good.cert.pem                the certificate the server was configured with
  version.txt                  the key version the server names
  subject.txt                  the subject the good key maps to

Checks, in order (8 requests reach the server):
  1. the ClientKey file loads with `cryptography` (PKCS#12 with its password):
     an RSA-2048 key whose certificate is the one the server has;
  2. Sign RAW, Sign without MessageType (RAW) and Sign DIGEST: every signature
     verified with `cryptography` against the server's public key, the
     migration header equal to the version, RequestId naming the subject;
  3. Rejected.Throttling once: the SDK retries, and the retry succeeds;
  4. a wrong password: the SDK cannot load the key (no request is sent);
  5. an unknown client key: TeaException Unauthorized, HTTP 404;
  6. the good KeyId with another private key: SignatureNotMatch, HTTP 401;
  7. the client's clock 20 minutes fast: RequestTimeTooSkewed, HTTP 400.

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
MESSAGE = b"hello world from the official SDK"


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
        print(__doc__.strip().splitlines()[4], file=sys.stderr)
        return 2
    endpoint, key_dir = argv[1], argv[2]
    loopback_sockets_only()

    from Tea.exceptions import TeaException
    from openapi.models import Config
    from openapi_util.models import RuntimeOptions
    from sdk import models as dkms
    from sdk.client import Client
    import alibabacloud_tea_util.client as tea_util

    checks = Checks()
    check_key_file(checks, key_dir)
    server_key = serialization.load_pem_public_key(read(key_dir, "server-key.pem", "rb"))
    version = read(key_dir, "version.txt").strip()
    subject = read(key_dir, "subject.txt").strip()

    def client(name, password=None):
        return Client(
            Config(
                protocol="http",
                endpoint=endpoint,
                client_key_file=os.path.join(key_dir, f"{name}.json"),
                password=password if password is not None else read(key_dir, f"{name}.password"),
            )
        )

    runtime = lambda: RuntimeOptions(response_headers=[MIGRATION_HEADER])
    good = client("good")

    # 2. Signatures through the SDK, each verified here.
    digest = hashlib.sha256(MESSAGE).digest()
    for label, message, message_type in [
        ("Sign RAW", MESSAGE, "RAW"),
        ("Sign without MessageType", MESSAGE, None),
        ("Sign DIGEST", digest, "DIGEST"),
    ]:
        request = dkms.SignRequest(key_id="key-canned", algorithm="ECDSA_SHA_256", message=message)
        if message_type is not None:
            request.message_type = message_type
        r = good.sign_with_options(request, runtime())
        try:
            server_key.verify(r.signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
            verified = True
        except InvalidSignature:
            verified = False
        headers = r.response_headers or {}
        if (
            verified
            and headers.get(MIGRATION_HEADER) == version
            and r.key_id == "key-canned"
            and r.request_id.startswith(subject + ":")
        ):
            checks.ok(f"{label}: signature verified, {MIGRATION_HEADER}={version}, caller {subject}")
        else:
            checks.fail(
                f"{label}: verified={verified}, headers={headers}, key_id={r.key_id!r}, "
                f"request_id={r.request_id!r}"
            )

    # 3. The one code the SDK retries.
    r = good.sign(dkms.SignRequest(key_id="throttle-once", algorithm="ECDSA_SHA_256", message=MESSAGE))
    if r.key_id == "throttle-once":
        checks.ok("Rejected.Throttling: the SDK retried and the retry succeeded")
    else:
        checks.fail(f"throttled request answered {r}")

    def refused(label, make_client, code, status):
        try:
            make_client().sign(
                dkms.SignRequest(key_id="key-canned", algorithm="ECDSA_SHA_256", message=MESSAGE)
            )
        except TeaException as e:
            got = (e.code, (e.data or {}).get("httpCode"))
            if got == (code, status):
                checks.ok(f"{label}: TeaException {code}, HTTP {status}: {e.message}")
            else:
                checks.fail(f"{label}: got {got}, expected {(code, status)}: {e.message}")
            return
        checks.fail(f"{label}: the request succeeded")

    # 4. A wrong password: the key never loads, nothing is sent.
    try:
        client("good", password=read(key_dir, "good.password") + "x")
        checks.fail("wrong password: the SDK loaded the key")
    except Exception as e:  # pyOpenSSL's crypto.Error: "mac verify failure"
        if "mac verify failure" in str(e):
            checks.ok("wrong password: the SDK cannot open the PKCS#12 (mac verify failure)")
        else:
            checks.fail(f"wrong password: unexpected error {type(e).__name__}: {e}")

    # 5. A client key the server does not know.
    refused("unknown client key", lambda: client("unknown"), "Unauthorized", 404)

    # 6. The configured KeyId, signed with another private key.
    with tempfile.TemporaryDirectory() as tmp:
        forged = json.loads(read(key_dir, "unknown.json"))
        forged["KeyId"] = json.loads(read(key_dir, "good.json"))["KeyId"]
        path = os.path.join(tmp, "forged.json")
        with open(path, "w") as f:
            json.dump(forged, f)
        refused(
            "good KeyId, other private key",
            lambda: Client(
                Config(
                    protocol="http",
                    endpoint=endpoint,
                    client_key_file=path,
                    password=read(key_dir, "unknown.password"),
                )
            ),
            "SignatureNotMatch",
            401,
        )

    # 7. A client clock 20 minutes fast (the SDK dates requests with this helper).
    from email.utils import formatdate
    import time

    real_date = tea_util.Client.get_date_utcstring
    tea_util.Client.get_date_utcstring = staticmethod(
        lambda: formatdate(time.time() + 20 * 60, usegmt=True)
    )
    try:
        refused("client clock 20 min fast", lambda: good, "RequestTimeTooSkewed", 400)
    finally:
        tea_util.Client.get_date_utcstring = real_date

    if checks.failures:
        print(f"alibaba sdk: {checks.failures} check(s) FAILED")
        return 1
    print("alibaba sdk: key file OK, 3 signatures verified, throttling retried, 4/4 error cases; all OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
