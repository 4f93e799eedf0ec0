//! TLS on the listener, with certificates made in each test (`rcgen`): plain TLS, mTLS with
//! valid, expired, foreign and missing client certificates, certificate reload (SIGHUP and file
//! change) under an established HTTP/2 connection, the handshake timeout, stalled handshakes
//! next to a legitimate client, and the loopback-only rule for plaintext.
//!
//! Timing numbers are printed (`cargo nextest run --no-capture -E 'binary(tls)'`) so that the
//! report can quote them.

mod common;

use common::lateness::Lateness;
use common::tls::{
    grant_mtls, serial_of, write_replace, Ca, ClientId, Mtls, TlsClient, TlsDir, SIGNER,
};
use common::{dev_key_id, verify, Daemon, TestToken};
use p11kms::api::yandex::grpc::pb::kms::asymmetric_signature_crypto_service_client::AsymmetricSignatureCryptoServiceClient as CryptoClient;
use p11kms::api::yandex::grpc::pb::kms::{AsymmetricGetPublicKeyRequest, AsymmetricSignRequest};
use p11kms::crypto::Algorithm;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tonic::transport::Channel;

const ALG: Algorithm = Algorithm::EcdsaP256Sha256;
/// Debug logs of the listener: the tests read which client subject a connection got.
const LISTENER_DEBUG: (&str, &str) = ("RUST_LOG", "info,p11kms::api::server=debug");

/// A token copy whose config serves TLS from fresh files signed by `ca`, and its admin token.
fn tls_token(
    ca: &Ca,
    mtls: Mtls,
    tls_extra: &[(&str, toml::Value)],
) -> (TestToken, TlsDir, String) {
    let token = TestToken::dev();
    let (dir, _server) = TlsDir::new(ca);
    let mut table = dir.config(mtls);
    for (k, v) in tls_extra {
        table.insert((*k).to_string(), v.clone());
    }
    token.set_server("tls", table);
    let bearer = token.admin_token();
    (token, dir, bearer)
}

fn request<T>(message: T, bearer: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(bearer) = bearer {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {bearer}").parse().expect("ASCII"),
        );
    }
    request
}

/// `Sign` over `channel` (with `bearer`, or relying on the mTLS identity).
async fn sign(
    channel: Channel,
    bearer: Option<&str>,
    message: &[u8],
) -> Result<Vec<u8>, tonic::Status> {
    let resp = CryptoClient::new(channel)
        .sign(request(
            AsymmetricSignRequest {
                key_id: dev_key_id(ALG),
                message: message.to_vec(),
            },
            bearer,
        ))
        .await?;
    Ok(resp.into_inner().signature)
}

/// Signs over `channel` and verifies the signature with the key's published public key.
async fn sign_and_verify(channel: Channel, bearer: Option<&str>, message: &[u8]) {
    let pem = CryptoClient::new(channel.clone())
        .get_public_key(request(
            AsymmetricGetPublicKeyRequest {
                key_id: dev_key_id(ALG),
            },
            bearer,
        ))
        .await
        .expect("GetPublicKey over TLS")
        .into_inner()
        .public_key;
    let key = verify::parse_public_key(&pem, ALG).expect("public key");
    let signature = sign(channel, bearer, message).await.expect("Sign over TLS");
    key.verify_message(ALG, message, &signature)
        .expect("the signature verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_grpc_with_alpn_h2_and_refuses_plaintext_clients() {
    let ca = Ca::new("p11kms test CA");
    let (token, dir, bearer) = tls_token(&ca, Mtls::Off, &[]);
    let mut daemon = Daemon::serve(&token, &[LISTENER_DEBUG]);
    let installed = {
        use rustls::pki_types::pem::PemObject as _;
        rustls::pki_types::CertificateDer::from_pem_file(dir.cert_path()).expect("read the cert")
    };

    for name in ["127.0.0.1", "localhost"] {
        let client = TlsClient::new(&ca).verifying(name);
        let stream = client.connect(daemon.addr()).await.expect("TLS handshake");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let conn = client.channel(daemon.addr()).await.expect("TLS channel");
        assert_eq!(
            conn.server_cert, installed,
            "the server presents the configured cert"
        );
        let message = format!("over TLS to {name}");
        sign_and_verify(conn.channel.clone(), Some(&bearer), message.as_bytes()).await;
    }
    daemon
        .wait_for_log("TLS connection established", 1, Duration::from_secs(5))
        .await;
    assert!(daemon.stderr().contains("alpn=h2"), "{}", daemon.describe());

    // A plaintext HTTP/2 client gets nowhere: its preface is not a TLS ClientHello.
    let plaintext = async {
        let channel = Channel::from_shared(daemon.endpoint())
            .expect("endpoint")
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        sign(channel, Some(&bearer), b"plaintext")
            .await
            .map_err(|e| e.to_string())
    };
    let outcome = tokio::time::timeout(Duration::from_secs(15), plaintext)
        .await
        .expect("the plaintext attempt ends quickly");
    assert!(
        outcome.is_err(),
        "a plaintext client was served: {outcome:?}"
    );
    assert_eq!(daemon.sigterm().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_valid_clients_sign_and_bad_certificates_fail_the_handshake() {
    let ca = Ca::new("p11kms test CA");
    let foreign = Ca::new("someone else's CA");
    let (token, _dir, bearer) = tls_token(&ca, Mtls::Required, &[]);
    let spiffe = "spiffe://p11kms.test/ns/ci/sa/release";
    // The certificate identities are callers in their own right: no bearer token needed.
    grant_mtls(&token, spiffe, SIGNER);
    grant_mtls(&token, "release-bot", SIGNER);
    let mut daemon = Daemon::serve(&token, &[LISTENER_DEBUG]);
    let addr = daemon.addr();

    let by_uri = TlsClient::with_identity(&ca, &ca.client_cert(&ClientId::spiffe(spiffe)));
    let by_cn = TlsClient::with_identity(&ca, &ca.client_cert(&ClientId::Cn("release-bot".into())));
    for (client, subject) in [(&by_uri, spiffe), (&by_cn, "release-bot")] {
        client
            .probe(addr)
            .await
            .expect("a valid client certificate is accepted");
        let conn = client.channel(addr).await.expect("mTLS channel");
        sign_and_verify(conn.channel.clone(), None, b"signed over mTLS").await;
        sign_and_verify(conn.channel.clone(), Some(&bearer), b"mTLS plus a token").await;
        daemon
            .wait_for_log(
                &format!("client_subject=\"{subject}\""),
                1,
                Duration::from_secs(5),
            )
            .await;
    }
    assert!(
        !daemon.stderr().contains("cn-that-must-not-win"),
        "the CN was taken although the certificate has a URI SAN\n{}",
        daemon.describe()
    );

    let id = ClientId::spiffe("spiffe://p11kms.test/ns/ci/sa/intruder");
    let expired = TlsClient::with_identity(&ca, &ca.expired_client_cert(&id));
    let foreign_ca = TlsClient::with_identity(&ca, &foreign.client_cert(&id));
    let no_cert = TlsClient::new(&ca);
    let cases = [
        ("expired client certificate", &expired, "CertificateExpired"),
        (
            "client certificate from a foreign CA",
            &foreign_ca,
            "UnknownCA",
        ),
        ("no client certificate", &no_cert, "CertificateRequired"),
    ];
    for (what, client, alert) in cases {
        let refused = client.probe(addr).await.expect_err(what);
        assert!(
            refused.contains(alert),
            "{what}: expected the {alert} alert, got {refused:?}"
        );
        // The same client gets no gRPC answer either.
        let call = async {
            let conn = client.channel(addr).await.map_err(|e| e.to_string())?;
            // With a valid token: only the transport can refuse this.
            sign(conn.channel, Some(&bearer), b"x")
                .await
                .map_err(|e| e.to_string())
        };
        let outcome = tokio::time::timeout(Duration::from_secs(15), call)
            .await
            .expect("the refused call ends quickly");
        assert!(outcome.is_err(), "{what}: a call was served: {outcome:?}");
        println!("{what}: refused with {refused}");
    }
    daemon
        .wait_for_log(
            "TLS handshake refused: client certificate",
            6,
            Duration::from_secs(5),
        )
        .await;
    assert!(
        !daemon.stderr().contains("intruder\""),
        "a refused client reached HTTP\n{}",
        daemon.describe()
    );
    // Still serving valid clients.
    let conn = by_uri.channel(addr).await.expect("mTLS channel");
    sign_and_verify(conn.channel, None, b"after the refusals").await;
    assert_eq!(daemon.sigterm().await.code(), Some(0));
}

/// Signs on `channel` and checks the channel is still on its first connection.
async fn still_established(conn: &common::tls::TlsChannel, bearer: &str, step: &str) {
    sign_and_verify(conn.channel.clone(), Some(bearer), step.as_bytes()).await;
    assert_eq!(
        conn.connects(),
        1,
        "{step}: the established connection was replaced by a new one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_for_new_connections_only() {
    let ca = Ca::new("p11kms test CA");
    // No polling: only SIGHUP may reload.
    let (token, dir, bearer) = tls_token(&ca, Mtls::Off, &[("watch_interval_ms", 0.into())]);
    let daemon = Daemon::serve(&token, &[]);
    let addr = daemon.addr();
    let client = TlsClient::new(&ca);
    let established = client.channel(addr).await.expect("TLS channel");
    let first_serial = serial_of(&established.server_cert);
    still_established(&established, &bearer, "before any reload").await;
    let reloaded = "TLS certificate reloaded";

    // Renewal with the same key.
    let old_key = {
        let key_pem = std::fs::read_to_string(dir.key_path()).expect("read the key");
        rcgen::KeyPair::from_pem(&key_pem).expect("parse the key")
    };
    let renewed = ca.server_cert_with_key(old_key);
    dir.install(&renewed);
    let before_signal = client.probe(addr).await.expect("probe");
    assert_eq!(
        serial_of(&before_signal),
        first_serial,
        "the certificate changed without SIGHUP although polling is off"
    );
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let took = daemon
        .wait_for_log(reloaded, 1, Duration::from_secs(10))
        .await;
    println!("SIGHUP reload (same key) logged after {took:?}");
    let seen = client.probe(addr).await.expect("probe after reload");
    assert_eq!(
        serial_of(&seen),
        renewed.serial(),
        "a new connection sees the renewed cert"
    );
    still_established(&established, &bearer, "after the same-key renewal").await;

    // A new certificate with a new key.
    let rekeyed = ca.server_cert();
    dir.install(&rekeyed);
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    daemon
        .wait_for_log(reloaded, 2, Duration::from_secs(10))
        .await;
    let seen = client.probe(addr).await.expect("probe after re-key");
    assert_eq!(serial_of(&seen), rekeyed.serial());
    still_established(&established, &bearer, "after the re-key").await;

    // Nothing changed: nothing reloaded.
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    daemon
        .wait_for_log("TLS files unchanged", 1, Duration::from_secs(10))
        .await;

    // A broken file: logged, and the certificate in service stays.
    write_replace(
        &dir.cert_path(),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
        0o644,
    );
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    daemon
        .wait_for_log("TLS reload failed", 1, Duration::from_secs(10))
        .await;
    let seen = client
        .probe(addr)
        .await
        .expect("still serving after a bad file");
    assert_eq!(serial_of(&seen), rekeyed.serial());
    still_established(&established, &bearer, "after the failed reload").await;
    assert_eq!(daemon.stderr_count(reloaded), 2, "{}", daemon.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_certificate_file_is_picked_up_without_a_signal() {
    let ca = Ca::new("p11kms test CA");
    let (token, dir, bearer) = tls_token(&ca, Mtls::Off, &[("watch_interval_ms", 200.into())]);
    let daemon = Daemon::serve(&token, &[]);
    let addr = daemon.addr();
    let client = TlsClient::new(&ca);
    let established = client.channel(addr).await.expect("TLS channel");
    still_established(&established, &bearer, "before the change").await;

    let next = ca.server_cert();
    dir.install(&next);
    let took = daemon
        .wait_for_log("TLS certificate reloaded", 1, Duration::from_secs(10))
        .await;
    println!("file-change reload logged {took:?} after the files were replaced (poll: 200 ms)");
    let seen = client.probe(addr).await.expect("probe");
    assert_eq!(
        hex::encode(serial_of(&seen)),
        hex::encode(next.serial()),
        "{}",
        daemon.describe()
    );
    still_established(&established, &bearer, "after the file-change reload").await;

    // Only the key changes (a rotation caught half-way): refused, the current cert stays ...
    let misfit = "does not fit server.tls.cert_file";
    let (misfits, reloads) = (
        daemon.stderr_count(misfit),
        daemon.stderr_count("TLS certificate reloaded"),
    );
    let half = ca.server_cert();
    write_replace(&dir.key_path(), &half.key_pem(), 0o600);
    daemon
        .wait_for_log(misfit, misfits + 1, Duration::from_secs(10))
        .await;
    let seen = client.probe(addr).await.expect("probe mid-rotation");
    assert_eq!(serial_of(&seen), next.serial());
    // ... until the matching certificate arrives.
    write_replace(&dir.cert_path(), &half.cert_pem, 0o644);
    daemon
        .wait_for_log(
            "TLS certificate reloaded",
            reloads + 1,
            Duration::from_secs(10),
        )
        .await;
    let seen = client.probe(addr).await.expect("probe after the rotation");
    assert_eq!(serial_of(&seen), half.serial());
    still_established(&established, &bearer, "after the completed rotation").await;
}

/// Opens a TCP connection and, if `send` is not empty, writes it; then waits for the server to
/// close the connection and returns how long that took from the connect.
async fn time_until_closed(addr: SocketAddr, send: &[u8], limit: Duration) -> Duration {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).await.expect("TCP connect");
    if !send.is_empty() {
        stream.write_all(send).await.expect("send");
    }
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + limit).into(), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {} // e.g. a TLS alert before the close
            Err(_) => panic!("the server kept a stalled connection open for {limit:?}"),
        }
    }
}

/// The first bytes of a TLS ClientHello: a handshake record header promising 512 bytes, and a
/// few of them.
const PARTIAL_CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, // record: handshake, TLS 1.0 framing, 512 bytes
    0x01, 0x00, 0x01, 0xfc, // ClientHello, 508 bytes
    0x03, 0x03, 0x00, 0x01, 0x02, 0x03, // version, the start of the random
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_closed_at_the_timeout() {
    const TIMEOUT: Duration = Duration::from_millis(1500);
    let ca = Ca::new("p11kms test CA");
    let (token, _dir, _) = tls_token(
        &ca,
        Mtls::Off,
        &[("handshake_timeout_ms", (TIMEOUT.as_millis() as i64).into())],
    );
    let daemon = Daemon::serve(&token, &[]);
    let addr = daemon.addr();
    let limit = TIMEOUT + Duration::from_secs(5);
    let lateness = Lateness::start();

    let silent = time_until_closed(addr, &[], limit);
    let partial = time_until_closed(addr, PARTIAL_CLIENT_HELLO, limit);
    // A finished handshake that never starts HTTP is held to the same deadline.
    let no_http = async {
        let start = Instant::now();
        let mut stream = TlsClient::new(&ca).connect(addr).await.expect("handshake");
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout_at((start + limit).into(), stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return start.elapsed(),
                Ok(Ok(_)) => {}
                Err(_) => panic!("a TLS connection without HTTP stayed open for {limit:?}"),
            }
        }
    };
    let (silent, partial, no_http) = tokio::join!(silent, partial, no_http);
    // At the timeout: not before it (the server's clock starts after ours), and after it by no
    // more than a tenth of it plus how late timers ran on this machine meanwhile.
    let latest = TIMEOUT + TIMEOUT / 10 + lateness.slack();
    println!(
        "handshake timeout {TIMEOUT:?}: silent client closed after {silent:?}, partial ClientHello after {partial:?}, TLS without HTTP after {no_http:?} (latest allowed {latest:?}; timers up to {:?} late)",
        lateness.max()
    );
    for (what, took) in [
        ("silent client", silent),
        ("partial ClientHello", partial),
        ("TLS without HTTP", no_http),
    ] {
        assert!(
            took >= TIMEOUT - Duration::from_millis(50) && took <= latest,
            "{what}: closed after {took:?}, expected {TIMEOUT:?} (at most {latest:?})"
        );
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// New TLS connection + Sign, `n` times in a row, starting none after `until`; returns each
/// latency.
async fn legit_latencies(
    ca: &Ca,
    bearer: &str,
    addr: SocketAddr,
    n: usize,
    until: Option<Instant>,
) -> Vec<Duration> {
    let client = TlsClient::new(ca);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if until.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        let start = Instant::now();
        let conn = client
            .channel(addr)
            .await
            .expect("a legitimate client connects");
        sign(conn.channel, Some(bearer), format!("legit {i}").as_bytes())
            .await
            .expect("a legitimate client signs");
        out.push(start.elapsed());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_stalled_handshakes_do_not_block_a_legitimate_client() {
    const STALLED: usize = 200;
    const TIMEOUT: Duration = Duration::from_millis(4000);
    let ca = Ca::new("p11kms test CA");
    let (token, _dir, bearer) = tls_token(
        &ca,
        Mtls::Off,
        &[("handshake_timeout_ms", (TIMEOUT.as_millis() as i64).into())],
    );
    let daemon = Daemon::serve(&token, &[]);
    let addr = daemon.addr();

    let lateness = Lateness::start();
    legit_latencies(&ca, &bearer, addr, 3, None).await; // warm-up
    let baseline = legit_latencies(&ca, &bearer, addr, 15, None).await;
    let fds_before = daemon.open_fds();

    let opened = Instant::now();
    let mut stalled = Vec::with_capacity(STALLED);
    for _ in 0..STALLED {
        let mut s = TcpStream::connect(addr).await.expect("TCP connect");
        s.write_all(PARTIAL_CLIENT_HELLO).await.expect("send");
        stalled.push(s);
    }
    let all_opened = opened.elapsed();
    // The daemon really holds them: one descriptor each (polled; accept is asynchronous).
    let held = loop {
        let fds = daemon.open_fds();
        // Lenient by a few: descriptors of the baseline's closed connections may still be
        // going away when `fds_before` is read.
        if fds >= fds_before + STALLED - 10 {
            break fds;
        }
        assert!(
            opened.elapsed() < TIMEOUT / 2,
            "the daemon accepted only {} of {STALLED} stalled connections",
            fds.saturating_sub(fds_before)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // As many as fit in the first half of the timeout, however slow the machine is, so that
    // every one overlaps the stalled handshakes.
    let during = legit_latencies(&ca, &bearer, addr, 15, Some(opened + TIMEOUT / 2)).await;
    let measured_within = opened.elapsed();
    assert!(
        measured_within < TIMEOUT,
        "the measurement ran past the handshake timeout ({measured_within:?}); it no longer \
         overlaps the stalled handshakes"
    );
    assert!(
        during.len() >= 3,
        "only {} legitimate connections in {:?} (baseline: {baseline:?})",
        during.len(),
        TIMEOUT / 2
    );

    // Every stalled connection is closed by the server at the timeout.
    let mut closed_after = Duration::ZERO;
    for mut s in stalled {
        let mut buf = [0u8; 64];
        let limit = opened + TIMEOUT + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(limit.into(), s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) => panic!("a stalled handshake was still open 5 s after the timeout"),
            }
        }
        closed_after = closed_after.max(opened.elapsed());
    }
    // ... and holds nothing afterwards.
    let released = Instant::now();
    let fds_after = loop {
        let fds = daemon.open_fds();
        if fds <= fds_before + 2 || released.elapsed() > Duration::from_secs(5) {
            break fds;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let (base_med, base_max) = (median(baseline.clone()), *baseline.iter().max().unwrap());
    let (dur_med, dur_max) = (median(during.clone()), *during.iter().max().unwrap());
    // Each stalled connection is closed at its own timeout: the last one opened
    // `all_opened` after the first.
    let latest_close = all_opened + TIMEOUT + TIMEOUT / 10 + lateness.slack();
    println!(
        "legitimate client (new TLS connection + Sign): baseline median {base_med:?} max {base_max:?}; \
         with {STALLED} stalled handshakes median {dur_med:?} max {dur_max:?} ({} samples); \
         fds {fds_before} -> {held} -> {fds_after}; stalled connections opened within {all_opened:?}, \
         the last closed {closed_after:?} after the first opened (timeout {TIMEOUT:?}, latest allowed \
         {latest_close:?}; timers up to {:?} late)",
        during.len(),
        lateness.max()
    );
    // Typical latency: within three baseline medians, plus the spread the baseline itself showed.
    // Worst case: a client queued behind the stalled handshakes would wait for their timeout;
    // none may wait even half of it.
    assert!(
        dur_med <= base_med * 3 + (base_max - base_med) && dur_max < TIMEOUT / 2,
        "stalled handshakes slowed a legitimate client: median {base_med:?} -> {dur_med:?}, \
         max {base_max:?} -> {dur_max:?}"
    );
    assert!(
        closed_after <= latest_close,
        "the last stalled handshake was closed {closed_after:?} after the burst began"
    );
    assert!(
        fds_after <= fds_before + 2,
        "descriptors were not released: {fds_before} before, {fds_after} after"
    );
}

#[test]
fn plaintext_beyond_loopback_is_refused_at_startup() {
    let token = TestToken::dev();
    for listen in ["0.0.0.0:0", "[::]:0"] {
        token.set_server("listen", listen);
        Daemon::serve_expecting_failure(&token, &[])
            .assert_failed()
            .assert_stderr_has(&["server.listen", "server.tls", "loopback"]);
    }
    // The same through the environment override.
    token.set_server("listen", "127.0.0.1:0");
    Daemon::serve_expecting_failure(&token, &[("P11KMS__SERVER__LISTEN", "0.0.0.0:0")])
        .assert_failed()
        .assert_stderr_has(&["server.listen", "server.tls"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_may_listen_beyond_loopback() {
    let ca = Ca::new("p11kms test CA");
    let (token, _dir, bearer) = tls_token(&ca, Mtls::Off, &[]);
    token.set_server("listen", "0.0.0.0:0");
    let mut daemon = Daemon::serve(&token, &[]);
    let addr = SocketAddr::from(([127, 0, 0, 1], daemon.addr().port()));
    let conn = TlsClient::new(&ca)
        .channel(addr)
        .await
        .expect("TLS channel");
    sign_and_verify(conn.channel, Some(&bearer), b"wildcard listener").await;
    // Discovery would hand out 0.0.0.0: the operator is told to set advertise_address.
    assert!(
        daemon
            .stderr()
            .contains("server.advertise_address is not set"),
        "{}",
        daemon.describe()
    );
    assert_eq!(daemon.sigterm().await.code(), Some(0));
}

#[test]
fn unusable_tls_files_stop_startup_with_the_key_named() {
    let ca = Ca::new("p11kms test CA");
    let (token, dir, _) = tls_token(&ca, Mtls::Required, &[]);

    let other = ca.server_cert();
    std::fs::write(dir.key_path(), other.key_pem()).expect("write a key of another cert");
    Daemon::serve_expecting_failure(&token, &[])
        .assert_failed()
        .assert_stderr_has(&["server.tls.key_file", "does not fit"]);

    std::fs::remove_file(dir.key_path()).expect("remove the key");
    Daemon::serve_expecting_failure(&token, &[])
        .assert_failed()
        .assert_stderr_has(&["server.tls.key_file", "cannot read"]);

    std::fs::write(dir.key_path(), other.key_pem()).expect("restore a key");
    std::fs::write(dir.cert_path(), other.cert_pem.as_bytes()).expect("matching cert");
    std::fs::write(dir.client_ca_path(), "no PEM here\n").expect("write a bad CA bundle");
    Daemon::serve_expecting_failure(&token, &[])
        .assert_failed()
        .assert_stderr_has(&["server.tls.client_ca_file", "no CERTIFICATE"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_client_ca_bundle_applies_to_new_handshakes_only() {
    let old_ca = Ca::new("p11kms client CA 2025");
    let new_ca = Ca::new("p11kms client CA 2026");
    // The server certificate comes from `old_ca` too; clients trust it throughout.
    let (token, dir, _) = tls_token(&old_ca, Mtls::Required, &[("watch_interval_ms", 0.into())]);
    let id = "spiffe://p11kms.test/ns/ci/sa/rotating";
    grant_mtls(&token, id, SIGNER);
    let daemon = Daemon::serve(&token, &[]);
    let addr = daemon.addr();
    let old_client = TlsClient::with_identity(&old_ca, &old_ca.client_cert(&ClientId::spiffe(id)));
    let new_client = TlsClient::with_identity(&old_ca, &new_ca.client_cert(&ClientId::spiffe(id)));
    let established = old_client.channel(addr).await.expect("mTLS channel");
    sign_and_verify(established.channel.clone(), None, b"before the CA rotation").await;
    let refused = new_client.probe(addr).await.expect_err("not trusted yet");
    assert!(refused.contains("UnknownCA"), "{refused}");

    write_replace(&dir.client_ca_path(), &new_ca.pem(), 0o644);
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    daemon
        .wait_for_log("mTLS client CA bundle reloaded", 1, Duration::from_secs(10))
        .await;
    new_client
        .probe(addr)
        .await
        .expect("the new CA's clients are accepted");
    let refused = old_client
        .probe(addr)
        .await
        .expect_err("the old CA is gone");
    assert!(refused.contains("UnknownCA"), "{refused}");
    // The connection made under the old bundle stays up.
    sign_and_verify(established.channel.clone(), None, b"after the CA rotation").await;
    assert_eq!(established.connects(), 1);
}
