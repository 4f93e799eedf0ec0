#!/usr/bin/env python3
"""Measures, on one key, the gateway's own latency of Alibaba OpenAPI AsymmetricSign (P-256,
ECDSA_SHA_256) next to Yandex SignHash, as p11kms's audit trail records it: `latency_ms` is from
a request's arrival to its answer, inside the daemon, so the clients' own costs (the Python
SDKs') are left out. Every signature is verified with `cryptography`.

Usage (against `p11kms dev`, whose audit trail goes to stdout by default):
  target/release/p11kms dev --state-dir S > S.log &   # wait for "p11kms listening on"
  P11KMS_STATE=S python latency_openapi_vs_signhash.py 127.0.0.1:50051 S.log [N]

The config key dev-ecdsa-nist-p256-sha-256 is signed N times (default 300) through each API,
one request at a time, alternating, so that both see the same machine load. Prints the medians
and p90s of the daemon-side latencies.
"""

import base64
import hashlib
import json
import os
import statistics
import sys
import time

import grpc
from alibabacloud_kms20160120 import models
from alibabacloud_kms20160120.client import Client
from alibabacloud_tea_openapi import models as openapi_models
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from yandex.cloud.kms.v1.asymmetricsignature import (
    asymmetric_signature_crypto_service_pb2 as pb,
    asymmetric_signature_crypto_service_pb2_grpc as svc,
)

KEY = "dev-ecdsa-nist-p256-sha-256"


def main():
    endpoint, log = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    state = os.environ["P11KMS_STATE"]
    token = open(os.path.join(state, "admin.token")).read().strip()
    ak = json.load(open(os.path.join(state, "alibaba-access-key.json")))
    alibaba = Client(openapi_models.Config(
        access_key_id=ak["AccessKeyId"], access_key_secret=ak["AccessKeySecret"],
        endpoint=endpoint, protocol="http"))
    yandex = svc.AsymmetricSignatureCryptoServiceStub(grpc.insecure_channel(endpoint))
    auth = (("authorization", "Bearer " + token),)
    pem = yandex.GetPublicKey(pb.AsymmetricGetPublicKeyRequest(key_id=KEY), metadata=auth).public_key
    public = serialization.load_pem_public_key(pem.encode())
    version = alibaba.list_key_versions(models.ListKeyVersionsRequest(key_id=KEY)).body \
        .key_versions.key_version[0].key_version_id

    ids = {"alibaba": [], "yandex": []}
    for i in range(n):
        digest = hashlib.sha256(b"latency %d" % i).digest()
        reply = alibaba.asymmetric_sign(models.AsymmetricSignRequest(
            key_id=KEY, key_version_id=version, algorithm="ECDSA_SHA_256",
            digest=base64.b64encode(digest).decode()))
        public.verify(base64.b64decode(reply.body.value), digest,
                      ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        ids["alibaba"].append(reply.body.request_id)
        request_id = "latency-yandex-%d-%d" % (os.getpid(), i)
        signed = yandex.SignHash(pb.AsymmetricSignHashRequest(key_id=KEY, hash=digest),
                                 metadata=auth + (("x-request-id", request_id),))
        public.verify(signed.signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        ids["yandex"].append(request_id)

    # The audit writer batches; give it a moment to flush the last records.
    time.sleep(1)
    latency = {}
    for line in open(log):
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            latency[record.get("request_id")] = record.get("latency_ms")
    for api in ("alibaba", "yandex"):
        found = [latency[i] for i in ids[api] if latency.get(i) is not None]
        if len(found) != n:
            sys.exit("%s: %d of %d requests have an audit record" % (api, len(found), n))
        found.sort()
        print("%-26s n=%d median %.3f ms  p90 %.3f ms  (%d signatures verified)" % (
            {"alibaba": "Alibaba AsymmetricSign", "yandex": "Yandex SignHash"}[api],
            n, statistics.median(found), found[int(0.9 * n)], n))


if __name__ == "__main__":
    main()
