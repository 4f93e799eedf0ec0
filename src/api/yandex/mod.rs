//! The Yandex Cloud KMS fronts: gRPC ([`grpc`]) and its REST/JSON form ([`rest`]), served
//! wire-compatibly (contract: `shared/reference/yandex-kms-api.md`), with the field checks
//! ([`validate`], [`key_fields`]) and the proto3 JSON writer ([`json`]) they share.

pub mod grpc;
pub mod json;
pub mod key_fields;
pub mod mapping;
pub mod rest;
pub mod status;
pub mod validate;
