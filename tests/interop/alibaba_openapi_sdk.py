#!/usr/bin/env python3
"""Drive p11kms's Alibaba Cloud KMS OpenAPI front, served by the real daemon, with the
official Alibaba Python SDKs, unmodified, and check every answer.

Usage: alibaba_openapi_sdk.py MODE ARGS_JSON

ARGS_JSON is one JSON object (see each mode). P11KMS_ALIBABA_AK_ID and
P11KMS_ALIBABA_AK_SECRET (environment) are the daemon's AccessKey pair; the secret never
appears on a command line and is never printed.

Clients (each set up as a user would):
  acs3       - alibabacloud-kms20160120, default signer (ACS3-HMAC-SHA256), plain HTTP;
  v2         - the same with signature_algorithm='v2' (RPC v1 HMAC-SHA1), plain HTTP;
  core       - aliyun-python-sdk-core + aliyun-python-sdk-kms (RPC v1), plain HTTP;
  acs3-https - alibabacloud-kms20160120 over HTTPS, trusting the daemon's CA with Config(ca=).

Modes:
  actions  {"endpoint", "tls_endpoint", "ca", "yandex_keys": {name: key id}}
           Every action of the contract's table through every client: keys of every spec
           created with CreateKey, every spec x algorithm signed and the signature verified
           with `cryptography` against GetPublicKey's PEM, AsymmetricVerify true and false,
           versions, aliases, tags, enable/disable, deletion, ListKeys paging, the keys of the
           Yandex front. Prints one JSON summary line (calls per client and action, verified
           signatures, the keys made) for the Rust side, which checks the other front.
  refusals {"endpoint", "key_id"}
           Requests that must be refused before the HSM: a table of bad parameters for every
           action (missing, empty, oversized, wrong type, bad base64) through the generic
           call_api of the current SDK with both signers, DryRun, and the security cases
           (replayed nonce, skewed clock, wrong secret, unknown AccessKeyId, a request changed
           after signing, STS). Prints one JSON summary line.

Every check is an assertion here: a failure exits non-zero with the traceback, and the Rust
test prints it. Sockets may only connect to loopback addresses (sdk_guard).
"""

import base64
import contextlib
import hashlib
import importlib
import json
import os
import re
import sys
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timedelta

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

import sdk_guard

ALGORITHMS = {
    "RSA_2048": ["RSA_PSS_SHA_256", "RSA_PKCS1_SHA_256"],
    "RSA_3072": ["RSA_PSS_SHA_256", "RSA_PKCS1_SHA_256"],
    "EC_P256": ["ECDSA_SHA_256"],
    "EC_P256K": ["ECDSA_SHA_256"],
}
CURVES = {"EC_P256": "secp256r1", "EC_P256K": "secp256k1"}
RSA_BITS = {"RSA_2048": 2048, "RSA_3072": 3072}
# Which client creates the key of each spec (every signer makes one).
CREATOR = {"RSA_2048": "acs3", "RSA_3072": "v2", "EC_P256": "core", "EC_P256K": "acs3-https"}


def b64(data):
    return base64.b64encode(data).decode()


def sha256(data):
    return hashlib.sha256(data).digest()


def snake(name):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class ApiError(Exception):
    """An error answer, as the SDK surfaced it."""

    def __init__(self, code, status, message, request_id):
        super().__init__(f"{code} ({status}): {message}")
        self.code, self.status, self.message, self.request_id = code, status, message, request_id


def fails(call, code, status, *needles):
    """Runs CALL, which must fail with CODE and STATUS (and a message with every needle)."""
    try:
        result = call()
    except ApiError as e:
        assert (e.code, e.status) == (code, status), f"expected {code} ({status}), got {e}"
        assert e.request_id, f"no request id: {e}"
        for needle in needles:
            assert needle in e.message, f"{e} lacks {needle!r}"
        return e
    raise AssertionError(f"expected {code} ({status}), got {result}")


# --- clients ---------------------------------------------------------------------------


class Tea:
    """alibabacloud-kms20160120: typed model calls, or the generic call_api."""

    def __init__(self, name, endpoint, ak_id, secret, v2=False, ca=None, sts=None, https=None):
        from alibabacloud_kms20160120.client import Client
        from alibabacloud_tea_openapi import utils_models

        config = utils_models.Config(
            access_key_id=ak_id,
            access_key_secret=secret,
            endpoint=endpoint,
            protocol="https" if (https or ca) else "http",
            region_id="cn-hangzhou",
        )
        if ca:
            config.ca = ca
        if v2:
            config.signature_algorithm = "v2"
        if sts:
            config.security_token = sts
        self.name = name
        self.client = Client(config)
        self.calls = Counter()

    @staticmethod
    def _error(e):
        return ApiError(
            getattr(e, "code", None),
            getattr(e, "status_code", None),
            getattr(e, "message", str(e)),
            getattr(e, "request_id", None),
        )

    def call(self, action, **params):
        """The SDK's own method and request model for ACTION; the reply body as a dict."""
        from alibabacloud_kms20160120 import models

        request = getattr(models, action + "Request")(**{snake(k): v for k, v in params.items()})
        self.calls[action] += 1
        try:
            response = getattr(self.client, snake(action))(request)
        except Exception as e:  # noqa: BLE001 - the SDK's exception is the result
            if getattr(e, "code", None) is None:
                raise
            raise self._error(e) from None
        assert response.status_code == 200, response
        body = response.body.to_map()
        assert body.get("RequestId"), body
        return body

    def call_raw(self, action, query, body=None):
        """The generic call_api, with QUERY (and a form BODY) exactly as given (strings)."""
        from alibabacloud_tea_openapi import utils_models
        from alibabacloud_tea_openapi.utils import Utils
        from darabonba.runtime import RuntimeOptions

        params = utils_models.Params(
            action=action, version="2016-01-20", protocol="HTTPS", pathname="/",
            method="POST", auth_type="AK", style="RPC", req_body_type="formData",
            body_type="json",
        )
        request = utils_models.OpenApiRequest(query=Utils.query(query), body=body)
        self.calls[action] += 1
        try:
            return self.client.call_api(params, request, RuntimeOptions())["body"]
        except Exception as e:  # noqa: BLE001
            if getattr(e, "code", None) is None:
                raise
            raise self._error(e) from None


class Core:
    """aliyun-python-sdk-core + aliyun-python-sdk-kms: each action's request class."""

    def __init__(self, name, endpoint, ak_id, secret, sts=None, ca=None):
        from aliyunsdkcore.client import AcsClient

        if sts:
            from aliyunsdkcore.auth.credentials import StsTokenCredential

            self.client = AcsClient(
                region_id="cn-hangzhou", credential=StsTokenCredential(ak_id, secret, sts)
            )
        else:
            self.client = AcsClient(ak_id, secret, "cn-hangzhou", verify=ca)
        self.name, self.endpoint, self.https = name, endpoint, bool(ca)
        self.calls = Counter()

    def call(self, action, **params):
        from aliyunsdkcore.acs_exception.exceptions import ServerException

        module = importlib.import_module(f"aliyunsdkkms.request.v20160120.{action}Request")
        request = getattr(module, action + "Request")()
        request.set_endpoint(self.endpoint)
        request.set_protocol_type("https" if self.https else "http")
        for name, value in params.items():
            getattr(request, "set_" + name)(value)
        self.calls[action] += 1
        try:
            body = json.loads(self.client.do_action_with_exception(request))
        except ServerException as e:
            raise ApiError(
                e.get_error_code(), e.get_http_status(), e.get_error_msg(), e.get_request_id()
            ) from None
        assert body.get("RequestId"), body
        return body


@contextlib.contextmanager
def patched(owner, name, value):
    original = owner.__dict__[name]
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


def pinned_nonce(client, value):
    """The SDK's own nonce generator returns VALUE in the block."""
    if isinstance(client, Core):
        from aliyunsdkcore.utils import parameter_helper

        return patched(parameter_helper, "get_uuid", lambda: value)
    from alibabacloud_tea_openapi.utils import Utils

    return patched(Utils, "get_nonce", staticmethod(lambda: value))


def pinned_clock(client, offset):
    """The SDK's own clock is OFFSET off in the block."""
    stamp = (datetime.utcnow() + offset).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(client, Core):
        from aliyunsdkcore.utils import parameter_helper

        return patched(parameter_helper, "get_iso_8061_date", lambda: stamp)
    from alibabacloud_tea_openapi.utils import Utils

    return patched(Utils, "get_timestamp", staticmethod(lambda: stamp))


@contextlib.contextmanager
def in_transit(change):
    """CHANGE(prepared_request) runs on every request `requests` sends in the block, after
    the SDK signed it: what a proxy rewriting the request would do."""
    import requests

    send = requests.Session.send

    def tampered(session, prepared, **kwargs):
        change(prepared)
        return send(session, prepared, **kwargs)

    with patched(requests.Session, "send", tampered):
        yield


# --- signatures ------------------------------------------------------------------------


def verify(pem, spec, algorithm, digest, signature):
    """Verifies with `cryptography`; checks the key's type and size first."""
    key = serialization.load_pem_public_key(pem.encode())
    prehashed = utils.Prehashed(hashes.SHA256())
    if spec in RSA_BITS:
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == RSA_BITS[spec], pem
        if algorithm == "RSA_PSS_SHA_256":
            pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        else:
            assert algorithm == "RSA_PKCS1_SHA_256", algorithm
            pad = padding.PKCS1v15()
        key.verify(signature, digest, pad, prehashed)
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == CURVES[spec], pem
        assert algorithm == "ECDSA_SHA_256", algorithm
        key.verify(signature, digest, ec.ECDSA(prehashed))


class Verified:
    """Counts the signatures verified, per client."""

    def __init__(self):
        self.count = Counter()

    def sign_and_check(self, c, key_id, version, spec, algorithm, pem, message, expect_key=None):
        digest = sha256(message)
        r = c.call("AsymmetricSign", KeyId=key_id, KeyVersionId=version,
                   Algorithm=algorithm, Digest=b64(digest))
        assert r["KeyId"] == (expect_key or key_id), r
        assert r["KeyVersionId"] == version, r
        signature = base64.b64decode(r["Value"], validate=True)
        verify(pem, spec, algorithm, digest, signature)
        self.count[c.name] += 1
        return signature


# --- mode: actions ---------------------------------------------------------------------


def public_key(c, key_id, version):
    r = c.call("GetPublicKey", KeyId=key_id, KeyVersionId=version)
    assert r["KeyVersionId"] == version, r
    assert r["PublicKey"].startswith("-----BEGIN PUBLIC KEY-----"), r
    return r["KeyId"], r["PublicKey"]


def create_key(c, spec, **extra):
    r = c.call("CreateKey", KeySpec=spec, KeyUsage="SIGN/VERIFY", **extra)
    m = r["KeyMetadata"]
    assert m["KeySpec"] == spec and m["KeyUsage"] == "SIGN/VERIFY", m
    assert m["KeyState"] == "Enabled" and m["PrimaryKeyVersion"], m
    assert m["Arn"].endswith(":key/" + m["KeyId"]), m
    return m


def state(c, key_id):
    return c.call("DescribeKey", KeyId=key_id)["KeyMetadata"]["KeyState"]


def crypto_matrix(c, keys, verified):
    """Every spec x algorithm: sign, verify here, AsymmetricVerify true and false."""
    for spec, key in keys.items():
        got_id, pem = public_key(c, key["KeyId"], key["Version"])
        assert got_id == key["KeyId"] and pem == key["PublicKey"], (c.name, spec)
        for algorithm in ALGORITHMS[spec]:
            message = f"{c.name} signs with {spec} {algorithm}".encode()
            signature = verified.sign_and_check(
                c, key["KeyId"], key["Version"], spec, algorithm, pem, message)
            common = dict(KeyId=key["KeyId"], KeyVersionId=key["Version"], Algorithm=algorithm)
            ok = c.call("AsymmetricVerify", Digest=b64(sha256(message)), Value=b64(signature),
                        **common)
            assert ok["Value"] is True and ok["KeyId"] == key["KeyId"], ok
            bad = c.call("AsymmetricVerify", Digest=b64(sha256(message + b"!")),
                         Value=b64(signature), **common)
            assert bad["Value"] is False, bad


def lifecycle(c, keys, verified):
    """Versions, aliases, tags, description, enable/disable and deletion on a key of C's own."""
    n = c.name
    m = create_key(c, "EC_P256", Description=f"made by {n}")
    key_id, v1 = m["KeyId"], m["PrimaryKeyVersion"]
    assert c.call("DescribeKey", KeyId=key_id)["KeyMetadata"]["Description"] == f"made by {n}"
    c.call("UpdateKeyDescription", KeyId=key_id, Description=f"{n}: described again")
    assert c.call("DescribeKey", KeyId=key_id)["KeyMetadata"]["Description"] == \
        f"{n}: described again"

    # Versions: a new one becomes primary; each signs and verifies under its own public key.
    _, pem1 = public_key(c, key_id, v1)
    v = c.call("CreateKeyVersion", KeyId=key_id)["KeyVersion"]
    assert v["KeyId"] == key_id and v["KeyVersionId"] != v1 and v["CreationDate"], v
    v2 = v["KeyVersionId"]
    _, pem2 = public_key(c, key_id, v2)
    assert pem1 != pem2
    assert c.call("DescribeKey", KeyId=key_id)["KeyMetadata"]["PrimaryKeyVersion"] == v2
    sig1 = verified.sign_and_check(c, key_id, v1, "EC_P256", "ECDSA_SHA_256", pem1, b"old")
    sig2 = verified.sign_and_check(c, key_id, v2, "EC_P256", "ECDSA_SHA_256", pem2, b"new")
    for version, sig, other in ((v1, sig1, sig2), (v2, sig2, sig1)):
        msg = b"old" if version == v1 else b"new"
        common = dict(KeyId=key_id, KeyVersionId=version, Algorithm="ECDSA_SHA_256",
                      Digest=b64(sha256(msg)))
        assert c.call("AsymmetricVerify", Value=b64(sig), **common)["Value"] is True
        assert c.call("AsymmetricVerify", Value=b64(other), **common)["Value"] is False
    listed = c.call("ListKeyVersions", KeyId=key_id, PageNumber=1, PageSize=10)
    ids = [x["KeyVersionId"] for x in listed["KeyVersions"]["KeyVersion"]]
    assert sorted(ids) == sorted([v1, v2]) and listed["TotalCount"] == 2, listed
    assert all(x["KeyId"] == key_id for x in listed["KeyVersions"]["KeyVersion"]), listed
    page2 = c.call("ListKeyVersions", KeyId=key_id, PageNumber=2, PageSize=1)
    assert len(page2["KeyVersions"]["KeyVersion"]) == 1 and page2["TotalCount"] == 2, page2
    d = c.call("DescribeKeyVersion", KeyId=key_id, KeyVersionId=v1)["KeyVersion"]
    assert (d["KeyId"], d["KeyVersionId"]) == (key_id, v1), d
    fails(lambda: c.call("DescribeKeyVersion", KeyId=key_id, KeyVersionId=str(uuid.uuid4())),
          "Forbidden.KeyVersionNotFound", 404)

    # Aliases: sign through one, repoint it, list, delete.
    alias = f"alias/sdk-{n}"
    c.call("CreateAlias", AliasName=alias, KeyId=key_id)
    verified.sign_and_check(c, alias, v2, "EC_P256", "ECDSA_SHA_256", pem2, b"via alias",
                            expect_key=key_id)
    fails(lambda: c.call("CreateAlias", AliasName=alias, KeyId=key_id), "AliasAlreadyExists", 400)
    by_key = c.call("ListAliasesByKeyId", KeyId=key_id, PageNumber=1, PageSize=10)
    assert [a["AliasName"] for a in by_key["Aliases"]["Alias"]] == [alias], by_key
    assert by_key["Aliases"]["Alias"][0]["AliasArn"].endswith(":" + alias), by_key
    other = keys["EC_P256K"]
    c.call("UpdateAlias", AliasName=alias, KeyId=other["KeyId"])
    verified.sign_and_check(c, alias, other["Version"], "EC_P256K", "ECDSA_SHA_256",
                            other["PublicKey"], b"via repointed alias", expect_key=other["KeyId"])
    every = c.call("ListAliases", PageNumber=1, PageSize=100)
    found = [a for a in every["Aliases"]["Alias"] if a["AliasName"] == alias]
    assert [a["KeyId"] for a in found] == [other["KeyId"]], every
    assert c.call("ListAliasesByKeyId", KeyId=key_id)["Aliases"]["Alias"] == []
    c.call("DeleteAlias", AliasName=alias)
    fails(lambda: c.call("DeleteAlias", AliasName=alias), "Forbidden.AliasNotFound", 404)
    fails(lambda: c.call("GetPublicKey", KeyId=alias, KeyVersionId=v2),
          "Forbidden.AliasNotFound", 404)

    # Tags.
    c.call("TagResource", KeyId=key_id,
           Tags=json.dumps([{"TagKey": "team", "TagValue": n}, {"TagKey": "env", "TagValue": "t"}]))
    tags = c.call("ListResourceTags", KeyId=key_id)["Tags"]["Tag"]
    assert sorted((t["TagKey"], t["TagValue"]) for t in tags) == [("env", "t"), ("team", n)], tags
    c.call("UntagResource", KeyId=key_id, TagKeys=json.dumps(["env"]))
    tags = c.call("ListResourceTags", KeyId=key_id)["Tags"]["Tag"]
    assert [(t["KeyId"], t["TagKey"]) for t in tags] == [(key_id, "team")], tags

    # Disable, enable: signing is refused while disabled.
    digest = b64(sha256(b"state"))
    sign = lambda: c.call("AsymmetricSign", KeyId=key_id, KeyVersionId=v2,  # noqa: E731
                          Algorithm="ECDSA_SHA_256", Digest=digest)
    c.call("DisableKey", KeyId=key_id)
    assert state(c, key_id) == "Disabled"
    fails(sign, "Rejected.Disabled", 409)
    c.call("EnableKey", KeyId=key_id)
    assert state(c, key_id) == "Enabled"
    verified.sign_and_check(c, key_id, v2, "EC_P256", "ECDSA_SHA_256", pem2, b"enabled again")

    # Deletion, cancelled.
    fails(lambda: c.call("CancelKeyDeletion", KeyId=key_id), "Rejected.StateModifiedFailed", 409)
    c.call("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=7)
    m = c.call("DescribeKey", KeyId=key_id)["KeyMetadata"]
    assert m["KeyState"] == "PendingDeletion" and m["DeleteDate"], m
    fails(sign, "Rejected.PendingDeletion", 409)
    fails(lambda: c.call("DisableKey", KeyId=key_id), "Rejected.StateModifiedFailed", 409)
    fails(lambda: c.call("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=7),
          "Rejected.StateModifiedFailed", 409)
    fails(lambda: c.call("CreateAlias", AliasName=alias, KeyId=key_id),
          "Rejected.StateModifiedFailed", 409)
    c.call("CancelKeyDeletion", KeyId=key_id)
    m = c.call("DescribeKey", KeyId=key_id)["KeyMetadata"]
    assert m["KeyState"] == "Enabled" and m["DeleteDate"] == "", m
    verified.sign_and_check(c, key_id, v2, "EC_P256", "ECDSA_SHA_256", pem2, b"restored")
    return {"KeyId": key_id, "Versions": [v1, v2], "PublicKeys": [pem1, pem2]}


def list_all_keys(c, page_size):
    """ListKeys page by page; checks every page's size and the paging fields."""
    first = c.call("ListKeys", PageNumber=1, PageSize=page_size)
    total = first["TotalCount"]
    pages, seen, number = -(-total // page_size), [], 1
    page = first
    while True:
        assert (page["PageNumber"], page["PageSize"], page["TotalCount"]) == \
            (number, page_size, total), page
        got = page["Keys"]["Key"]
        assert len(got) == min(page_size, total - len(seen)), (number, page)
        for k in got:
            assert k["KeyArn"].endswith(":key/" + k["KeyId"]), k
        seen += [k["KeyId"] for k in got]
        if number == pages:
            break
        number += 1
        page = c.call("ListKeys", PageNumber=number, PageSize=page_size)
    beyond = c.call("ListKeys", PageNumber=pages + 1, PageSize=page_size)
    assert beyond["Keys"]["Key"] == [] and beyond["TotalCount"] == total, beyond
    assert len(seen) == len(set(seen)) == total, f"duplicates or gaps: {seen}"
    return seen


def paging(c, made, secp256k1_key):
    whole = list_all_keys(c, 100)
    assert set(made) <= set(whole), (made, whole)
    for size in (1, 3, 7):
        assert list_all_keys(c, size) == whole, f"page size {size} changes the order"
    k = c.call("ListKeys", PageSize=100,
               Filters=json.dumps([{"Key": "KeySpec", "Values": ["EC_P256K"]}]))
    assert secp256k1_key in {x["KeyId"] for x in k["Keys"]["Key"]}, k
    assert k["TotalCount"] < len(whole), k
    return whole


def yandex_keys(c, ids, verified):
    """Keys of the Yandex front (the config's dev keys, and one made through its key service)
    through this one: those of an Alibaba spec sign; the others are described but refused."""
    served = {"p256": "EC_P256", "k256": "EC_P256K", "rsa2048": "RSA_2048", "rsa3072": "RSA_3072",
              "created": "EC_P256"}
    for name, spec in served.items():
        m = c.call("DescribeKey", KeyId=ids[name])["KeyMetadata"]
        assert m["KeySpec"] == spec and m["KeyState"] == "Enabled", m
        version = m["PrimaryKeyVersion"]
        versions = c.call("ListKeyVersions", KeyId=ids[name])["KeyVersions"]["KeyVersion"]
        assert version in [v["KeyVersionId"] for v in versions], versions
        _, pem = public_key(c, ids[name], version)
        for algorithm in ALGORITHMS[spec]:
            verified.sign_and_check(c, ids[name], version, spec, algorithm, pem,
                                    f"yandex {name} {algorithm}".encode())
    for name, spec in (("p384", "EC_P384"), ("rsa4096", "RSA_4096")):
        m = c.call("DescribeKey", KeyId=ids[name])["KeyMetadata"]
        assert m["KeySpec"] == spec, m
        version = m["PrimaryKeyVersion"]
        alg = "ECDSA_SHA_256" if spec.startswith("EC") else "RSA_PSS_SHA_256"
        fails(lambda: c.call("AsymmetricSign", KeyId=ids[name], KeyVersionId=version,
                             Algorithm=alg, Digest=b64(sha256(b"x"))),
              "UnsupportedOperation", 400, spec, "Yandex")
        fails(lambda: c.call("GetPublicKey", KeyId=ids[name], KeyVersionId=version),
              "UnsupportedOperation", 400, spec)


def mode_actions(args, ak_id, secret):
    ep, tls_ep, ca = args["endpoint"], args["tls_endpoint"], args["ca"]
    clients = {
        "acs3": Tea("acs3", ep, ak_id, secret),
        "v2": Tea("v2", ep, ak_id, secret, v2=True),
        "core": Core("core", ep, ak_id, secret),
        "acs3-https": Tea("acs3-https", tls_ep, ak_id, secret, ca=ca),
    }
    verified = Verified()

    # HTTPS needs the CA: without it the SDK refuses the dev certificate.
    try:
        Tea("no-ca", tls_ep, ak_id, secret, https=True).call("DescribeKey", KeyId="none")
        raise AssertionError("HTTPS without the CA went through")
    except ApiError as e:
        raise AssertionError(f"HTTPS without the CA reached the server: {e}") from None
    except Exception as e:  # noqa: BLE001 - the SDK's transport error
        assert "CERTIFICATE_VERIFY_FAILED" in str(e), e

    # One key per spec, each made by another client.
    keys = {}
    for spec, creator in CREATOR.items():
        c = clients[creator]
        m = create_key(c, spec)
        got, pem = public_key(c, m["KeyId"], m["PrimaryKeyVersion"])
        assert got == m["KeyId"]
        keys[spec] = {"KeyId": m["KeyId"], "Version": m["PrimaryKeyVersion"], "PublicKey": pem,
                      "Creator": creator}
        described = c.call("DescribeKey", KeyId=m["KeyId"])["KeyMetadata"]
        assert {k: described[k] for k in m} == m, (m, described)

    lifecycles = {}
    for c in clients.values():
        crypto_matrix(c, keys, verified)
        lifecycles[c.name] = lifecycle(c, keys, verified)
        yandex_keys(c, args["yandex_keys"], verified)
    made = [k["KeyId"] for k in keys.values()] + [x["KeyId"] for x in lifecycles.values()]
    listed = [paging(c, made, keys["EC_P256K"]["KeyId"]) for c in clients.values()]
    assert all(x == listed[0] for x in listed), "the clients page through different lists"

    # The legacy SDK over HTTPS too, trusting the CA with its verify= option.
    core_https = Core("core-https", tls_ep, ak_id, secret, ca=ca)
    k = keys["EC_P256"]
    verified.sign_and_check(core_https, k["KeyId"], k["Version"], "EC_P256", "ECDSA_SHA_256",
                            k["PublicKey"], b"legacy SDK over HTTPS")
    clients["core-https"] = core_https

    print(json.dumps({
        "calls": {name: dict(c.calls) for name, c in clients.items()},
        "verified": dict(verified.count),
        "keys": keys,
        "lifecycle_keys": lifecycles,
        "listed_keys": listed[0],
    }), flush=True)


# --- mode: refusals --------------------------------------------------------------------


def bad_input_cases(key_id, version):
    """(action, query, code, status, parameter named in the message, what[, form body])
    for every action."""
    d32 = b64(sha256(b"digest"))
    sig = b64(b"\x30" * 70)
    base = {
        "AsymmetricSign": {"KeyId": key_id, "KeyVersionId": version,
                           "Algorithm": "ECDSA_SHA_256", "Digest": d32},
        "AsymmetricVerify": {"KeyId": key_id, "KeyVersionId": version,
                             "Algorithm": "ECDSA_SHA_256", "Digest": d32, "Value": sig},
        "GetPublicKey": {"KeyId": key_id, "KeyVersionId": version},
        "CreateKey": {"KeySpec": "EC_P256", "KeyUsage": "SIGN/VERIFY"},
        "DescribeKey": {"KeyId": key_id},
        "ListKeys": {"PageNumber": "1", "PageSize": "10"},
        "EnableKey": {"KeyId": key_id},
        "DisableKey": {"KeyId": key_id},
        "ScheduleKeyDeletion": {"KeyId": key_id, "PendingWindowInDays": "7"},
        "CancelKeyDeletion": {"KeyId": key_id},
        "UpdateKeyDescription": {"KeyId": key_id, "Description": "d"},
        "CreateKeyVersion": {"KeyId": key_id},
        "ListKeyVersions": {"KeyId": key_id, "PageNumber": "1", "PageSize": "10"},
        "DescribeKeyVersion": {"KeyId": key_id, "KeyVersionId": version},
        "CreateAlias": {"AliasName": "alias/refused", "KeyId": key_id},
        "UpdateAlias": {"AliasName": "alias/refused", "KeyId": key_id},
        "DeleteAlias": {"AliasName": "alias/refused"},
        "ListAliases": {"PageNumber": "1", "PageSize": "10"},
        "ListAliasesByKeyId": {"KeyId": key_id, "PageNumber": "1", "PageSize": "10"},
        "TagResource": {"KeyId": key_id, "Tags": '[{"TagKey":"k","TagValue":"v"}]'},
        "UntagResource": {"KeyId": key_id, "TagKeys": '["k"]'},
        "ListResourceTags": {"KeyId": key_id},
    }
    required = {
        "AsymmetricSign": ["KeyId", "KeyVersionId", "Algorithm", "Digest"],
        "AsymmetricVerify": ["KeyId", "KeyVersionId", "Algorithm", "Digest", "Value"],
        "GetPublicKey": ["KeyId", "KeyVersionId"],
        "DescribeKey": ["KeyId"], "EnableKey": ["KeyId"], "DisableKey": ["KeyId"],
        "ScheduleKeyDeletion": ["KeyId", "PendingWindowInDays"],
        "CancelKeyDeletion": ["KeyId"], "UpdateKeyDescription": ["KeyId", "Description"],
        "CreateKeyVersion": ["KeyId"], "ListKeyVersions": ["KeyId"],
        "DescribeKeyVersion": ["KeyId", "KeyVersionId"],
        "CreateAlias": ["AliasName", "KeyId"], "UpdateAlias": ["AliasName", "KeyId"],
        "DeleteAlias": ["AliasName"], "ListAliasesByKeyId": ["KeyId"],
        "TagResource": ["KeyId", "Tags"], "UntagResource": ["KeyId", "TagKeys"],
        "ListResourceTags": ["KeyId"],
    }
    # Longest accepted value + 1 of each bounded string.
    oversized = {"KeyId": "k" * 256, "KeyVersionId": "v" * 65, "Algorithm": "A" * 65,
                 "AliasName": "alias/" + "a" * 250, "Description": "d" * 8193,
                 "KeySpec": "S" * 65, "KeyUsage": "U" * 65,
                 "Digest": b64(b"\x01" * 65), "Value": b64(b"\x01" * 1025)}
    wrong_type = {
        "PageNumber": ["one", "0", "1.5", "-1", "1000001"],
        "PageSize": ["ten", "0", "101", "1e1"],
        "PendingWindowInDays": ["seven", "6", "367", "7d"],
        "DryRun": ["yes", "1"],
        "Tags": ["not json", '{"TagKey":"k","TagValue":"v"}', '[{"TagKey":1}]',
                 '[{"TagKey":"k","Other":"x"}]'],
        "TagKeys": ["k", '[1]', '{"k":1}'],
        "Filters": ["[{", '[{"Key":"Color","Values":["x"]}]', '[{"Key":"KeySpec","Values":[]}]'],
        "EnableAutomaticRotation": ["maybe"],
    }
    bad_base64 = ["not base64!", "uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek",  # unpadded
                  "uU0nuZNNPgilLlLX2n2r-sSE7-N6U4DukIj3rOLvzek=", "aGl=", "aGk= "]
    cases = []
    for action, params in base.items():
        for name in required.get(action, []):
            q = {k: v for k, v in params.items() if k != name}
            cases.append((action, q, "MissingParameter", 400, name, "missing"))
            if name != "Description":  # an empty Description clears it
                cases.append((action, {**params, name: ""}, "MissingParameter", 400, name,
                              "empty"))
        for name in params:
            if name in oversized:
                cases.append((action, {**params, name: oversized[name]}, "InvalidParameter", 400,
                              name, "oversized"))
            if name in ("Digest", "Value"):
                for bad in bad_base64:
                    cases.append((action, {**params, name: bad}, "InvalidParameter", 400, name,
                                  "bad base64"))
            if name in ("KeyId", "AliasName", "Description"):
                cases.append((action, {**params, name: params[name] + "\x01"},
                              "InvalidParameter", 400, name, "control character"))
        extra = {"AsymmetricSign": ["DryRun"], "AsymmetricVerify": ["DryRun"],
                 "GetPublicKey": ["DryRun"], "ListKeys": ["Filters"],
                 "CreateKey": ["Tags", "EnableAutomaticRotation"]}.get(action, [])
        for name in list(params) + extra:
            for bad in wrong_type.get(name, []):
                cases.append((action, {**params, name: bad}, "InvalidParameter", 400, name,
                              "wrong type"))
        # One value past the request's per-value limit (32 KiB), in a form body (a query
        # string that long is over the header limit, below); then too many parameters, and
        # one given twice (query and body).
        first = next(iter(params))
        rest = {k: v for k, v in params.items() if k != first}
        cases.append((action, rest, "InvalidParameter", 400, first, "value over 32 KiB",
                      {first: "x" * (32 * 1024 + 1)}))
        cases.append((action, params, "ParseRequestParameterException", 400, None,
                      "65 parameters", {f"P{i}": "x" for i in range(65)}))
        cases.append((action, params, "InvalidParameter", 400, first, "given twice",
                      {first: params[first]}))
    # Values of the right type that are not valid for the action.
    sign = base["AsymmetricSign"]
    cases += [
        ("AsymmetricSign", {**sign, "Digest": b64(b"\x01" * 31)}, "InvalidParameter", 400,
         "Digest", "digest of 31 bytes"),
        ("AsymmetricSign", {**sign, "Digest": b64(sha256(b"x") * 2)}, "InvalidParameter", 400,
         "Digest", "digest of 64 bytes"),
        ("AsymmetricSign", {**sign, "Algorithm": "RSA_PSS_SHA_256"}, "InvalidParameter", 400,
         "Algorithm", "RSA algorithm on an EC key"),
        ("AsymmetricSign", {**sign, "Algorithm": "SHA256withECDSA"}, "InvalidParameter", 400,
         "Algorithm", "unknown algorithm"),
        ("AsymmetricSign", {**sign, "Algorithm": "SM2DSA"}, "InvalidParameter", 400,
         "Algorithm", "SM2"),
        ("AsymmetricVerify", {**base["AsymmetricVerify"], "Digest": b64(b"\x01" * 20)},
         "InvalidParameter", 400, "Digest", "digest of 20 bytes"),
        ("CreateKey", {"KeySpec": "Aliyun_AES_256"}, "InvalidParameter", 400, "KeySpec",
         "symmetric spec"),
        ("CreateKey", {"KeyUsage": "SIGN/VERIFY"}, "InvalidParameter", 400, "KeySpec",
         "no spec (the default is symmetric)"),
        ("CreateKey", {"KeySpec": "EC_SM2"}, "InvalidParameter", 400, "KeySpec", "SM2"),
        ("CreateKey", {"KeySpec": "RSA_1024"}, "InvalidParameter", 400, "KeySpec",
         "unknown spec"),
        ("CreateKey", {"KeySpec": "EC_P256", "KeyUsage": "ENCRYPT/DECRYPT"},
         "InvalidParameter", 400, "KeyUsage", "encryption usage"),
        ("CreateKey", {"KeySpec": "EC_P256", "ProtectionLevel": "CLOUD"},
         "InvalidParameter", 400, "ProtectionLevel", "unknown protection level"),
        ("CreateKey", {"KeySpec": "EC_P256", "EnableAutomaticRotation": "true"},
         "InvalidParameter", 400, "EnableAutomaticRotation", "rotation of an asymmetric key"),
        ("CreateKey", {"KeySpec": "EC_P256", "Tags": json.dumps(
            [{"TagKey": f"k{i}", "TagValue": "v"} for i in range(21)])},
         "InvalidParameter", 400, "Tags", "21 tags"),
        ("CreateKey", {"KeySpec": "EC_P256", "Origin": "EXTERNAL"}, "Unsupported.Origin", 400,
         None, "imported key material"),
        ("CreateAlias", {"AliasName": "refused", "KeyId": key_id}, "InvalidParameter", 400,
         "AliasName", "no alias/ prefix"),
        ("CreateAlias", {"AliasName": "alias/acs/x", "KeyId": key_id}, "InvalidParameter", 400,
         "AliasName", "reserved prefix"),
        ("TagResource", {"KeyId": key_id, "Tags": '[{"TagKey":"acs:x","TagValue":"v"}]'},
         "InvalidParameter", 400, "Tags", "reserved tag key"),
        ("TagResource", {"KeyId": key_id, "Tags": json.dumps([{"TagKey": "k" * 129}])},
         "InvalidParameter", 400, "Tags", "tag key too long"),
        ("TagResource", {"KeyId": key_id, "Tags": json.dumps(
            [{"TagKey": f"k{i}", "TagValue": "v"} for i in range(21)])},
         "InvalidParameter", 400, "Tags", "21 tags"),
        ("TagResource",
         {"KeyId": key_id, "Tags": json.dumps([{"TagKey": "k", "TagValue": "v" * 129}])},
         "InvalidParameter", 400, "Tags", "tag value too long"),
        ("UntagResource", {"KeyId": key_id, "TagKeys": json.dumps([f"k{i}" for i in range(21)])},
         "InvalidParameter", 400, "TagKeys", "21 tag keys"),
        ("ListKeys", {"Filters": json.dumps(
            [{"Key": "KeySpec", "Values": ["EC_P256"]} for _ in range(11)])},
         "InvalidParameter", 400, "Filters", "11 filters"),
        ("ListKeys", {"Filters": json.dumps(
            [{"Key": "KeySpec", "Values": [f"v{i}" for i in range(11)]}])},
         "InvalidParameter", 400, "Filters", "a filter of 11 values"),
        ("ScheduleKeyDeletion", {"KeyId": key_id, "PendingWindowInDays": "9" * 30},
         "InvalidParameter", 400, "PendingWindowInDays", "a 30-digit window"),
        ("Encrypt", {"KeyId": key_id, "Plaintext": "aGk="}, "UnsupportedOperation", 400, None,
         "an action p11kms does not serve"),
        # The query string counts toward server.max_header_list_size (16 KiB by default).
        ("UpdateKeyDescription", {"KeyId": key_id, "Description": "d" * 17000},
         "ParseRequestParameterException", 431, None, "query string over the header limit"),
    ]
    return cases


def run_bad_input(client, cases):
    seen = Counter()
    for action, query, code, status, name, what, *body in cases:
        e = fails(lambda: client.call_raw(action, query, *body), code, status,
                  *([name] if name else []))
        assert e.message, (action, what)
        seen[action] += 1
    return seen


def dry_runs(c, key_id, version):
    """DryRun=true always fails: DryRunOperationError when the call would succeed,
    ValidationError when it would not. Nothing is signed."""
    digest = b64(sha256(b"dry"))
    common = dict(KeyId=key_id, KeyVersionId=version)
    n = 0
    for dry in ("true", "True", "TRUE"):
        fails(lambda: c.call("AsymmetricSign", Algorithm="ECDSA_SHA_256", Digest=digest,
                             DryRun=dry, **common), "DryRunOperationError", 412)
        n += 1
    fails(lambda: c.call("AsymmetricVerify", Algorithm="ECDSA_SHA_256", Digest=digest,
                         Value=b64(b"\x30" * 70), DryRun="true", **common),
          "DryRunOperationError", 412)
    fails(lambda: c.call("GetPublicKey", DryRun="true", **common), "DryRunOperationError", 412)
    fails(lambda: c.call("AsymmetricSign", Algorithm="ECDSA_SHA_256",
                         Digest=b64(b"\x01" * 31), DryRun="true", **common),
          "ValidationError", 400, "InvalidParameter")
    fails(lambda: c.call("AsymmetricSign", Algorithm="ECDSA_SHA_256", Digest=digest,
                         DryRun="true", KeyId=key_id, KeyVersionId=str(uuid.uuid4())),
          "ValidationError", 400, "Forbidden.KeyVersionNotFound")
    fails(lambda: c.call("AsymmetricSign", Algorithm="ECDSA_SHA_256", Digest=digest,
                         DryRun="true", KeyId="no-such-key", KeyVersionId=version),
          "ValidationError", 400, "Forbidden.KeyNotFound")
    return n + 5


def security_cases(ep, ak_id, secret, key_id, version):
    """Each refused with its precise code; returns {client: {case: code}}."""
    digest = b64(sha256(b"security"))
    out = defaultdict(dict)

    def make(name, ak=ak_id, sec=secret, sts=None):
        if name == "core":
            return Core(name, ep, ak, sec, sts=sts)
        return Tea(name, ep, ak, sec, v2=(name == "v2"), sts=sts)

    def sign(c, dry_run=None):
        extra = {"DryRun": dry_run} if dry_run else {}
        return c.call("AsymmetricSign", KeyId=key_id, KeyVersionId=version,
                      Algorithm="ECDSA_SHA_256", Digest=digest, **extra)

    def case(client, name, call, code, status, *needles):
        fails(call, code, status, *needles)
        out[client][name] = code

    for n in ("acs3", "v2", "core"):
        wrong = make(n, sec=secret + "x")
        if n == "core":
            # The legacy SDK compares the string to sign after the ':' of the message with its
            # own; "InvalidAccessKeySecret" means they were identical, character for character.
            case(n, "wrong_secret", lambda: sign(wrong), "InvalidAccessKeySecret", 400)
        else:
            case(n, "wrong_secret", lambda: sign(wrong), "SignatureDoesNotMatch", 400,
                 "Server string to sign is:")
        case(n, "unknown_id", lambda: sign(make(n, ak="LTAI5tUnknownKeyId")),
             "InvalidAccessKeyId.NotFound", 404)
        case(n, "sts", lambda: sign(make(n, sts="sts-token")), "Unsupported.SecurityToken", 400)
        # Replay: the SDK's own nonce generator repeats one value. The first request
        # authenticates (a DryRun: nothing signed), the second is refused.
        c = make(n)
        with pinned_nonce(c, f"replay-{n}-{uuid.uuid4().hex}"):
            fails(lambda: sign(c, dry_run="true"), "DryRunOperationError", 412)
            case(n, "replayed_nonce", lambda: sign(c), "SignatureNonceUsed", 400)
        for label, offset in (("clock_behind", timedelta(minutes=-16)),
                              ("clock_ahead", timedelta(minutes=16))):
            c = make(n)
            with pinned_clock(c, offset):
                case(n, label, lambda: sign(c), "InvalidTimeStamp.Expired", 400)

    # Requests changed after the SDK signed them.
    def header(name, value):
        def change(prepared):
            prepared.headers[name] = value
        return change

    def unsign_nonce(prepared):
        auth = prepared.headers["Authorization"]
        prepared.headers["Authorization"] = auth.replace("x-acs-signature-nonce;", "")

    def query_digest(prepared):
        prepared.url = prepared.url.replace("Digest=", "Digest=AAAA", 1)

    c = make("acs3")
    for name, change, code, needles in (
        ("signed_header_changed", header("user-agent", "changed in transit"),
         "SignatureDoesNotMatch", ["Server string to sign is:"]),
        ("host_changed", header("host", "kms.cn-hangzhou.aliyuncs.com"),
         "SignatureDoesNotMatch", []),
        ("action_changed", header("x-acs-action", "GetPublicKey"),
         "SignatureDoesNotMatch", []),
        ("nonce_not_signed", unsign_nonce, "IncompleteSignature", ["x-acs-signature-nonce"]),
        ("body_hash_wrong", header("x-acs-content-sha256", "0" * 64), "InvalidParameter",
         ["x-acs-content-sha256"]),
        ("query_changed", query_digest, "SignatureDoesNotMatch", []),
    ):
        with in_transit(change):
            case("acs3", name, lambda: sign(c), code, 400, *needles)
    v2 = make("v2")
    with in_transit(query_digest):
        case("v2", "query_changed", lambda: sign(v2), "SignatureDoesNotMatch", 400,
             "Server string to sign is:")
    return out


def mode_refusals(args, ak_id, secret):
    ep, key_id = args["endpoint"], args["key_id"]
    acs3, v2 = Tea("acs3", ep, ak_id, secret), Tea("v2", ep, ak_id, secret, v2=True)
    version = acs3.call("DescribeKey", KeyId=key_id)["KeyMetadata"]["PrimaryKeyVersion"]
    cases = bad_input_cases(key_id, version)
    bad = {"acs3": run_bad_input(acs3, cases), "v2": run_bad_input(v2, cases)}
    dry = {"acs3": dry_runs(acs3, key_id, version), "v2": dry_runs(v2, key_id, version),
           "core": dry_runs(Core("core", ep, ak_id, secret), key_id, version)}
    security = security_cases(ep, ak_id, secret, key_id, version)
    print(json.dumps({
        "bad_input_cases": len(cases),
        "bad_input": {n: dict(s) for n, s in bad.items()},
        "dry_runs": dry,
        "security": security,
    }), flush=True)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("actions", "refusals"):
        raise SystemExit(__doc__)
    args = json.loads(sys.argv[2])
    ak_id = os.environ.get("P11KMS_ALIBABA_AK_ID", "")
    secret = os.environ.get("P11KMS_ALIBABA_AK_SECRET", "")
    if not ak_id or not secret:
        raise SystemExit("set P11KMS_ALIBABA_AK_ID and P11KMS_ALIBABA_AK_SECRET")
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        os.environ.pop(proxy, None)
    sdk_guard.loopback_sockets_only()
    {"actions": mode_actions, "refusals": mode_refusals}[sys.argv[1]](args, ak_id, secret)


if __name__ == "__main__":
    main()
