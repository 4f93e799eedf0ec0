//! The Alibaba Cloud KMS fronts (contract: `shared/reference/alibaba-kms-api.md`): the KMS
//! instance API ([`instance`]: protobuf over `POST /`, client-key signatures).

pub mod instance;
