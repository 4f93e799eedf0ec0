//! Where REST is served (issue 6): by default on the one listener with gRPC, told apart by
//! content type, over HTTP/1.1 and HTTP/2, plaintext and TLS (ALPN `http/1.1` or `h2`), with
//! mTLS identities; or on its own listener with `[server] rest_listen`. Request ids travel both
//! ways.

mod common;
mod rest_support;

use common::tls::{grant_mtls, Ca, ClientId, Mtls, TlsClient, TlsDir, SIGNER};
use common::verify;
use common::{dev_key_id, Bearer, CryptoClient, Daemon, Kms, Launch, TestToken};
use p11kms::api::yandex::grpc::pb::yandex::cloud::endpoint::api_endpoint_service_client::ApiEndpointServiceClient;
use p11kms::api::yandex::grpc::pb::yandex::cloud::endpoint::ListApiEndpointsRequest;
use p11kms::crypto::Algorithm;
use reqwest::Method;
use rest_support::{key_path, Http, Rest};
use tonic::service::interceptor::InterceptedService;
use tonic::Code;

const P256: Algorithm = Algorithm::EcdsaP256Sha256;

async fn assert_signs_over_rest(rest: &Rest, what: &str) {
    let id = dev_key_id(P256);
    let pem = rest
        .public_key(&id)
        .await
        .unwrap_or_else(|r| panic!("{what}: {r:?}"));
    let sig = rest
        .sign(&id, what.as_bytes())
        .await
        .unwrap_or_else(|r| panic!("{what}: {r:?}"));
    verify::parse_public_key(&pem, P256)
        .unwrap()
        .verify_message(P256, what.as_bytes(), &sig)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_listener_serves_grpc_and_rest_over_tls_with_both_http_versions() {
    let ca = Ca::new("p11kms REST test CA");
    let token = TestToken::dev();
    let (dir, _server) = TlsDir::new(&ca);
    token.set_server("tls", dir.config(Mtls::Off));
    let daemon = Daemon::serve(&token, &[]);
    let admin = token.admin_token();

    // REST over TLS: HTTP/1.1 (ALPN http/1.1) and HTTP/2 (ALPN h2).
    for (http, version) in [
        (Http::One, reqwest::Version::HTTP_11),
        (Http::Two, reqwest::Version::HTTP_2),
    ] {
        let rest = Rest::tls(daemon.addr(), &ca, None, http, Some(&admin));
        assert_signs_over_rest(&rest, &format!("REST over TLS, {version:?}")).await;
        let r = rest.get("/endpoints").await;
        assert_eq!(r.version, version);
        r.ok();
    }
    // gRPC over TLS on the same port, at the same time.
    let conn = TlsClient::new(&ca).channel(daemon.addr()).await.unwrap();
    let mut kms = Kms {
        client: CryptoClient::new(InterceptedService::new(
            conn.channel.clone(),
            Bearer::token(&admin),
        )),
    };
    let rest = Rest::tls(daemon.addr(), &ca, None, Http::Two, Some(&admin));
    let id = dev_key_id(P256);
    let (grpc, rest_pem) = tokio::join!(kms.public_key(&id), rest.public_key(&id));
    assert_eq!(grpc.unwrap(), rest_pem.unwrap());

    // A plaintext REST client gets no answer from a TLS listener.
    let plain = Rest::plain(daemon.addr(), Http::One, Some(&admin));
    assert!(plain
        .try_send(Method::GET, "/endpoints", &[], None)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_callers_authenticate_with_mtls_certificates() {
    let ca = Ca::new("p11kms REST mTLS CA");
    let token = TestToken::dev();
    let (dir, _server) = TlsDir::new(&ca);
    token.set_server("tls", dir.config(Mtls::Required));
    grant_mtls(&token, "spiffe://test/rest-client", SIGNER);
    let daemon = Daemon::serve(&token, &[]);
    let client = ca.client_cert(&ClientId::spiffe("spiffe://test/rest-client"));

    // The certificate alone is the credential: no bearer token.
    for http in [Http::One, Http::Two] {
        let rest = Rest::tls(daemon.addr(), &ca, Some(&client), http, None);
        assert_signs_over_rest(&rest, &format!("REST with mTLS, {http:?}")).await;
        // Signer, not admin.
        rest.get("/kms/v1/asymmetricSignatureKeys?folderId=f")
            .await
            .ok();
        rest.post(
            "/kms/v1/asymmetricSignatureKeys",
            &serde_json::json!({ "folderId": "f", "signatureAlgorithm": 10 }),
        )
        .await
        .error(Code::PermissionDenied, &["Create"]);
    }
    // No certificate: no connection.
    let rest = Rest::tls(daemon.addr(), &ca, None, Http::One, None);
    assert!(rest
        .try_send(Method::GET, "/endpoints", &[], None)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_listener_serves_both_protocols_concurrently_and_echoes_request_ids() {
    let token = TestToken::dev();
    let daemon = Daemon::serve(&token, &[]);
    let h1 = Rest::new(&daemon);
    let h2 = Rest::plain(daemon.addr(), Http::Two, Some(daemon.admin_token()));
    let id = dev_key_id(P256);

    // 3 × 20 requests in flight at once: gRPC, REST over HTTP/1.1 and over HTTP/2.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (h1, h2, id) = (h1.clone(), h2.clone(), id.clone());
        let mut kms = daemon.kms().await;
        tasks.spawn(async move {
            let m = format!("mixed {i}");
            let (a, b, c) = tokio::join!(
                kms.sign(&id, m.as_bytes()),
                h1.sign(&id, m.as_bytes()),
                h2.sign(&id, m.as_bytes())
            );
            a.expect("gRPC");
            b.expect("REST HTTP/1.1");
            c.expect("REST HTTP/2");
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }

    // A sane client request id is kept, in the header and in the error body.
    for rest in [&h1, &h2] {
        let r = rest
            .send(
                Method::GET,
                &key_path("nosuchkey", "/publicKey"),
                &[("x-request-id", "client-chosen-id.42")],
                None,
            )
            .await;
        r.error(Code::NotFound, &["nosuchkey"]);
        assert_eq!(r.request_id(), Some("client-chosen-id.42"));
        let ok = rest
            .send(
                Method::GET,
                "/endpoints",
                &[("x-request-id", "another-id")],
                None,
            )
            .await;
        assert_eq!(ok.request_id(), Some("another-id"));
        // An insane one is replaced.
        let r = rest
            .send(
                Method::GET,
                "/endpoints",
                &[("x-request-id", "has space")],
                None,
            )
            .await;
        assert_eq!(r.request_id().map(str::len), Some(36));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_listen_moves_rest_to_its_own_listener() {
    let token = TestToken::dev();
    token.set_server("rest_listen", "127.0.0.1:0");
    let daemon = Daemon::serve(&token, &[]);
    let rest_addr: std::net::SocketAddr = daemon
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("p11kms REST listening on "))
        .unwrap_or_else(|| panic!("no REST ready line\n{}", daemon.describe()))
        .parse()
        .unwrap();
    assert_ne!(rest_addr, daemon.addr());
    let admin = daemon.admin_token();

    // REST on its own listener, both HTTP versions.
    for http in [Http::One, Http::Two] {
        let rest = Rest::plain(rest_addr, http, Some(admin));
        assert_signs_over_rest(&rest, &format!("REST listener, {http:?}")).await;
    }
    // gRPC stays on the main listener...
    let mut kms = daemon.kms().await;
    kms.sign(&dev_key_id(P256), b"gRPC").await.unwrap();
    // ... which answers REST with a pointer to the other listener,
    Rest::new(&daemon)
        .get("/endpoints")
        .await
        .error(Code::NotFound, &["rest_listen"]);
    // and the REST listener answers gRPC with UNIMPLEMENTED.
    let channel = tonic::transport::Channel::from_shared(format!("http://{rest_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = ApiEndpointServiceClient::new(channel)
        .list(ListApiEndpointsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(status.message().contains("server.listen"), "{status:?}");
    // Discovery on the REST listener advertises the gRPC address, as over gRPC.
    let endpoints = Rest::plain(rest_addr, Http::One, None)
        .get("/endpoints")
        .await
        .ok();
    assert_eq!(
        endpoints["endpoints"][0]["address"],
        daemon.addr().to_string()
    );
}

#[test]
fn rest_listen_is_checked_at_load() {
    let token = TestToken::dev();
    token.set_server("rest_listen", "0.0.0.0:0");
    Launch::serve(&token)
        .run_to_exit()
        .assert_failed()
        .assert_stderr_has(&["server.rest_listen", "not a loopback address", "server.tls"]);

    let token = TestToken::dev();
    token.set_server("listen", "127.0.0.1:50999");
    token.set_server("rest_listen", "127.0.0.1:50999");
    Launch::serve(&token)
        .run_to_exit()
        .assert_failed()
        .assert_stderr_has(&["server.rest_listen", "also server.listen"]);

    let token = TestToken::dev();
    token.set_server("rest_listen", "not an address");
    Launch::serve(&token)
        .run_to_exit()
        .assert_failed()
        .assert_stderr_has(&["rest_listen"]);
}
