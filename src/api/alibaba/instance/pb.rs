//! Code generated from `proto/alibaba/dkms_gcs.proto` at build time: the instance API's
//! messages, which never leave [`super`].
#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

tonic::include_proto!("alibaba.dkms_gcs");
