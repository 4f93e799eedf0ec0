#!/usr/bin/env python3
"""Drive p11kms's KMS instance API through the official Alibaba SDKs, unmodified:
`alibabacloud-dkms-gcs` (the instance SDK) and the TransferClient of
`alibabacloud-kms-python-sdk` (OpenAPI-shaped calls carried over the instance
API), both over HTTPS with `ca_file_path` and over plaintext.

Usage:
  alibaba_instance_sdk.py WORK_DIR

WORK_DIR/params.json names everything (written by tests/alibaba_instance_sdk.rs):
  http, https        host:port of the daemon's plaintext and TLS listeners
  ca                 the CA file of the TLS listener
  client_key_file, client_key_password_file   the dev admin's client key
  access_key_file    the dev admin's AccessKey (OpenAPI: versions and public keys)
  keys               [{key_id, algorithms, token_pem, yandex_pem}]: token_pem is the
                     public key pkcs11-tool read off the token, yandex_pem the Yandex
                     API's GetPublicKey

Checks, on each transport:
  1. Sign RAW, DIGEST and without MessageType with every algorithm of every key,
     each signature verified with `cryptography` under the token's public key, the
     migration header equal to the key's primary version (OpenAPI DescribeKey);
  2. Verify true (RAW and DIGEST) and false (a signature of another message);
  3. GetPublicKey: the same key as the token's, the Yandex API's and the
     OpenAPI's GetPublicKey, with the migration header;
  4. GenerateRandom;
  5. the wrapper's asymmetric_sign (verified), asymmetric_verify (true and false)
     and get_public_key, with the KeyVersionId it reads from the header;
  6. refusals as the SDK reports them (TeaException code and HTTP status): an
     unknown key (Forbidden.KeyNotFound 404, also through the wrapper), a DIGEST of
     31 bytes, an RSA algorithm on an EC key, a MessageType that is neither RAW nor
     DIGEST, GenerateRandom of 0 bytes (InvalidParameter 400), an API p11kms does
     not serve (Encrypt: UnsupportedOperation 400);
and once, over HTTPS:
  7. a key made through the OpenAPI (CreateKey EC_P256): the migration header
     names its first version, then, after CreateKeyVersion, the new one, for
     Sign, Verify, GetPublicKey and the wrapper; the new signatures verify under
     the new version's public key (OpenAPI GetPublicKey) and not the old one's.

Writes WORK_DIR/results.json: every instance-API request that succeeded (request
id, API, key, version), every refused one (request id, code), every signature
received (hex), and the counts of the
API x MessageType x algorithm matrix, which it also prints. Sockets may only
connect to loopback. Secrets come from files and are never printed. Exits 1 on
the first failed check.
"""

import base64
import hashlib
import ipaddress
import json
import os
import socket
import sys
from collections import Counter

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

MIGRATION_HEADER = "x-kms-migrationkeyversionid"
MESSAGE = b"p11kms instance API, official SDK"


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


class Failed(Exception):
    pass


def check(condition, what):
    if not condition:
        raise Failed(what)


def spki(pem):
    key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def verifies(public_pem, algorithm, signature, data, prehashed):
    """Whether `signature` is `algorithm`'s signature of `data` (a SHA-256 digest when
    `prehashed`) under `public_pem`, checked by `cryptography` alone."""
    key = serialization.load_pem_public_key(public_pem.encode())
    hash_alg = utils.Prehashed(hashes.SHA256()) if prehashed else hashes.SHA256()
    try:
        if algorithm == "ECDSA_SHA_256":
            check(isinstance(key, ec.EllipticCurvePublicKey), "ECDSA with a non-EC key")
            key.verify(signature, data, ec.ECDSA(hash_alg))
        elif algorithm == "RSA_PSS_SHA_256":
            check(isinstance(key, rsa.RSAPublicKey), "PSS with a non-RSA key")
            key.verify(
                signature,
                data,
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                hash_alg,
            )
        elif algorithm == "RSA_PKCS1_SHA_256":
            check(isinstance(key, rsa.RSAPublicKey), "PKCS#1 with a non-RSA key")
            key.verify(signature, data, padding.PKCS1v15(), hash_alg)
        else:
            raise Failed(f"no verifier for {algorithm}")
        return True
    except InvalidSignature:
        return False


class Run:
    def __init__(self, params):
        self.params = params
        self.requests = []
        self.refusals = []
        self.signatures = []
        self.matrix = Counter()
        with open(params["client_key_password_file"]) as f:
            self.password = f.read()
        with open(params["access_key_file"]) as f:
            self.access_key = json.load(f)
        self.token_pem = {}
        self.yandex_pem = {}
        for key in params["keys"]:
            with open(key["token_pem"]) as f:
                self.token_pem[key["key_id"]] = f.read()
            with open(key["yandex_pem"]) as f:
                self.yandex_pem[key["key_id"]] = f.read()

    # -- clients ---------------------------------------------------------------------

    def transports(self):
        return [("https", self.params["https"], self.params["ca"]), ("http", self.params["http"], None)]

    def instance_client(self, endpoint, ca):
        from openapi.models import Config
        from sdk.client import Client

        config = Config(
            endpoint=endpoint,
            client_key_file=self.params["client_key_file"],
            password=self.password,
        )
        if ca is None:
            config.protocol = "http"
        else:
            config.ca_file_path = ca
        return Client(config)

    def openapi_config(self, endpoint, ca):
        from alibabacloud_tea_openapi.models import Config

        config = Config(
            access_key_id=self.access_key["AccessKeyId"],
            access_key_secret=self.access_key["AccessKeySecret"],
            endpoint=endpoint,
        )
        if ca is None:
            config.protocol = "http"
        else:
            config.ca = ca
        return config

    def openapi_client(self, endpoint, ca):
        from alibabacloud_kms20160120.client import Client

        return Client(self.openapi_config(endpoint, ca))

    def transfer_client(self, endpoint, ca):
        """The wrapper: signing calls over the instance API, the rest over the OpenAPI."""
        from alibabacloud_kms_kms20160120.models import KmsConfig
        from alibabacloud_kms_kms20160120.transfer_client import TransferClient

        kms_config = KmsConfig(
            endpoint=endpoint,
            client_key_file=self.params["client_key_file"],
            password=self.password,
        )
        if ca is None:
            kms_config.protocol = "http"
        else:
            kms_config.ca_file_path = ca
        return TransferClient(config=self.openapi_config(endpoint, ca), kms_config=kms_config)

    # -- bookkeeping -----------------------------------------------------------------

    def note(self, api, request_id, key_id, version, message_type="", algorithm=""):
        check(bool(request_id), f"{api} {key_id}: no RequestId")
        self.requests.append(
            {"request_id": request_id, "api": api, "key_id": key_id, "version_id": version}
        )
        self.matrix[(api, message_type or "-", algorithm or "-")] += 1

    @staticmethod
    def runtime():
        from openapi_util.models import RuntimeOptions

        return RuntimeOptions(response_headers=[MIGRATION_HEADER])

    @staticmethod
    def version_of(response):
        headers = response.response_headers or {}
        return headers.get(MIGRATION_HEADER)

    def primary_version(self, openapi, key_id):
        from alibabacloud_kms20160120 import models as kms

        meta = openapi.describe_key(kms.DescribeKeyRequest(key_id=key_id)).body.key_metadata
        check(bool(meta.primary_key_version), f"DescribeKey {key_id}: no PrimaryKeyVersion")
        return meta.primary_key_version

    def openapi_public_key(self, openapi, key_id, version):
        from alibabacloud_kms20160120 import models as kms

        body = openapi.get_public_key(
            kms.GetPublicKeyRequest(key_id=key_id, key_version_id=version)
        ).body
        check(body.key_version_id == version, f"OpenAPI GetPublicKey {key_id}: {body.key_version_id}")
        return body.public_key

    def refused(self, label, what, call, code, status):
        """`call` raises the SDK's TeaException with `code` and HTTP `status`."""
        from Tea.exceptions import TeaException

        try:
            call()
        except TeaException as e:
            data = e.data or {}
            got = (e.code, data.get("httpCode"))
            check(got == (code, status), f"{label}: {what}: got {got}, expected {(code, status)}: {e.message}")
            request_id = data.get("requestId")
            check(bool(request_id), f"{label}: {what}: no RequestId in the error")
            self.refusals.append({"request_id": request_id, "code": code, "what": what})
            self.matrix[("(refused)", code, what)] += 1
            return
        raise Failed(f"{label}: {what}: the request succeeded")

    # -- the checks ------------------------------------------------------------------

    def sign(self, client, key_id, algorithm, message_type, version, public_pem, label):
        from sdk import models as dkms

        digest = hashlib.sha256(MESSAGE).digest()
        request = dkms.SignRequest(key_id=key_id, algorithm=algorithm)
        if message_type == "DIGEST":
            request.message = digest
        else:
            request.message = MESSAGE
        if message_type is not None:
            request.message_type = message_type
        r = client.sign_with_options(request, self.runtime())
        check(
            verifies(public_pem, algorithm, r.signature, digest, prehashed=True),
            f"{label}: Sign {message_type} {algorithm} {key_id}: the signature does not verify",
        )
        check(r.key_id == key_id, f"{label}: Sign answered KeyId {r.key_id!r}")
        check(r.algorithm == algorithm, f"{label}: Sign answered Algorithm {r.algorithm!r}")
        check(
            r.message_type == (message_type or "RAW"),
            f"{label}: Sign answered MessageType {r.message_type!r}",
        )
        check(
            self.version_of(r) == version,
            f"{label}: Sign {key_id}: {MIGRATION_HEADER} is {self.version_of(r)!r}, the primary "
            f"version is {version!r}",
        )
        self.signatures.append(r.signature.hex())
        self.note("Sign", r.request_id, key_id, version, message_type or "(none)", algorithm)
        return r.signature

    def verify(self, client, key_id, algorithm, message_type, signature, expected, version, label):
        from sdk import models as dkms

        message = hashlib.sha256(MESSAGE).digest() if message_type == "DIGEST" else MESSAGE
        r = client.verify_with_options(
            dkms.VerifyRequest(
                key_id=key_id,
                algorithm=algorithm,
                signature=signature,
                message=message,
                message_type=message_type,
            ),
            self.runtime(),
        )
        check(
            r.value is expected,
            f"{label}: Verify {message_type} {algorithm} {key_id} answered {r.value!r}, "
            f"expected {expected}",
        )
        check(self.version_of(r) == version, f"{label}: Verify {key_id}: {MIGRATION_HEADER}")
        self.note("Verify", r.request_id, key_id, version, message_type, f"{algorithm} {expected}")

    def get_public_key(self, client, key_id, version, label):
        from sdk import models as dkms

        r = client.get_public_key_with_options(dkms.GetPublicKeyRequest(key_id=key_id), self.runtime())
        check(r.key_id == key_id, f"{label}: GetPublicKey answered KeyId {r.key_id!r}")
        check(
            self.version_of(r) == version,
            f"{label}: GetPublicKey {key_id}: {MIGRATION_HEADER} is {self.version_of(r)!r}",
        )
        self.note("GetPublicKey", r.request_id, key_id, version)
        return r.public_key

    def instance_api(self, label, endpoint, ca):
        from sdk import models as dkms

        client = self.instance_client(endpoint, ca)
        openapi = self.openapi_client(endpoint, ca)
        for key in self.params["keys"]:
            key_id = key["key_id"]
            token_pem = self.token_pem[key_id]
            version = self.primary_version(openapi, key_id)
            published = self.get_public_key(client, key_id, version, label)
            same = {
                "instance": spki(published),
                "token": spki(token_pem),
                "yandex": spki(self.yandex_pem[key_id]),
                "openapi": spki(self.openapi_public_key(openapi, key_id, version)),
            }
            check(
                len(set(same.values())) == 1,
                f"{label}: {key_id}: the public keys differ: "
                + ", ".join(f"{k}={hashlib.sha256(v).hexdigest()[:12]}" for k, v in same.items()),
            )
            for algorithm in key["algorithms"]:
                signatures = {}
                for message_type in ["RAW", "DIGEST", None]:
                    signatures[message_type] = self.sign(
                        client, key_id, algorithm, message_type, version, token_pem, label
                    )
                self.verify(client, key_id, algorithm, "RAW", signatures["RAW"], True, version, label)
                self.verify(client, key_id, algorithm, "DIGEST", signatures[None], True, version, label)
                other = client.sign(
                    dkms.SignRequest(key_id=key_id, algorithm=algorithm, message=b"another message")
                )
                check(
                    verifies(token_pem, algorithm, other.signature, b"another message", prehashed=False),
                    f"{label}: Sign {algorithm} {key_id} of another message does not verify",
                )
                self.note("Sign", other.request_id, key_id, version, "(none)", algorithm)
                self.signatures.append(other.signature.hex())
                self.verify(client, key_id, algorithm, "DIGEST", other.signature, False, version, label)
            print(f"ok   {label}: {key_id}: Sign x3, Verify x3 per algorithm, GetPublicKey = token = Yandex = OpenAPI")
        r = client.generate_random(dkms.GenerateRandomRequest(length=32))
        check(len(r.random) == 32, f"{label}: GenerateRandom gave {len(r.random)} bytes")
        self.note("GenerateRandom", r.request_id, "", None)
        print(f"ok   {label}: GenerateRandom 32 bytes")

        ec_key = next(k["key_id"] for k in self.params["keys"] if "ECDSA_SHA_256" in k["algorithms"])
        digest = hashlib.sha256(MESSAGE).digest()

        def sign(key_id, algorithm, message, message_type):
            return lambda: client.sign(
                dkms.SignRequest(key_id=key_id, algorithm=algorithm, message=message, message_type=message_type)
            )

        for what, call, code, status in [
            ("unknown key", sign("no-such-key", "ECDSA_SHA_256", digest, "DIGEST"), "Forbidden.KeyNotFound", 404),
            ("DIGEST of 31 bytes", sign(ec_key, "ECDSA_SHA_256", digest[:31], "DIGEST"), "InvalidParameter", 400),
            ("RSA algorithm on an EC key", sign(ec_key, "RSA_PSS_SHA_256", MESSAGE, "RAW"), "InvalidParameter", 400),
            ("MessageType HASH", sign(ec_key, "ECDSA_SHA_256", digest, "HASH"), "InvalidParameter", 400),
            (
                "GenerateRandom of 0 bytes",
                lambda: client.generate_random(dkms.GenerateRandomRequest(length=0)),
                "InvalidParameter",
                400,
            ),
            (
                "Encrypt",
                lambda: client.encrypt(dkms.EncryptRequest(key_id=ec_key, plaintext=b"secret")),
                "UnsupportedOperation",
                400,
            ),
        ]:
            self.refused(label, what, call, code, status)
        print(f"ok   {label}: refusals: Forbidden.KeyNotFound, InvalidParameter x4, UnsupportedOperation")

    def wrapper(self, label, endpoint, ca, keys=None, versions=None):
        from alibabacloud_kms20160120 import models as kms

        client = self.transfer_client(endpoint, ca)
        digest = hashlib.sha256(MESSAGE).digest()
        b64 = base64.b64encode(digest).decode()
        for key in keys or self.params["keys"]:
            key_id = key["key_id"]
            version = (versions or {}).get(key_id) or self.primary_version(client, key_id)
            pem = key.get("pem") or self.token_pem[key_id]
            r = client.get_public_key(kms.GetPublicKeyRequest(key_id=key_id, key_version_id="ignored"))
            check(r.body.key_version_id == version, f"{label}: wrapper get_public_key version")
            check(spki(r.body.public_key) == spki(pem), f"{label}: wrapper get_public_key key")
            self.note("GetPublicKey", r.body.request_id, key_id, version)
            for algorithm in key["algorithms"]:
                r = client.asymmetric_sign(
                    kms.AsymmetricSignRequest(
                        key_id=key_id, key_version_id="ignored", algorithm=algorithm, digest=b64
                    )
                )
                signature = base64.b64decode(r.body.value)
                check(
                    verifies(pem, algorithm, signature, digest, prehashed=True),
                    f"{label}: wrapper asymmetric_sign {algorithm} {key_id} does not verify",
                )
                check(r.body.key_version_id == version, f"{label}: wrapper asymmetric_sign version")
                check(r.body.key_id == key_id, f"{label}: wrapper asymmetric_sign KeyId")
                self.signatures.append(signature.hex())
                self.note("Sign", r.body.request_id, key_id, version, "DIGEST", algorithm)
                for value, expected in [(r.body.value, True), (base64.b64encode(b"\x01" + signature[1:]).decode(), False)]:
                    v = client.asymmetric_verify(
                        kms.AsymmetricVerifyRequest(
                            key_id=key_id,
                            key_version_id="ignored",
                            algorithm=algorithm,
                            digest=b64,
                            value=value,
                        )
                    )
                    check(
                        v.body.value is expected,
                        f"{label}: wrapper asymmetric_verify {algorithm} {key_id}: {v.body.value!r}",
                    )
                    check(v.body.key_version_id == version, f"{label}: wrapper asymmetric_verify version")
                    self.note("Verify", v.body.request_id, key_id, version, "DIGEST", f"{algorithm} {expected}")
            print(f"ok   {label}: wrapper: get_public_key, asymmetric_sign and asymmetric_verify on {key_id}")
        if keys is None:
            self.refused(
                label,
                "wrapper: unknown key",
                lambda: client.asymmetric_sign(
                    kms.AsymmetricSignRequest(
                        key_id="no-such-key", key_version_id="ignored", algorithm="ECDSA_SHA_256", digest=b64
                    )
                ),
                "Forbidden.KeyNotFound",
                404,
            )
            print(f"ok   {label}: wrapper: an unknown key is Forbidden.KeyNotFound")

    def versions(self):
        """A key made through the OpenAPI, before and after CreateKeyVersion."""
        from alibabacloud_kms20160120 import models as kms
        from sdk import models as dkms

        label, endpoint, ca = self.transports()[0]
        openapi = self.openapi_client(endpoint, ca)
        client = self.instance_client(endpoint, ca)
        meta = openapi.create_key(
            kms.CreateKeyRequest(key_spec="EC_P256", key_usage="SIGN/VERIFY")
        ).body.key_metadata
        key_id, first = meta.key_id, meta.primary_key_version
        first_pem = self.openapi_public_key(openapi, key_id, first)
        self.sign(client, key_id, "ECDSA_SHA_256", "DIGEST", first, first_pem, label)
        second = openapi.create_key_version(kms.CreateKeyVersionRequest(key_id=key_id)).body.key_version.key_version_id
        check(second and second != first, f"CreateKeyVersion gave {second!r}")
        check(self.primary_version(openapi, key_id) == second, "the new version is not primary")
        second_pem = self.openapi_public_key(openapi, key_id, second)
        check(spki(second_pem) != spki(first_pem), "the new version has the old key pair")
        signature = self.sign(client, key_id, "ECDSA_SHA_256", "DIGEST", second, second_pem, label)
        digest = hashlib.sha256(MESSAGE).digest()
        check(
            not verifies(first_pem, "ECDSA_SHA_256", signature, digest, prehashed=True),
            "a signature after CreateKeyVersion verifies under the old version's key",
        )
        self.sign(client, key_id, "ECDSA_SHA_256", "RAW", second, second_pem, label)
        self.verify(client, key_id, "ECDSA_SHA_256", "DIGEST", signature, True, second, label)
        published = self.get_public_key(client, key_id, second, label)
        check(spki(published) == spki(second_pem), "instance GetPublicKey is not the new version's")
        key = {"key_id": key_id, "algorithms": ["ECDSA_SHA_256"], "pem": second_pem}
        self.wrapper(label, endpoint, ca, keys=[key], versions={key_id: second})
        print(f"ok   {label}: {key_id}: {MIGRATION_HEADER} {first} before, {second} after CreateKeyVersion")

    def matrix_text(self):
        lines = [f"{'API':<15} {'MessageType':<12} {'algorithm':<26} count"]
        for (api, message_type, algorithm), n in sorted(self.matrix.items()):
            lines.append(f"{api:<15} {message_type:<12} {algorithm:<26} {n}")
        return "\n".join(lines)


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[5], file=sys.stderr)
        return 2
    work = argv[1]
    loopback_sockets_only()
    with open(os.path.join(work, "params.json")) as f:
        params = json.load(f)
    run = Run(params)
    try:
        for label, endpoint, ca in run.transports():
            run.instance_api(label, endpoint, ca)
            run.wrapper(label, endpoint, ca)
        run.versions()
    except Failed as e:
        print(f"FAIL {e}")
        return 1
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(
            {
                "requests": run.requests,
                "refusals": run.refusals,
                "signatures": run.signatures,
                "matrix": [
                    {"api": a, "message_type": m, "algorithm": g, "count": n}
                    for (a, m, g), n in sorted(run.matrix.items())
                ],
            },
            f,
        )
    print(run.matrix_text())
    print(
        f"alibaba instance sdk: {len(run.requests)} requests, {len(run.signatures)} signatures verified, "
        f"{len(run.refusals)} refusals; all OK"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
