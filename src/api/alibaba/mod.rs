//! The Alibaba Cloud KMS fronts (contract: `shared/reference/alibaba-kms-api.md`).
//! [`openapi`] is the shared-gateway OpenAPI (KMS 2016-01-20, RPC style, JSON replies, AccessKey
//! signatures) that `alibabacloud-kms20160120`, `aliyun-python-sdk-kms` and
//! `@alicloud/kms20160120` speak; [`instance`] is the KMS instance API (protobuf over `POST /`,
//! client-key signatures) of `alibabacloud-dkms-gcs`. Each front maps Alibaba's wire types and
//! error codes at its edge; below it there are only the core's domain types.

pub mod instance;
pub mod openapi;
