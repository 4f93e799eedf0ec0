#!/usr/bin/env python3
"""Authenticate to p11kms's Alibaba OpenAPI front with the official Alibaba Python
SDKs, unmodified, and report what each SDK surfaced, one JSON object per line.

Usage: alibaba_openapi_auth.py ENDPOINT FULL_ENDPOINT PUBLIC_KEY_PEM

ENDPOINT is host:port of a plaintext OpenAPI endpoint that answers AsymmetricSign
with an ECDSA P-256 signature of the Digest sent; PUBLIC_KEY_PEM is the file with
that key's public key. FULL_ENDPOINT is an endpoint whose nonce memory is full after
one request. P11KMS_ALIBABA_AK_ID and P11KMS_ALIBABA_AK_SECRET (environment) are an
AccessKey pair the endpoints accept; the secret never appears on a command line and
is never printed.

Clients (each as a user would set it up):
  acs3 - alibabacloud-kms20160120, default signer (ACS3-HMAC-SHA256);
  v2   - alibabacloud-kms20160120 with signature_algorithm='v2' (RPC v1 HMAC-SHA1);
  core - aliyun-python-sdk-core + aliyun-python-sdk-kms (RPC v1 HMAC-SHA1).

Cases per client: ok (the signature returned verifies with `cryptography`),
wrong_secret, unknown_id, sts (a security token configured), replay (the SDK's nonce
generator made to return one value, so the second call repeats the first's nonce;
first_ok says whether the first call went through). acs3 also runs fill (a first
request to FULL_ENDPOINT, which fills its memory) and full (a fresh one after it).
Both endpoints sign with the same key.

Sockets may only connect to loopback addresses (sdk_guard).
"""

import base64
import contextlib
import hashlib
import json
import os
import sys
import uuid

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

import sdk_guard

KEY_ID = "key-hzz65f1d8f8w9q6atnc1a"
VERSION_ID = "7d6a3b2f-1c4e-4b7a-9f0e-0123456789ab"


def digest_b64(message):
    return base64.b64encode(hashlib.sha256(message).digest()).decode()


def verify(public_key, value_b64, message):
    public_key.verify(
        base64.b64decode(value_b64),
        hashlib.sha256(message).digest(),
        ec.ECDSA(utils.Prehashed(hashes.SHA256())),
    )


# --- alibabacloud-kms20160120 (tea-openapi) ------------------------------------------


def tea_client(endpoint, ak_id, secret, v2=False, sts=None):
    from alibabacloud_kms20160120.client import Client
    from alibabacloud_tea_openapi import models as open_api_models

    config = open_api_models.Config(
        access_key_id=ak_id,
        access_key_secret=secret,
        endpoint=endpoint,
        protocol="http",
        region_id="cn-hangzhou",
    )
    if v2:
        config.signature_algorithm = "v2"
    if sts:
        config.security_token = sts
    return Client(config)


def tea_sign(client, message):
    from alibabacloud_kms20160120 import models as kms

    r = client.asymmetric_sign(
        kms.AsymmetricSignRequest(
            key_id=KEY_ID,
            key_version_id=VERSION_ID,
            algorithm="ECDSA_SHA_256",
            digest=digest_b64(message),
        )
    )
    assert r.body.key_id == KEY_ID and r.body.key_version_id == VERSION_ID, r.body
    return r.body.value, r.body.request_id


def tea_error(e):
    return {
        "type": type(e).__name__,
        "code": getattr(e, "code", None),
        "status": getattr(e, "status_code", None),
        "message": getattr(e, "message", str(e)),
        "request_id": getattr(e, "request_id", None),
    }


@contextlib.contextmanager
def tea_pinned_nonce(value):
    """The SDK's nonce generator (Utils.get_nonce) returns VALUE while in the block."""
    from alibabacloud_tea_openapi.utils import Utils

    original = Utils.__dict__["get_nonce"]
    Utils.get_nonce = staticmethod(lambda: value)
    try:
        yield
    finally:
        Utils.get_nonce = original


# --- aliyun-python-sdk-core + aliyun-python-sdk-kms ----------------------------------


def core_client(ak_id, secret, sts=None):
    from aliyunsdkcore.client import AcsClient

    if sts:
        from aliyunsdkcore.auth.credentials import StsTokenCredential

        return AcsClient(region_id="cn-hangzhou", credential=StsTokenCredential(ak_id, secret, sts))
    return AcsClient(ak_id, secret, "cn-hangzhou")


def core_sign(client, endpoint, message):
    from aliyunsdkkms.request.v20160120.AsymmetricSignRequest import AsymmetricSignRequest

    req = AsymmetricSignRequest()
    req.set_endpoint(endpoint)
    req.set_protocol_type("http")
    req.set_KeyId(KEY_ID)
    req.set_KeyVersionId(VERSION_ID)
    req.set_Algorithm("ECDSA_SHA_256")
    req.set_Digest(digest_b64(message))
    body = json.loads(client.do_action_with_exception(req))
    assert body["KeyId"] == KEY_ID and body["KeyVersionId"] == VERSION_ID, body
    return body["Value"], body["RequestId"]


def core_error(e):
    get = lambda name: getattr(e, name)() if hasattr(e, name) else None  # noqa: E731
    return {
        "type": type(e).__name__,
        "code": get("get_error_code"),
        "status": get("get_http_status"),
        "message": get("get_error_msg"),
        "request_id": get("get_request_id"),
    }


@contextlib.contextmanager
def core_pinned_nonce(value):
    """The SDK's nonce generator (parameter_helper.get_uuid) returns VALUE in the block."""
    from aliyunsdkcore.utils import parameter_helper

    original = parameter_helper.get_uuid
    parameter_helper.get_uuid = lambda: value
    try:
        yield
    finally:
        parameter_helper.get_uuid = original


# --- the cases -------------------------------------------------------------------------


def run(client_name, endpoint, full_endpoint, ak_id, secret, public_key):
    if client_name == "core":
        make = lambda ak, sec, sts=None: core_client(ak, sec, sts)  # noqa: E731
        sign = lambda c, m: core_sign(c, endpoint, m)  # noqa: E731
        error = core_error
        pinned_nonce = core_pinned_nonce
    else:
        v2 = client_name == "v2"
        make = lambda ak, sec, sts=None: tea_client(endpoint, ak, sec, v2, sts)  # noqa: E731
        sign = tea_sign
        error = tea_error
        pinned_nonce = tea_pinned_nonce

    def attempt(case, client, message=b"hello alibaba", **extra):
        try:
            value, request_id = sign(client, message)
        except Exception as e:  # noqa: BLE001 - the SDK's own exception is the result
            return {"client": client_name, "case": case, "ok": False, **error(e), **extra}
        verify(public_key, value, message)
        return {"client": client_name, "case": case, "ok": True, "verified": True,
                "request_id": request_id, **extra}

    yield attempt("ok", make(ak_id, secret))
    yield attempt("wrong_secret", make(ak_id, secret + "x"))
    yield attempt("unknown_id", make("LTAI-unknown-id", secret))
    yield attempt("sts", make(ak_id, secret, "sts-token-value"))

    # The replay: the SDK's own nonce generator returns one value twice.
    with pinned_nonce("replay-" + client_name + "-" + uuid.uuid4().hex):
        client = make(ak_id, secret)
        first = attempt("replay_first", client)
        yield attempt("replay", client, first_ok=first["ok"])

    if client_name == "acs3":
        yield attempt("fill", tea_client(full_endpoint, ak_id, secret))
        yield attempt("full", tea_client(full_endpoint, ak_id, secret))


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    endpoint, full_endpoint, pem_path = sys.argv[1:]
    ak_id = os.environ.get("P11KMS_ALIBABA_AK_ID", "")
    secret = os.environ.get("P11KMS_ALIBABA_AK_SECRET", "")
    if not ak_id or not secret:
        raise SystemExit("set P11KMS_ALIBABA_AK_ID and P11KMS_ALIBABA_AK_SECRET")
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        os.environ.pop(proxy, None)
    sdk_guard.loopback_sockets_only()
    with open(pem_path, "rb") as f:
        public_key = serialization.load_pem_public_key(f.read())
    for client_name in ("acs3", "v2", "core"):
        for result in run(client_name, endpoint, full_endpoint, ak_id, secret, public_key):
            print(json.dumps(result), flush=True)

if __name__ == "__main__":
    main()
