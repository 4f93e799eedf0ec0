//! Code generated from `proto/` at build time.
#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

/// `yandex.cloud.*`
pub mod yandex {
    /// `yandex.cloud.*`
    pub mod cloud {
        /// `yandex.cloud.kms.*`
        pub mod kms {
            /// `yandex.cloud.kms.v1.*`
            pub mod v1 {
                /// `yandex.cloud.kms.v1.asymmetricsignature`
                pub mod asymmetricsignature {
                    tonic::include_proto!("yandex.cloud.kms.v1.asymmetricsignature");
                }
            }
        }
        /// `yandex.cloud.operation`
        pub mod operation {
            tonic::include_proto!("yandex.cloud.operation");
        }
        /// `yandex.cloud.access`
        pub mod access {
            tonic::include_proto!("yandex.cloud.access");
        }
        /// `yandex.cloud.endpoint`
        pub mod endpoint {
            tonic::include_proto!("yandex.cloud.endpoint");
        }
    }
}

/// `p11kms.*`: our own API, outside the Yandex contract.
pub mod p11kms {
    /// `p11kms.v1`
    pub mod v1 {
        tonic::include_proto!("p11kms.v1");
    }
}

/// `google.rpc`
pub mod google {
    /// `google.rpc`
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// The serialized `FileDescriptorSet` of every proto we serve (for reflection and wire checks).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/p11kms_descriptor.bin"));

pub use yandex::cloud::kms::v1::asymmetricsignature as kms;
pub use yandex::cloud::operation;
