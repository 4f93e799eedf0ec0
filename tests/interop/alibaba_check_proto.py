#!/usr/bin/env python3
"""Check that our instance-API messages are wire-identical to the official SDK's.

Usage: alibaba_check_proto.py DESCRIPTOR_SET_FILE

DESCRIPTOR_SET_FILE is a serialized google.protobuf.FileDescriptorSet of our
proto/ tree (written by build.rs). Every message of our package
`alibaba.dkms_gcs` (proto/alibaba/dkms_gcs.proto) is looked up by name in the
descriptor compiled into `alibabacloud-dkms-gcs` (openapi_util/protobuf/api_pb2,
package `protobuf`; the package never reaches the wire) and compared: syntax,
and the exact set of fields (name, number, type, label, proto3 optional,
oneof). Our package must define at least the messages the signing APIs use.

Exit 0 with a one-line summary when everything matches; otherwise print every
mismatch and exit 1.
"""

import sys

from google.protobuf import descriptor_pb2
from openapi_util.protobuf import api_pb2

OUR_PACKAGE = "alibaba.dkms_gcs"
REQUIRED = [
    "SignRequest", "SignResponse", "VerifyRequest", "VerifyResponse",
    "GetPublicKeyRequest", "GetPublicKeyResponse",
    "GenerateRandomRequest", "GenerateRandomResponse", "Error",
]


def fields(message):
    return sorted(
        (f.name, f.number, f.type, f.label, f.proto3_optional,
         f.oneof_index if f.HasField("oneof_index") else None)
        for f in message.field
    )


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    ours = descriptor_pb2.FileDescriptorSet()
    with open(argv[1], "rb") as f:
        ours.ParseFromString(f.read())
    sdk = descriptor_pb2.FileDescriptorProto()
    api_pb2.DESCRIPTOR.CopyToProto(sdk)
    sdk_messages = {m.name: m for m in sdk.message_type}

    problems = []
    checked = []
    for file in ours.file:
        if file.package != OUR_PACKAGE:
            continue
        if (file.syntax or "proto2") != (sdk.syntax or "proto2"):
            problems.append(f"{file.name}: syntax {file.syntax!r}, the SDK's is {sdk.syntax!r}")
        for message in file.message_type:
            theirs = sdk_messages.get(message.name)
            if theirs is None:
                problems.append(f"{message.name}: not in the SDK's api.proto")
                continue
            if message.nested_type or message.enum_type or theirs.nested_type or theirs.enum_type:
                problems.append(f"{message.name}: nested types (neither side should have any)")
            if fields(message) != fields(theirs):
                problems.append(
                    f"{message.name}: fields differ\n  ours: {fields(message)}\n  SDK:  {fields(theirs)}"
                )
            checked.append(message.name)
    for name in REQUIRED:
        if name not in checked:
            problems.append(f"{name}: missing from our package {OUR_PACKAGE}")
    if problems:
        print("\n".join(problems))
        return 1
    print(f"alibaba wire-compat OK: {len(checked)} messages match the SDK's ({', '.join(checked)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
