//! mTLS client certificates as credentials: a mapped certificate identity is a caller with its
//! own roles; an unmapped one is anonymous (UNAUTHENTICATED for the KMS services); a bearer
//! token wins over the certificate, and a bad one is refused rather than falling back to it.
//! The audit record names the method and the certificate. (The handshake itself, expired and
//! foreign certificates, are `tests/tls.rs`.)

mod common;

use common::tls::{Ca, ClientId, Mtls, TlsClient, TlsDir};
use common::{dev_key_id, Bearer, CryptoClient, Daemon, TestToken};
use p11kms::api::yandex::grpc::pb::kms::AsymmetricSignRequest;
use p11kms::crypto::Algorithm;
use tonic::service::interceptor::InterceptedService;
use tonic::Code;

const SIGNER: &str = "kms.asymmetricSignatureKeys.signer";
const SA: &str = "serviceAccount";

async fn sign_over(
    client: &TlsClient,
    daemon: &Daemon,
    bearer: Option<&str>,
    key: &str,
) -> Result<(), tonic::Status> {
    let conn = client
        .channel(daemon.addr())
        .await
        .expect("an mTLS channel");
    let mut c = CryptoClient::new(InterceptedService::new(
        conn.channel,
        Bearer::from_option(bearer),
    ));
    c.sign(AsymmetricSignRequest {
        key_id: key.into(),
        message: b"over mTLS".to_vec(),
    })
    .await
    .map(drop)
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_authenticate_as_their_mapped_subject() {
    let ca = Ca::new("p11kms auth test CA");
    let (dir, _server) = TlsDir::new(&ca);
    let token = TestToken::dev();
    token.set_server("tls", dir.config(Mtls::Required));
    let audit = token.state_dir().join("audit.jsonl");
    token.set_config("audit", "sink", "file");
    token.set_config("audit", "file", audit.display().to_string());
    let ci = "spiffe://p11kms.test/ns/ci/sa/release";
    let p256 = dev_key_id(Algorithm::EcdsaP256Sha256);
    token.edit_config(|t| {
        let auth = t
            .entry("auth")
            .or_insert_with(|| toml::Table::new().into())
            .as_table_mut()
            .unwrap();
        let mut m = toml::Table::new();
        m.insert("subject".into(), ci.into());
        m.insert("subject_id".into(), "release-ci".into());
        m.insert("subject_type".into(), SA.into());
        auth.entry("mtls")
            .or_insert_with(|| toml::Value::Array(Vec::new()))
            .as_array_mut()
            .unwrap()
            .push(m.into());
    });
    // release-ci may sign with the config keys' folder only.
    token.add_binding(SIGNER, "release-ci", SA, "p11kms-config");
    let nobody = format!("nobody-{}", hex::encode(rand::random::<[u8; 16]>()));
    token.add_api_token(&nobody, "nobody", SA);
    let daemon = Daemon::serve(&token, &[]);

    let mapped = TlsClient::with_identity(&ca, &ca.client_cert(&ClientId::spiffe(ci)));
    let unmapped = TlsClient::with_identity(
        &ca,
        &ca.client_cert(&ClientId::spiffe("spiffe://p11kms.test/ns/ci/sa/other")),
    );

    // The mapped certificate alone is a caller with release-ci's roles.
    sign_over(&mapped, &daemon, None, &p256).await.unwrap();
    // An unmapped (but valid) certificate is anonymous.
    let err = sign_over(&unmapped, &daemon, None, &p256)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // A bearer token is the credential when present: the admin token works over the unmapped
    // certificate, a token without roles is denied even over the mapped one, and a wrong token
    // is refused rather than falling back to the certificate.
    sign_over(&unmapped, &daemon, Some(daemon.admin_token()), &p256)
        .await
        .unwrap();
    let err = sign_over(&mapped, &daemon, Some(&nobody), &p256)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = sign_over(&mapped, &daemon, Some("wrong-token"), &p256)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    let text = std::fs::read_to_string(&audit).unwrap();
    let recs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 5, "{text}");
    assert_eq!(recs[0]["subject"]["id"], "release-ci");
    assert_eq!(recs[0]["subject"]["method"], "mtls");
    assert_eq!(recs[0]["client_certificate"], ci);
    assert_eq!(recs[0]["tls"], true);
    assert!(recs[1]["subject"].is_null());
    assert_eq!(recs[2]["subject"]["method"], "token");
    assert_eq!(recs[4]["outcome"], "UNAUTHENTICATED");
}
