"""Sandboxing for the interop scripts: the SDK under test may reach the endpoint
under test and nothing else.

gRPC channels are created in C-core, so they are guarded where the SDK creates
them; plain Python sockets (the SDK's metadata-service and IAM helpers use
`requests`) are limited to loopback.
"""

import ipaddress
import socket

import grpc

import p11kms_auth


def loopback_sockets_only():
    """Python sockets may connect to loopback addresses only."""
    real_connect = socket.socket.connect

    def loopback_only(sock, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None:
            try:
                loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
            except ValueError:
                loopback = host == "localhost"
            if not loopback:
                raise AssertionError(f"a socket tried to connect to {address}")
        return real_connect(sock, address)

    socket.socket.connect = loopback_only


def plaintext_to(endpoint):
    """Plaintext channels to ENDPOINT only, each sending $P11KMS_TOKEN; loopback sockets only."""

    def refuse_secure(target, *args, **kwargs):
        raise AssertionError(f"the SDK tried to open a TLS channel to {target}")

    real_insecure = grpc.insecure_channel
    bearer = p11kms_auth.token()

    def only_endpoint(target, *args, **kwargs):
        if target != endpoint:
            raise AssertionError(f"the SDK tried to open a channel to {target}")
        # p11kms authenticates every KMS call; the SDK's plaintext path sends no header.
        return p11kms_auth.authorized(real_insecure(target, *args, **kwargs), bearer)

    grpc.secure_channel = refuse_secure
    grpc.insecure_channel = only_endpoint
    loopback_sockets_only()


def tls_to(endpoint, opened):
    """TLS channels to ENDPOINT only (each target appended to OPENED); loopback sockets only."""

    def refuse_insecure(target, *args, **kwargs):
        raise AssertionError(f"the SDK opened a plaintext channel to {target}")

    real_secure = grpc.secure_channel

    def only_endpoint(target, credentials, *args, **kwargs):
        if target != endpoint:
            raise AssertionError(f"the SDK opened a channel to {target}, not {endpoint}")
        opened.append(target)
        return real_secure(target, credentials, *args, **kwargs)

    grpc.insecure_channel = refuse_insecure
    grpc.secure_channel = only_endpoint
    loopback_sockets_only()
