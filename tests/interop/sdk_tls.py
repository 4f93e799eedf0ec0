#!/usr/bin/env python3
"""Use p11kms over TLS exactly as an application uses Yandex Cloud KMS, through the
unmodified official Python SDK, and verify every signature with `cryptography`.

Usage: sdk_tls.py ENDPOINT CA_FILE

ENDPOINT is host:port of p11kms's TLS listener, with a host that the server
certificate names (e.g. localhost:50051 or 127.0.0.1:50051). CA_FILE is the PEM
CA that signed the server certificate. The bearer token comes from the
environment variable P11KMS_TOKEN (never from argv, which every local user can
read); it is never printed.

What the SDK does here, all by itself (yandexcloud/_channels.py, _auth_plugin.py):
  1. `yandexcloud.SDK(endpoint=ENDPOINT, iam_token=..., root_certificates=CA)`;
  2. the first `sdk.client(Stub)` calls ApiEndpointService.List on ENDPOINT over
     TLS, without credentials (its auth plugin skips that service), and learns
     the addresses of `kms`, `operation` and `iam`;
  3. it opens TLS channels to them with `authorization: Bearer <token>` added
     by its call-credentials plugin: no `insecure=True`, no interceptor of ours.

The flow: discover; create an ECDSA P-256 and an RSA-2048 key with the key
service stub and wait with `sdk.wait_operation_and_get_result` (the waiter
polls OperationService through its own discovered channel); sign with the
crypto stub; get the public key; verify with `cryptography`. Any channel that
is not TLS to the endpoint's address, or any socket that is not loopback,
fails the run. Prints the discovered endpoints and a summary; exits 1 on
failure, 2 on bad usage.
"""

import os
import sys

import sdk_guard
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

TIMEOUT = 120  # seconds per call; RSA generation on a loaded machine
FOLDER = "sdk-tls"
KEYS = {
    "ECDSA_NIST_P256_SHA_256": "ecdsa",
    "RSA_2048_SIGN_PSS_SHA_256": "rsa",
}


def verify(pem, kind, message, signature):
    key = serialization.load_pem_public_key(pem.encode("ascii"))
    if kind == "rsa":
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048, key
        key.verify(
            signature,
            message,
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
            hashes.SHA256(),
        )
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1", key
        r, s = utils.decode_dss_signature(signature)
        assert utils.encode_dss_signature(r, s) == signature, "ECDSA signature is not canonical DER"
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))


def main(argv):
    if len(argv) != 3 or argv[1] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[3], file=sys.stderr)
        return 2
    endpoint, ca_file = argv[1], argv[2]
    token = os.environ.get("P11KMS_TOKEN", "").strip()
    if not token:
        print("set P11KMS_TOKEN to a bearer token p11kms accepts", file=sys.stderr)
        return 2
    with open(ca_file, "rb") as f:
        ca = f.read()
    opened = []
    sdk_guard.tls_to(endpoint, opened)

    import yandexcloud
    from yandex.cloud.kms.v1.asymmetricsignature import asymmetric_signature_crypto_service_pb2 as cpb
    from yandex.cloud.kms.v1.asymmetricsignature import asymmetric_signature_key_pb2 as kpb
    from yandex.cloud.kms.v1.asymmetricsignature import asymmetric_signature_key_service_pb2 as spb
    from yandex.cloud.kms.v1.asymmetricsignature.asymmetric_signature_crypto_service_pb2_grpc import (
        AsymmetricSignatureCryptoServiceStub,
    )
    from yandex.cloud.kms.v1.asymmetricsignature.asymmetric_signature_key_service_pb2_grpc import (
        AsymmetricSignatureKeyServiceStub,
    )

    sdk = yandexcloud.SDK(endpoint=endpoint, iam_token=token, root_certificates=ca)
    keys = sdk.client(AsymmetricSignatureKeyServiceStub)
    crypto = sdk.client(AsymmetricSignatureCryptoServiceStub)
    # The SDK's own discovery result (ApiEndpointService.List, made by the first client()).
    discovered = dict(sdk._channels.endpoints)
    print(f"yandexcloud {yandexcloud._channels.VERSION} discovered via {endpoint}: "
          + ", ".join(f"{k}={v}" for k, v in sorted(discovered.items())))
    for service in ("kms", "operation", "iam"):
        assert discovered.get(service) == endpoint, f"{service} -> {discovered.get(service)}"

    for algorithm, kind in KEYS.items():
        op = keys.Create(
            spb.CreateAsymmetricSignatureKeyRequest(
                folder_id=FOLDER,
                name=f"tls-{kind}",
                signature_algorithm=kpb.AsymmetricSignatureAlgorithm.Value(algorithm),
            ),
            timeout=TIMEOUT,
        )
        created = sdk.wait_operation_and_get_result(
            op,
            response_type=kpb.AsymmetricSignatureKey,
            meta_type=spb.CreateAsymmetricSignatureKeyMetadata,
            timeout=TIMEOUT,
        )
        key_id = created.meta.key_id
        assert created.response.id == key_id, (created.response.id, key_id)
        assert created.response.status == kpb.AsymmetricSignatureKey.Status.ACTIVE

        message = f"p11kms over TLS signs for {key_id}".encode()
        signed = crypto.Sign(cpb.AsymmetricSignRequest(key_id=key_id, message=message), timeout=TIMEOUT)
        assert signed.key_id == key_id
        pem = crypto.GetPublicKey(cpb.AsymmetricGetPublicKeyRequest(key_id=key_id), timeout=TIMEOUT).public_key
        verify(pem, kind, message, signed.signature)
        print(f"{algorithm}: created {key_id}, signed, verified")

    assert opened, "no channel was opened"
    print(f"{len(KEYS)}/{len(KEYS)} keys created, signed and verified over TLS; "
          f"{len(opened)} TLS channels, all to {endpoint}; all OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
