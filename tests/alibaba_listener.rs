//! `[alibaba] listen`: the Alibaba APIs on a listener of their own (issue 12 §4). There, the
//! instance API signs (verified with RustCrypto under the public key the Yandex API publishes
//! on the main listener); the main listener no longer serves them, and the Alibaba listener
//! serves nothing else. Each refusal names where the API is.

mod common;

use common::alibaba::{call, ClientKey};
use common::verify::parse_public_key;
use common::{dev_key_id, Launch, TestToken};
use p11kms::api::alibaba::instance::pb;
use p11kms::crypto::Algorithm;
use sha2::{Digest as _, Sha256};
use std::net::SocketAddr;
use tonic::Code;

const P256: Algorithm = Algorithm::EcdsaP256Sha256;

#[tokio::test(flavor = "multi_thread")]
async fn the_alibaba_apis_on_a_listener_of_their_own() {
    let token = TestToken::dev();
    token.set_config("alibaba", "listen", "127.0.0.1:0");
    let daemon = Launch::serve(&token).start();
    let alibaba: SocketAddr = daemon
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("p11kms Alibaba listening on "))
        .expect("the Alibaba listener is announced before the ready line")
        .trim()
        .parse()
        .unwrap();
    assert_ne!(alibaba, daemon.addr());
    let key = ClientKey::dev(token.state_dir());
    let digest = Sha256::digest(b"own listener");
    let request = pb::SignRequest {
        key_id: dev_key_id(P256),
        algorithm: "ECDSA_SHA_256".into(),
        message: digest.to_vec(),
        message_type: "DIGEST".into(),
        ..Default::default()
    };

    let answer = call(alibaba, &key, "Sign", &request).await;
    let signed: pb::SignResponse = answer.message();
    let pem = daemon
        .kms()
        .await
        .public_key(&dev_key_id(P256))
        .await
        .unwrap();
    parse_public_key(&pem, P256)
        .unwrap()
        .verify_digest(P256, &digest, &signed.signature)
        .expect("the signature verifies");

    // The main listener refuses the instance API, saying where it is.
    let elsewhere = call(daemon.addr(), &key, "Sign", &request).await;
    assert_ne!(elsewhere.status, 200);
    let text = String::from_utf8_lossy(&elsewhere.body);
    assert!(text.contains("alibaba.listen"), "{text}");

    // And the Alibaba listener serves no Yandex gRPC.
    let channel = tonic::transport::Channel::from_shared(format!("http://{alibaba}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut yandex =
        common::CryptoClient::new(tonic::service::interceptor::InterceptedService::new(
            channel,
            common::Bearer::token(daemon.admin_token()),
        ));
    let refused = yandex
        .get_public_key(
            p11kms::api::yandex::grpc::pb::kms::AsymmetricGetPublicKeyRequest {
                key_id: dev_key_id(P256),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    assert!(refused.message().contains("server.listen"), "{refused:?}");
}
