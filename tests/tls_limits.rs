//! What one connection may cost, on TLS and plaintext listeners alike: decode limits (a gzip
//! bomb, an oversized message), the header list size, the HTTP/2 SETTINGS the server
//! advertises, keepalive PINGs, and the maximum connection age.
//!
//! A bare `h2` client sends what tonic will not (compressed bodies, huge headers) and shows
//! the server's SETTINGS and connection close. Numbers are printed for the report
//! (`--no-capture`).

mod common;

use bytes::Bytes;
use common::lateness::Lateness;
use common::tls::{Ca, Mtls, TlsClient, TlsDir, H2_PREFACE_AND_SETTINGS};
use common::{dev_key_id, Daemon, TestToken};
use p11kms::api::yandex::grpc::pb::kms::{AsymmetricGetPublicKeyRequest, AsymmetricSignRequest};
use p11kms::crypto::Algorithm;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

const SIGN: &str = "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureCryptoService/Sign";
const GET_PUBLIC_KEY: &str =
    "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureCryptoService/GetPublicKey";

fn key_id() -> String {
    dev_key_id(Algorithm::EcdsaP256Sha256)
}

/// A gRPC message frame: compressed flag, big-endian length, payload.
fn grpc_frame(compressed: bool, payload: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(u8::from(compressed));
    frame.extend_from_slice(&u32::try_from(payload.len()).expect("fits").to_be_bytes());
    frame.extend_from_slice(payload);
    frame.into()
}

/// An HTTP/2 client connection (plaintext or TLS) with its driver task.
struct H2 {
    send: h2::client::SendRequest<Bytes>,
    driver: tokio::task::JoinHandle<Result<(), h2::Error>>,
}

impl H2 {
    async fn over<T>(io: T) -> Self
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = h2::client::handshake(io).await.expect("HTTP/2 handshake");
        let driver = tokio::spawn(conn);
        Self { send, driver }
    }

    async fn plaintext(daemon: &Daemon) -> Self {
        Self::over(TcpStream::connect(daemon.addr()).await.expect("connect")).await
    }

    async fn tls(daemon: &Daemon, ca: &Ca) -> Self {
        Self::over(
            TlsClient::new(ca)
                .connect(daemon.addr())
                .await
                .expect("TLS"),
        )
        .await
    }

    /// One gRPC call on this connection; see [`grpc_call`].
    async fn call(
        &self,
        path: &str,
        bearer: &str,
        extra: &[(&str, String)],
        body: Bytes,
    ) -> Result<(i32, String), String> {
        let extra = extra
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect();
        grpc_call(
            self.send.clone(),
            path.to_string(),
            bearer.to_string(),
            extra,
            body,
        )
        .await
    }
}

/// One gRPC call with `extra` headers and `body`: the grpc-status code and message, or the HTTP
/// status / stream error when there is no gRPC status at all.
async fn grpc_call(
    send: h2::client::SendRequest<Bytes>,
    path: String,
    bearer: String,
    extra: Vec<(String, String)>,
    body: Bytes,
) -> Result<(i32, String), String> {
    let mut builder = http::Request::post(format!("http://p11kms{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {bearer}"));
    for (name, value) in &extra {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let request = builder.body(()).expect("request");
    let mut send = send.ready().await.map_err(|e| e.to_string())?;
    let (response, mut stream) = send
        .send_request(request, false)
        .map_err(|e| e.to_string())?;
    // Queued whole: h2 sends it as flow control allows, and drops the rest if the server
    // answers (and resets the stream) first.
    let _ = stream.send_data(body, true);
    let response = response.await.map_err(|e| format!("stream error: {e}"))?;
    let (head, mut body) = response.into_parts();
    let status_of = |map: &http::HeaderMap| {
        map.get("grpc-status").map(|code| {
            let code = code.to_str().unwrap_or("?").parse().unwrap_or(-1);
            let message = map
                .get("grpc-message")
                .and_then(|m| m.to_str().ok())
                .unwrap_or_default()
                .to_string();
            (code, message)
        })
    };
    if let Some(status) = status_of(&head.headers) {
        return Ok(status);
    }
    if head.status != http::StatusCode::OK {
        return Err(format!("HTTP {}", head.status));
    }
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.map_err(|e| e.to_string())?;
    trailers
        .as_ref()
        .and_then(status_of)
        .ok_or_else(|| "no grpc-status".to_string())
}

/// `n` calls with the same body, 20 at a time on one connection; the answers in order.
async fn fire(
    send: &h2::client::SendRequest<Bytes>,
    bearer: &str,
    n: usize,
    extra: &[(&str, String)],
    body: &Bytes,
) -> Vec<Result<(i32, String), String>> {
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect();
    let mut answers = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let batch = left.min(20);
        left -= batch;
        let calls: Vec<_> = (0..batch)
            .map(|_| {
                tokio::spawn(grpc_call(
                    send.clone(),
                    SIGN.to_string(),
                    bearer.to_string(),
                    extra.clone(),
                    body.clone(),
                ))
            })
            .collect();
        for call in calls {
            answers.push(call.await.expect("call task"));
        }
    }
    answers
}

fn encode(message: &impl prost::Message) -> Vec<u8> {
    message.encode_to_vec()
}

/// A Sign request whose 10 MiB message compresses to a few KiB.
fn gzip_bomb() -> (Bytes, usize) {
    use flate2::write::GzEncoder;
    use std::io::Write as _;
    let plain = encode(&AsymmetricSignRequest {
        key_id: key_id(),
        message: vec![0u8; 10 * 1024 * 1024],
    });
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&plain).expect("compress");
    let compressed = gz.finish().expect("compress");
    let size = compressed.len();
    (grpc_frame(true, &compressed), size)
}

const OK: i32 = 0;
const UNIMPLEMENTED: i32 = 12;
const RESOURCE_EXHAUSTED: i32 = 8;
const OUT_OF_RANGE: i32 = 11;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bombs_and_oversized_messages_are_refused_without_memory_growth() {
    const BOMBS: usize = 200;
    const OVERSIZED: usize = 50;
    let token = TestToken::dev();
    let daemon = Daemon::serve(&token, &[]);
    let bearer = daemon.admin_token().to_string();
    let (bomb, compressed_len) = gzip_bomb();
    let oversized = grpc_frame(
        false,
        &encode(&AsymmetricSignRequest {
            key_id: key_id(),
            message: vec![7u8; 1024 * 1024],
        }),
    );
    // A length prefix that promises 10 MiB, and nothing after it.
    let mut promise = vec![0u8];
    promise.extend_from_slice(&(10u32 * 1024 * 1024).to_be_bytes());
    let promise = Bytes::from(promise);
    let gzip = [("grpc-encoding", "gzip".to_string())];

    let conn = H2::plaintext(&daemon).await;
    // Warm up allocator arenas and lazily built state, then measure.
    for answer in fire(&conn.send, &bearer, 20, &gzip, &bomb).await {
        let (code, _) = answer.expect("a gRPC answer");
        assert_ne!(code, OK);
    }
    let rss_before = daemon.rss_kib();
    let bombs = fire(&conn.send, &bearer, BOMBS, &gzip, &bomb).await;
    let big = fire(&conn.send, &bearer, OVERSIZED, &[], &oversized).await;
    let promised = fire(&conn.send, &bearer, OVERSIZED, &[], &promise).await;
    let rss_after = daemon.rss_kib();

    let (code, message) = bombs[0].clone().expect("a gRPC answer");
    let big_code = big[0].clone().expect("a gRPC answer").0;
    for answer in &bombs {
        let (c, _) = answer.clone().expect("a gRPC answer");
        // p11kms accepts no compressed requests at all; were gzip ever enabled, the 64 KiB
        // decode limit would apply to the inflated size (RESOURCE_EXHAUSTED).
        assert!(
            c == UNIMPLEMENTED || c == RESOURCE_EXHAUSTED,
            "a gzip bomb got grpc-status {c}"
        );
    }
    for (what, answers) in [("1 MiB message", &big), ("10 MiB length prefix", &promised)] {
        for answer in answers {
            let (c, m) = answer.clone().expect("a gRPC answer");
            // tonic refuses from the length prefix, before buffering: OUT_OF_RANGE.
            assert!(
                c == OUT_OF_RANGE || c == RESOURCE_EXHAUSTED,
                "{what}: grpc-status {c} {m}"
            );
        }
    }
    let growth = rss_after.saturating_sub(rss_before);
    println!(
        "{BOMBS} gzip bombs (10 MiB inflating, {compressed_len} bytes on the wire) -> grpc-status {code} {message:?}; \
         {OVERSIZED} 1 MiB messages and {OVERSIZED} 10 MiB length prefixes -> grpc-status {big_code}; \
         RSS {rss_before} KiB -> {rss_after} KiB (+{growth} KiB)"
    );
    assert!(
        growth < 4 * 1024,
        "RSS grew by {growth} KiB while refusing bombs and oversized messages"
    );

    // The connection and the daemon still serve.
    let ok = conn
        .call(
            GET_PUBLIC_KEY,
            &bearer,
            &[],
            grpc_frame(
                false,
                &encode(&AsymmetricGetPublicKeyRequest { key_id: key_id() }),
            ),
        )
        .await
        .expect("a gRPC answer");
    assert_eq!(ok.0, OK, "{}", ok.1);
}

/// A daemon with `settings` in `[server]`, over TLS or plaintext.
struct Served {
    daemon: Daemon,
    tls: Option<(Ca, TlsDir)>,
    _token: TestToken,
}

fn daemon_with(tls: bool, settings: &[(&str, toml::Value)]) -> Served {
    let token = TestToken::dev();
    for (k, v) in settings {
        token.set_server(k, v.clone());
    }
    let tls = tls.then(|| {
        let ca = Ca::new("p11kms test CA");
        let (dir, _) = TlsDir::new(&ca);
        token.set_server("tls", dir.config(Mtls::Off));
        (ca, dir)
    });
    Served {
        daemon: Daemon::serve(&token, &[]),
        tls,
        _token: token,
    }
}

impl Served {
    async fn connect(&self) -> H2 {
        match &self.tls {
            Some((ca, _)) => H2::tls(&self.daemon, ca).await,
            None => H2::plaintext(&self.daemon).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_header_list_is_refused_on_tls_and_plaintext() {
    for tls in [false, true] {
        let served = daemon_with(tls, &[("max_header_list_size", 8192.into())]);
        let bearer = served.daemon.admin_token().to_string();
        let conn = served.connect().await;
        let body = || {
            grpc_frame(
                false,
                &encode(&AsymmetricGetPublicKeyRequest { key_id: key_id() }),
            )
        };

        let small = [("x-padding", "a".repeat(2 * 1024))];
        let answer = conn.call(GET_PUBLIC_KEY, &bearer, &small, body()).await;
        assert_eq!(
            answer.clone().map(|a| a.0),
            Ok(OK),
            "2 KiB of headers: {answer:?}"
        );

        let huge = [("x-padding", "a".repeat(12 * 1024))];
        let refused = conn.call(GET_PUBLIC_KEY, &bearer, &huge, body()).await;
        println!("tls={tls}: 12 KiB header list with an 8 KiB limit -> {refused:?}");
        assert!(
            matches!(&refused, Err(e) if e.contains("431") || e.contains("stream error")),
            "tls={tls}: an oversized header list was not refused: {refused:?}"
        );

        // Refusing one stream leaves the connection usable.
        let again = conn.call(GET_PUBLIC_KEY, &bearer, &small, body()).await;
        assert_eq!(again.map(|a| a.0), Ok(OK), "tls={tls}: after the refusal");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_max_connection_age_apply_to_tls_and_plaintext() {
    const AGE: Duration = Duration::from_millis(1500);
    const GRACE: Duration = Duration::from_millis(500);
    let lateness = Lateness::start();
    for tls in [false, true] {
        let served = daemon_with(
            tls,
            &[
                ("max_concurrent_streams", 7.into()),
                ("max_connection_age_ms", (AGE.as_millis() as i64).into()),
                (
                    "max_connection_age_grace_ms",
                    (GRACE.as_millis() as i64).into(),
                ),
            ],
        );
        let bearer = served.daemon.admin_token().to_string();
        let opened = Instant::now();
        let conn = served.connect().await;
        let body = grpc_frame(
            false,
            &encode(&AsymmetricGetPublicKeyRequest { key_id: key_id() }),
        );
        let answer = conn.call(GET_PUBLIC_KEY, &bearer, &[], body).await;
        assert_eq!(answer.map(|a| a.0), Ok(OK));
        assert_eq!(
            conn.send.current_max_send_streams(),
            7,
            "tls={tls}: the server's SETTINGS_MAX_CONCURRENT_STREAMS"
        );
        let ended = tokio::time::timeout(AGE * 3, conn.driver)
            .await
            .expect("the connection outlived its maximum age")
            .expect("driver task");
        let lived = opened.elapsed();
        // The age is jittered by ±10%; an idle connection may still get the grace period, and
        // timers run as late as they did on this machine meanwhile.
        let latest = AGE.mul_f64(1.1) + GRACE + lateness.slack();
        println!("tls={tls}: max_connection_age {AGE:?} (±10%): the idle connection was closed after {lived:?} ({ended:?}; latest allowed {latest:?})");
        assert!(
            ended.is_ok(),
            "tls={tls}: the connection did not end with a graceful GOAWAY: {ended:?}"
        );
        assert!(
            lived >= AGE.mul_f64(0.9) && lived <= latest,
            "tls={tls}: closed after {lived:?}, expected {AGE:?} ± 10% (at most {latest:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_ignores_keepalive_pings_is_disconnected() {
    const INTERVAL: Duration = Duration::from_millis(300);
    const TIMEOUT: Duration = Duration::from_millis(300);
    let served = daemon_with(
        false,
        &[
            (
                "keepalive_interval_ms",
                (INTERVAL.as_millis() as i64).into(),
            ),
            ("keepalive_timeout_ms", (TIMEOUT.as_millis() as i64).into()),
        ],
    );
    let lateness = Lateness::start();
    let start = Instant::now();
    let mut stream = TcpStream::connect(served.daemon.addr())
        .await
        .expect("connect");
    stream
        .write_all(H2_PREFACE_AND_SETTINGS)
        .await
        .expect("preface");
    // Read everything the server sends and answer nothing (not even its SETTINGS).
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => panic!("a peer that never answers PINGs was kept for 10 s"),
        }
    }
    let lived = start.elapsed();
    let mut frame_types = Vec::new();
    let mut at = 0;
    while at + 9 <= received.len() {
        let len = usize::from(received[at]) << 16
            | usize::from(received[at + 1]) << 8
            | usize::from(received[at + 2]);
        frame_types.push(received[at + 3]);
        at += 9 + len;
    }
    // One interval of silence, a PING, its timeout: gone. One more such cycle is allowed (the
    // first interval may start only after the handshake), and late timers.
    let latest = 2 * (INTERVAL + TIMEOUT) + lateness.slack();
    println!("keepalive {INTERVAL:?} + {TIMEOUT:?}: silent peer closed after {lived:?} (latest allowed {latest:?}); frame types received {frame_types:?}");
    assert!(
        frame_types.contains(&0x6),
        "the server sent no PING: {frame_types:?}"
    );
    assert!(lived <= latest, "the silent peer was kept {lived:?}");
}

/// A connection we close waits for the client to close its side, reading and discarding what
/// it still sends, instead of closing the socket at once: a socket closed with client bytes
/// unread answers them with a TCP reset, and clients that are still writing (a TLS
/// close_notify, the rest of a body, a GOAWAY) then report "broken pipe" instead of the
/// answer they were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_waits_for_the_client_instead_of_resetting_it() {
    let token = TestToken::dev();
    let daemon = Daemon::serve(&token, &[]);
    let mut stream = TcpStream::connect(daemon.addr()).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /endpoints HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
                 Connection: close\r\n\r\n",
                daemon.admin_token()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // The whole answer, up to the server's end of file: it has shut down its side.
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Still writing after that is harmless: the server reads on until we close. (Had it
    // closed its socket, the first write would draw a reset over loopback at once and the
    // second fail with a broken pipe.)
    for round in 0..3 {
        stream
            .write_all(&[b'x'; 16 * 1024])
            .await
            .unwrap_or_else(|e| panic!("write {round} after the server's close: {e}"));
        stream.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let eof = stream.read_to_end(&mut rest).await;
    assert!(
        matches!(eof, Ok(0)),
        "after our close the server closes cleanly: {eof:?}"
    );
}
