#!/usr/bin/env python3
"""Check that our protos are wire-identical to the official Yandex Cloud SDK's.

Usage: check_wire_compat.py DESCRIPTOR_SET_FILE

DESCRIPTOR_SET_FILE is a serialized google.protobuf.FileDescriptorSet of our
proto/ tree (written by build.rs). Every message, enum and service in it whose
full name starts with "yandex.cloud." or "google.rpc." is looked up by full
name in the descriptors compiled into the `yandexcloud` Python SDK (and
googleapis-common-protos for google.rpc) and compared:

  messages: syntax, and the exact set of fields (name, number, type, label,
            type_name, proto3 optional, oneof membership, map-ness) and of
            nested type / nested enum names
  enums:    the exact set of (value name, number)
  services: the exact set of methods (name, input, output, streaming flags)

Exit 0 with a one-line summary when everything matches; otherwise print every
mismatch and exit 1.
"""

import importlib
import sys

from google.protobuf import descriptor_pb2, descriptor_pool

# Importing these registers the SDK's descriptors in the default pool.
SDK_MODULES = [
    "yandex.cloud.kms.v1.asymmetricsignature.asymmetric_signature_key_pb2",
    "yandex.cloud.kms.v1.asymmetricsignature.asymmetric_signature_crypto_service_pb2",
    "yandex.cloud.kms.v1.asymmetricsignature.asymmetric_signature_key_service_pb2",
    "yandex.cloud.operation.operation_pb2",
    "yandex.cloud.operation.operation_service_pb2",
    "yandex.cloud.access.access_pb2",
    "yandex.cloud.endpoint.api_endpoint_pb2",
    "yandex.cloud.endpoint.api_endpoint_service_pb2",
    "google.rpc.status_pb2",
]

# Our set must define at least these (guards against an empty or partial set).
REQUIRED = [
    "yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureCryptoService",
    "yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureKeyService",
    "yandex.cloud.operation.OperationService",
    "yandex.cloud.endpoint.ApiEndpointService",
    "google.rpc.Status",
]

PREFIXES = ("yandex.cloud.", "google.rpc.")
FDP = descriptor_pb2.FieldDescriptorProto


def index_file(fdp, out):
    """Map full name -> (kind, proto, syntax) for everything in one file."""
    syntax = fdp.syntax or "proto2"

    def add_msg(prefix, m):
        name = f"{prefix}.{m.name}"
        out[name] = ("message", m, syntax)
        for n in m.nested_type:
            add_msg(name, n)
        for e in m.enum_type:
            out[f"{name}.{e.name}"] = ("enum", e, syntax)

    pkg = fdp.package
    for m in fdp.message_type:
        add_msg(pkg, m)
    for e in fdp.enum_type:
        out[f"{pkg}.{e.name}"] = ("enum", e, syntax)
    for s in fdp.service:
        out[f"{pkg}.{s.name}"] = ("service", s, syntax)


def is_map_entry(idx, type_name):
    entry = idx.get(type_name.lstrip("."))
    return bool(entry and entry[0] == "message" and entry[1].options.map_entry)


def field_sig(idx, msg, f):
    oneof = None
    if f.HasField("oneof_index"):
        oneof = msg.oneof_decl[f.oneof_index].name
    return {
        "number": f.number,
        "type": FDP.Type.Name(f.type),
        "label": FDP.Label.Name(f.label),
        "type_name": f.type_name.lstrip(".") or None,
        "proto3_optional": f.proto3_optional,
        "oneof": oneof,
        "map": f.type == FDP.TYPE_MESSAGE and is_map_entry(idx, f.type_name),
    }


def diff_sets(what, ours, sdk, errs, name):
    for key in sorted(set(ours) | set(sdk), key=str):
        if key not in ours:
            errs.append(f"{name}: {what} {key!r} missing in ours (SDK: {sdk[key]})")
        elif key not in sdk:
            errs.append(f"{name}: {what} {key!r} not in SDK (ours: {ours[key]})")
        elif ours[key] != sdk[key]:
            for attr in ours[key]:
                if ours[key][attr] != sdk[key][attr]:
                    errs.append(
                        f"{name}: {what} {key!r}: {attr} ours={ours[key][attr]!r} "
                        f"sdk={sdk[key][attr]!r}"
                    )


def compare(name, ours, sdk, our_idx, sdk_idx, errs):
    (kind, o, o_syntax), (sdk_kind, s, s_syntax) = ours, sdk
    if kind != sdk_kind:
        errs.append(f"{name}: is a {kind} in ours but a {sdk_kind} in the SDK")
        return
    if kind == "message":
        if o_syntax != s_syntax:
            errs.append(f"{name}: syntax ours={o_syntax} sdk={s_syntax}")
        diff_sets(
            "field",
            {f.name: field_sig(our_idx, o, f) for f in o.field},
            {f.name: field_sig(sdk_idx, s, f) for f in s.field},
            errs,
            name,
        )
        for what, attr in (("nested type", "nested_type"), ("nested enum", "enum_type")):
            on = {n.name for n in getattr(o, attr)}
            sn = {n.name for n in getattr(s, attr)}
            for n in sorted(sn - on):
                errs.append(f"{name}: {what} {n!r} missing in ours")
            for n in sorted(on - sn):
                errs.append(f"{name}: {what} {n!r} not in SDK")
    elif kind == "enum":
        diff_sets(
            "enum value",
            {v.name: {"number": v.number} for v in o.value},
            {v.name: {"number": v.number} for v in s.value},
            errs,
            name,
        )
    else:
        def methods(svc):
            return {
                m.name: {
                    "input": m.input_type.lstrip("."),
                    "output": m.output_type.lstrip("."),
                    "client_streaming": m.client_streaming,
                    "server_streaming": m.server_streaming,
                }
                for m in svc.method
            }

        diff_sets("method", methods(o), methods(s), errs, name)


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    for mod in SDK_MODULES:
        importlib.import_module(mod)
    pool = descriptor_pool.Default()

    fds = descriptor_pb2.FileDescriptorSet()
    with open(argv[1], "rb") as fh:
        fds.ParseFromString(fh.read())
    our_idx = {}
    for fdp in fds.file:
        index_file(fdp, our_idx)

    sdk_idx, sdk_files = {}, set()

    def sdk_lookup(full):
        if full not in sdk_idx:
            try:
                fd = pool.FindFileContainingSymbol(full)
            except KeyError:
                return None
            if fd.name not in sdk_files:
                sdk_files.add(fd.name)
                fdp = descriptor_pb2.FileDescriptorProto()
                fd.CopyToProto(fdp)
                index_file(fdp, sdk_idx)
        return sdk_idx.get(full)

    errs = [f"{n}: required but not defined in ours" for n in REQUIRED if n not in our_idx]
    checked = 0
    for full in sorted(n for n in our_idx if n.startswith(PREFIXES)):
        sdk = sdk_lookup(full)
        if sdk is None:
            errs.append(f"{full}: defined in ours but not found in the SDK")
            continue
        compare(full, our_idx[full], sdk, our_idx, sdk_idx, errs)
        checked += 1

    if errs:
        print(f"wire-compat: {len(errs)} mismatch(es) against the yandexcloud SDK:")
        for e in errs:
            print("  " + e)
        return 1
    kinds = [our_idx[n][0] for n in our_idx if n.startswith(PREFIXES)]
    print(
        f"wire-compat OK: {checked} definitions ({kinds.count('message')} messages, "
        f"{kinds.count('enum')} enums, {kinds.count('service')} services) match the yandexcloud SDK"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
