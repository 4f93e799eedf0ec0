#!/usr/bin/env python3
"""Drive a running p11kms through the official Yandex Cloud Python SDK and verify
every signature independently with the `cryptography` package.

Usage:
  sdk_sign.py ENDPOINT                       the 13 keys of `p11kms dev`
  sdk_sign.py ENDPOINT --key ID=ALGORITHM …  the given keys (e.g. a softhsm-setup token)

ENDPOINT is host:port of a plaintext gRPC listener, e.g. 127.0.0.1:50051.
P11KMS_TOKEN (environment) is a bearer token with the signer role on the keys.

For every key: GetPublicKey (parsed with cryptography and checked against the
algorithm's key type, size or curve), Sign over a message and SignHash over its
digest, each verified: RSA as RSASSA-PSS with MGF1 on the same hash and a salt
of exactly the digest length; ECDSA as a DER SEQUENCE{r, s} that must be
canonical, and low-S on secp256k1. Then error cases through the same SDK client:
an unknown key (NOT_FOUND) and a digest one byte short (INVALID_ARGUMENT).

The client comes from `yandexcloud.SDK().client(..., endpoint=ENDPOINT, insecure=True)`.
In that mode the SDK opens a bare grpc.insecure_channel to ENDPOINT, sends no
authorization header of its own and never contacts Yandex; this script enforces
that by refusing any other gRPC channel and any non-loopback socket for its
lifetime, and adds `authorization: Bearer $P11KMS_TOKEN` to every call on the
channel (p11kms_auth.py): p11kms authenticates every KMS call.

Prints one line per key and a summary; exits 1 on any failure, 2 on bad usage.
"""

import hashlib
import os
import sys

import grpc

import sdk_guard
from cryptography.exceptions import InvalidSignature
from sdk_algorithms import ALGORITHMS, check_public_key, verify

TIMEOUT = 60  # seconds, per call


def dev_key_id(algorithm):
    """`p11kms dev` key ids: dev- plus the enum name, lower case, _ as -."""
    return "dev-" + algorithm.lower().replace("_", "-")


def parse_args(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print("\n".join(__doc__.strip().splitlines()[2:7]), file=sys.stderr)
        sys.exit(2)
    endpoint, rest = argv[1], argv[2:]
    keys = []
    while rest:
        if rest[0] != "--key" or len(rest) < 2 or "=" not in rest[1]:
            print(f"bad arguments: {rest!r}; expected --key ID=ALGORITHM", file=sys.stderr)
            sys.exit(2)
        key_id, algorithm = rest[1].split("=", 1)
        if algorithm not in ALGORITHMS:
            print(f"unknown algorithm {algorithm!r}", file=sys.stderr)
            sys.exit(2)
        keys.append((key_id, algorithm))
        rest = rest[2:]
    if not keys:
        keys = [(dev_key_id(a), a) for a in ALGORITHMS]
    return endpoint, keys


def main(argv):
    endpoint, keys = parse_args(argv)
    sdk_guard.plaintext_to(endpoint)

    # Imported after the guard so that nothing the SDK does at import time escapes it.
    import yandexcloud
    from yandex.cloud.kms.v1.asymmetricsignature import (
        asymmetric_signature_crypto_service_pb2 as pb,
    )
    from yandex.cloud.kms.v1.asymmetricsignature.asymmetric_signature_crypto_service_pb2_grpc import (
        AsymmetricSignatureCryptoServiceStub,
    )

    sdk = yandexcloud.SDK(user_agent="p11kms-interop")
    stub = sdk.client(AsymmetricSignatureCryptoServiceStub, endpoint=endpoint, insecure=True)
    print(f"yandexcloud {yandexcloud._channels.VERSION} -> {endpoint} (insecure, bearer token from P11KMS_TOKEN)")

    failures = []
    keys_ok = 0
    verified = 0
    for key_id, algorithm in keys:
        hash_name = ALGORITHMS[algorithm][2]
        try:
            pub = stub.GetPublicKey(pb.AsymmetricGetPublicKeyRequest(key_id=key_id), timeout=TIMEOUT)
            if pub.key_id != key_id:
                raise AssertionError(f"GetPublicKey answered for key {pub.key_id!r}")
            key = check_public_key(pub.public_key, algorithm)

            message = b"p11kms interop " + os.urandom(32)
            signed = stub.Sign(pb.AsymmetricSignRequest(key_id=key_id, message=message), timeout=TIMEOUT)
            if signed.key_id != key_id:
                raise AssertionError(f"Sign answered for key {signed.key_id!r}")
            verify(key, algorithm, signed.signature, message, prehashed=False)

            digest = hashlib.new(hash_name, os.urandom(64)).digest()
            hashed = stub.SignHash(pb.AsymmetricSignHashRequest(key_id=key_id, hash=digest), timeout=TIMEOUT)
            if hashed.key_id != key_id:
                raise AssertionError(f"SignHash answered for key {hashed.key_id!r}")
            verify(key, algorithm, hashed.signature, digest, prehashed=True)
            verified += 2
            keys_ok += 1
            print(f"  ok    {key_id:<34} {algorithm:<26} GetPublicKey, Sign, SignHash verified")
        except (grpc.RpcError, AssertionError, InvalidSignature, ValueError) as e:
            detail = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.RpcError) else (
                f"{type(e).__name__}: {e}"
            )
            failures.append(f"{key_id} ({algorithm}): {detail}")
            print(f"  FAIL  {key_id:<34} {algorithm:<26} {detail}")

    # Error cases, through the same SDK client.
    first_id, first_alg = keys[0]
    digest_len = hashlib.new(ALGORITHMS[first_alg][2]).digest_size
    cases = [
        (
            "unknown key -> NOT_FOUND",
            lambda: stub.Sign(
                pb.AsymmetricSignRequest(key_id="no-such-key-p11kms", message=b"x"), timeout=TIMEOUT
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            f"SignHash with {digest_len - 1}-byte digest -> INVALID_ARGUMENT",
            lambda: stub.SignHash(
                pb.AsymmetricSignHashRequest(key_id=first_id, hash=b"\x01" * (digest_len - 1)),
                timeout=TIMEOUT,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    errors_ok = 0
    for name, call, want in cases:
        try:
            call()
            got = "OK (no error)"
        except grpc.RpcError as e:
            got = e.code().name
            if e.code() == want:
                errors_ok += 1
                print(f"  ok    {name}: {e.details()}")
                continue
        failures.append(f"{name}: got {got}")
        print(f"  FAIL  {name}: got {got}")

    print(
        f"summary: {keys_ok}/{len(keys)} keys OK, "
        f"{verified} signatures verified, {errors_ok}/{len(cases)} error cases; "
        + ("FAILED" if failures else "all OK")
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
