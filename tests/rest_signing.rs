//! REST signing (issue 6): for every one of the 13 algorithms, `:sign` and `:signHash`
//! signatures made over REST verify with RustCrypto against the key's `/publicKey`, which is
//! the PEM gRPC returns; over HTTP/1.1 (`reqwest`) and HTTP/2 on the one listener that also
//! serves gRPC. Plus the proto3 JSON forms every REST client may send for `bytes`.

mod common;
mod rest_support;

use common::verify::{self, hash_of};
use common::{dev_key_id, Daemon, TestToken};
use p11kms::crypto::Algorithm;
use rest_support::{key_path, unb64, Http, Rest};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn every_algorithm_signs_over_rest_and_verifies() {
    let token = TestToken::dev();
    let daemon = Daemon::serve(&token, &[]);
    let mut kms = daemon.kms().await;
    let h1 = Rest::new(&daemon);
    let h2 = Rest::plain(daemon.addr(), Http::Two, Some(daemon.admin_token()));

    for alg in Algorithm::ALL {
        let id = dev_key_id(alg);
        let pem = h1
            .public_key(&id)
            .await
            .unwrap_or_else(|r| panic!("{id}: {r:?}"));
        assert_eq!(
            pem,
            kms.public_key(&id).await.unwrap(),
            "{id}: REST and gRPC PEMs"
        );
        let key = verify::parse_public_key(&pem, alg).unwrap_or_else(|e| panic!("{id}: {e}"));
        for (name, rest) in [("HTTP/1.1", &h1), ("HTTP/2", &h2)] {
            let message = format!("REST {name} {alg:?}").into_bytes();
            let sig = rest
                .sign(&id, &message)
                .await
                .unwrap_or_else(|r| panic!("{id} :sign over {name}: {r:?}"));
            key.verify_message(alg, &message, &sig)
                .unwrap_or_else(|e| panic!("{id} :sign over {name}: {e}"));

            let digest = hash_of(alg).digest(&message);
            let sig = rest
                .sign_hash(&id, &digest)
                .await
                .unwrap_or_else(|r| panic!("{id} :signHash over {name}: {r:?}"));
            key.verify_digest(alg, &digest, &sig)
                .unwrap_or_else(|e| panic!("{id} :signHash over {name}: {e}"));
            // The digest signature is a signature of the message.
            key.verify_message(alg, &message, &sig)
                .unwrap_or_else(|e| panic!("{id} :signHash over {name}, as Sign: {e}"));
        }
    }
    // The HTTP/2 client really spoke HTTP/2, on the port gRPC uses.
    let r = h2
        .get(&key_path(
            &dev_key_id(Algorithm::EcdsaP256Sha256),
            "/publicKey",
        ))
        .await;
    assert_eq!(r.version, reqwest::Version::HTTP_2);
    let r = h1
        .get(&key_path(
            &dev_key_id(Algorithm::EcdsaP256Sha256),
            "/publicKey",
        ))
        .await;
    assert_eq!(r.version, reqwest::Version::HTTP_11);
}

/// `bytes` in every form proto3 JSON parsers accept: standard or URL-safe alphabet, padded or
/// not; the key id in the body is overridden by the path; `null` means empty.
#[tokio::test]
async fn bytes_are_accepted_in_every_base64_form() {
    let token = TestToken::dev();
    let daemon = Daemon::serve(&token, &[]);
    let rest = Rest::new(&daemon);
    let alg = Algorithm::EcdsaP256Sha256;
    let id = dev_key_id(alg);
    let key = verify::parse_public_key(&rest.public_key(&id).await.unwrap(), alg).unwrap();

    // Bytes chosen so that standard and URL-safe base64 differ (+/ vs -_) and need padding.
    let message: &[u8] = &[0xfb, 0xff, 0xbf, 0xfe, 0x3e];
    for text in ["+/+//j4=", "+/+//j4", "-_-__j4=", "-_-__j4"] {
        let r = rest
            .post(
                &key_path(&id, ":sign"),
                &json!({ "message": text, "keyId": "ignored-the-path-wins" }),
            )
            .await;
        let v = r.ok();
        assert_eq!(v["keyId"], id.as_str());
        let sig = unb64(v["signature"].as_str().unwrap());
        key.verify_message(alg, message, &sig)
            .unwrap_or_else(|e| panic!("{text}: {e}"));
    }
    let digest = hash_of(alg).digest(message);
    let url_safe_unpadded =
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &digest);
    let r = rest
        .post(
            &key_path(&id, ":signHash"),
            &json!({ "hash": url_safe_unpadded, "key_id": id }),
        )
        .await;
    let sig = unb64(r.ok()["signature"].as_str().unwrap());
    key.verify_digest(alg, &digest, &sig).unwrap();

    // null is the default (empty), which the shared validation refuses as for gRPC.
    rest.post(&key_path(&id, ":sign"), &json!({ "message": null }))
        .await
        .error(tonic::Code::InvalidArgument, &["message is required"]);
}
