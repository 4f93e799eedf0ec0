#!/usr/bin/env python3
"""Drive the key service of a running p11kms through the official Yandex Cloud
Python SDK, for every algorithm, and verify every signature with `cryptography`.

Usage: sdk_keys.py ENDPOINT P11KMS_BINARY

ENDPOINT is host:port of a plaintext gRPC listener (e.g. 127.0.0.1:50051).
P11KMS_BINARY is the `p11kms` executable; its `keys undelete` restores keys
(the admin API is p11kms's own, so the SDK has no stub for it).
P11KMS_TOKEN (environment) is a bearer token with kms.admin on the folder the keys
are created in.

For each of the 13 algorithms:
  1. Create (deletion protection on) with AsymmetricSignatureKeyServiceStub and
     wait with sdk.wait_operation_and_get_result (metadata and response typed);
  2. Sign with the crypto service; the signature verifies with `cryptography`;
  3. Update status INACTIVE; Sign is refused with FAILED_PRECONDITION;
  4. Update status ACTIVE; Sign works again;
  5. Delete is refused with FAILED_PRECONDITION while protected;
  6. Update deletion_protection false, Delete; Get and Sign return NOT_FOUND;
  7. `p11kms keys undelete`; Sign works and verifies again;
then ListOperations shows the key's history, newest first.

How the SDK is used. Clients come from
`yandexcloud.SDK().client(Stub, endpoint=ENDPOINT, insecure=True)`: a bare
grpc.insecure_channel, no contact with Yandex, and no authorization header of
the SDK's own: the script adds `authorization: Bearer $P11KMS_TOKEN` to every
call on channels to ENDPOINT (p11kms_auth.py), and `p11kms keys` reads the same
variable. The
operation waiter is the SDK's own `wait_operation_and_get_result`, but it
always asks the SDK for an OperationService client *without* an endpoint
(yandexcloud/_operation_waiter.py: `sdk.client(OperationServiceStub,
interceptor=RetryInterceptor(...))`), which means TLS plus endpoint discovery
(ApiEndpointService.List on api.cloud.yandex.net). Against a plaintext
endpoint this script therefore places a plaintext channel to ENDPOINT in the
SDK's channel cache under the key the waiter looks up (service "operation", no
endpoint, not insecure) -- the one use of an SDK internal. Everything else --
the waiter's polling, its retry interceptor, unpacking metadata and response
-- is the SDK's code, and the script checks that OperationService.Get really
reached p11kms for every wait. Any other channel, TLS or non-loopback socket
fails the run.

Prints one line per algorithm with its create time, and a summary; exits 1 on
any failure, 2 on bad usage.
"""

import json
import subprocess
import sys
import time

import grpc

import sdk_guard
from cryptography.exceptions import InvalidSignature
from sdk_algorithms import ALGORITHMS, check_public_key, verify

TIMEOUT = 120  # seconds per call; RSA-4096 generation on a loaded machine
FOLDER = "sdk-interop"


class CountingInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Counts the calls that go through a channel, by method."""

    def __init__(self):
        self.calls = {}

    def intercept_unary_unary(self, continuation, details, request):
        self.calls[details.method] = self.calls.get(details.method, 0) + 1
        return continuation(details, request)


def expect_code(code, call):
    try:
        call()
    except grpc.RpcError as e:
        if e.code() != code:
            raise AssertionError(f"expected {code}, got {e.code()}: {e.details()}") from e
        return e.details()
    raise AssertionError(f"expected {code}, the call succeeded")


def main(argv):
    if len(argv) != 3 or argv[1] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[3], file=sys.stderr)
        return 2
    endpoint, p11kms = argv[1], argv[2]
    sdk_guard.plaintext_to(endpoint)

    import yandexcloud
    from google.protobuf.field_mask_pb2 import FieldMask
    from yandex.cloud.kms.v1.asymmetricsignature import asymmetric_signature_crypto_service_pb2 as cpb
    from yandex.cloud.kms.v1.asymmetricsignature import asymmetric_signature_key_pb2 as kpb
    from yandex.cloud.kms.v1.asymmetricsignature import asymmetric_signature_key_service_pb2 as spb
    from yandex.cloud.kms.v1.asymmetricsignature.asymmetric_signature_crypto_service_pb2_grpc import (
        AsymmetricSignatureCryptoServiceStub,
    )
    from yandex.cloud.kms.v1.asymmetricsignature.asymmetric_signature_key_service_pb2_grpc import (
        AsymmetricSignatureKeyServiceStub,
    )

    sdk = yandexcloud.SDK(user_agent="p11kms-interop-keys")
    keys = sdk.client(AsymmetricSignatureKeyServiceStub, endpoint=endpoint, insecure=True)
    crypto = sdk.client(AsymmetricSignatureCryptoServiceStub, endpoint=endpoint, insecure=True)

    # The waiter's OperationService channel (see the module docstring).
    ops_counter = CountingInterceptor()
    sdk._channels._channels[("operation", None, False)] = grpc.intercept_channel(
        grpc.insecure_channel(endpoint), ops_counter
    )
    waits = 0

    def wait(op, response_type, meta_type):
        nonlocal waits
        assert op.done, f"operation {op.id} is not done"
        result = sdk.wait_operation_and_get_result(
            op, response_type=response_type, meta_type=meta_type, timeout=TIMEOUT
        )
        waits += 1
        return result

    def update(key_id, paths, meta=spb.UpdateAsymmetricSignatureKeyMetadata, **fields):
        op = keys.Update(
            spb.UpdateAsymmetricSignatureKeyRequest(
                key_id=key_id, update_mask=FieldMask(paths=paths), **fields
            ),
            timeout=TIMEOUT,
        )
        result = wait(op, kpb.AsymmetricSignatureKey, meta)
        assert result.meta.key_id == key_id
        assert result.response.id == key_id
        return result.response

    def sign(key_id, algorithm, pem):
        message = f"p11kms signs for {key_id} ({algorithm})".encode()
        resp = crypto.Sign(cpb.AsymmetricSignRequest(key_id=key_id, message=message), timeout=TIMEOUT)
        assert resp.key_id == key_id
        verify(check_public_key(pem, algorithm), algorithm, resp.signature, message)

    print(f"yandexcloud {yandexcloud._channels.VERSION} -> {endpoint} (insecure, bearer token from P11KMS_TOKEN)")
    failures = []
    for algorithm in ALGORITHMS:
        try:
            started = time.monotonic()
            op = keys.Create(
                spb.CreateAsymmetricSignatureKeyRequest(
                    folder_id=FOLDER,
                    name=algorithm.lower().replace("_", "-"),
                    labels={"suite": "sdk-keys"},
                    signature_algorithm=kpb.AsymmetricSignatureAlgorithm.Value(algorithm),
                    deletion_protection=True,
                ),
                timeout=TIMEOUT,
            )
            created = wait(op, kpb.AsymmetricSignatureKey, spb.CreateAsymmetricSignatureKeyMetadata)
            took = time.monotonic() - started
            key = created.response
            key_id = created.meta.key_id
            assert key.id == key_id, (key.id, key_id)
            assert len(key_id) == 20 and key_id[0].isalpha() and key_id.islower(), key_id
            assert key.status == kpb.AsymmetricSignatureKey.Status.ACTIVE
            assert kpb.AsymmetricSignatureAlgorithm.Name(key.signature_algorithm) == algorithm
            assert key.deletion_protection and key.folder_id == FOLDER
            assert keys.Get(spb.GetAsymmetricSignatureKeyRequest(key_id=key_id), timeout=TIMEOUT) == key

            pem = crypto.GetPublicKey(
                cpb.AsymmetricGetPublicKeyRequest(key_id=key_id), timeout=TIMEOUT
            ).public_key
            sign(key_id, algorithm, pem)

            inactive = update(key_id, ["status"], status=kpb.AsymmetricSignatureKey.Status.INACTIVE)
            assert inactive.status == kpb.AsymmetricSignatureKey.Status.INACTIVE
            expect_code(
                grpc.StatusCode.FAILED_PRECONDITION,
                lambda: crypto.Sign(cpb.AsymmetricSignRequest(key_id=key_id, message=b"x"), timeout=TIMEOUT),
            )
            update(key_id, ["status"], status=kpb.AsymmetricSignatureKey.Status.ACTIVE)
            sign(key_id, algorithm, pem)

            detail = expect_code(
                grpc.StatusCode.FAILED_PRECONDITION,
                lambda: keys.Delete(spb.DeleteAsymmetricSignatureKeyRequest(key_id=key_id), timeout=TIMEOUT),
            )
            assert "deletion protection" in detail, detail
            update(key_id, ["deletion_protection"], deletion_protection=False)
            op = keys.Delete(spb.DeleteAsymmetricSignatureKeyRequest(key_id=key_id), timeout=TIMEOUT)
            deleted = wait(op, kpb.AsymmetricSignatureKey, spb.DeleteAsymmetricSignatureKeyMetadata)
            assert deleted.response.id == key_id and deleted.meta.key_id == key_id
            expect_code(
                grpc.StatusCode.NOT_FOUND,
                lambda: keys.Get(spb.GetAsymmetricSignatureKeyRequest(key_id=key_id), timeout=TIMEOUT),
            )
            expect_code(
                grpc.StatusCode.NOT_FOUND,
                lambda: crypto.Sign(cpb.AsymmetricSignRequest(key_id=key_id, message=b"x"), timeout=TIMEOUT),
            )

            out = subprocess.run(
                [p11kms, "keys", "--endpoint", f"http://{endpoint}", "--json", "undelete", key_id],
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
            assert out.returncode == 0, f"p11kms keys undelete failed: {out.stderr}"
            assert json.loads(out.stdout)["id"] == key_id
            sign(key_id, algorithm, pem)

            history = keys.ListOperations(
                spb.ListAsymmetricSignatureKeyOperationsRequest(key_id=key_id), timeout=TIMEOUT
            ).operations
            descriptions = [o.description for o in history]
            assert descriptions == [
                "Undelete asymmetric signature key",
                "Delete asymmetric signature key",
                "Update asymmetric signature key",
                "Update asymmetric signature key",
                "Update asymmetric signature key",
                "Create asymmetric signature key",
            ], descriptions
            assert history[-1].metadata.type_url == (
                "type.googleapis.com/yandex.cloud.kms.v1.asymmetricsignature.CreateAsymmetricSignatureKeyMetadata"
            ), history[-1].metadata.type_url
            print(f"  ok  {algorithm:<28} {key_id}  created in {took * 1000:7.1f} ms")
        except (AssertionError, InvalidSignature, grpc.RpcError) as e:
            failures.append(algorithm)
            print(f"  FAIL {algorithm}: {type(e).__name__}: {e}")

    gets = ops_counter.calls.get("/yandex.cloud.operation.OperationService/Get", 0)
    print(f"OperationService.Get calls made by the SDK waiter: {gets} for {waits} waits")
    if gets < waits:
        failures.append("waiter")
        print("FAIL: the SDK waiter did not poll OperationService.Get on p11kms for every wait")
    if failures:
        print(f"FAILED: {', '.join(failures)}")
        return 1
    print(f"all {len(ALGORITHMS)} algorithms: create, sign, deactivate, reactivate, protect, delete, undelete")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
