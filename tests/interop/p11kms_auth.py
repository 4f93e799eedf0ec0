"""The credentials the interop scripts send to p11kms.

p11kms authenticates every call to the KMS services. The scripts use the SDK's
plaintext path (`insecure=True`), which sends no authorization header of its
own, so they add `authorization: Bearer $P11KMS_TOKEN` to every call on the
channels the SDK opens to the endpoint under test. The token never appears on
the command line (argv is world-readable) and is never printed.
"""

import collections
import os

import grpc


def token():
    """The bearer token from P11KMS_TOKEN; exits 2 when it is missing."""
    value = os.environ.get("P11KMS_TOKEN", "").strip()
    if not value:
        raise SystemExit("set P11KMS_TOKEN to a bearer token p11kms accepts")
    return value


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class BearerInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, bearer):
        self._header = ("authorization", f"Bearer {bearer}")

    def _details(self, details):
        metadata = [m for m in (details.metadata or []) if m[0] != "authorization"]
        metadata.append(self._header)
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


def authorized(channel, bearer):
    """`channel`, with every call carrying the bearer token."""
    return grpc.intercept_channel(channel, BearerInterceptor(bearer))
