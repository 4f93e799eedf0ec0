//! What a client without credentials can make the daemon hold (issue 11, item 2): memory for
//! partial request bodies on every gRPC service (health and reflection included), HTTP/1.1
//! header buffers, connections, and requests per second.
//!
//! The attack test replays the review's attack (anonymous, 5 HTTP/2 connections × 128 streams,
//! each stream declaring a 4 MiB message and stalling one byte short, plus 300 HTTP/1.1
//! connections each sending ~400 KB of headers and stalling) and watches the daemon's RSS from
//! outside, while a legitimate client on another address signs. Numbers are printed for the
//! report (`--no-capture`).

mod common;

use bytes::Bytes;
use common::h2raw::{
    first_message, grpc_frame, length_prefix, read_answer, tcp_from, Answer, H2Conn,
    ENDPOINTS_LIST, HEALTH_CHECK, REFLECTION_V1, SIGN,
};
use common::{dev_key_id, Daemon, TestToken};
use p11kms::api::yandex::grpc::pb::kms::{AsymmetricSignRequest, AsymmetricSignResponse};
use p11kms::crypto::Algorithm;
use prost::Message as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const P256: Algorithm = Algorithm::EcdsaP256Sha256;
/// The attacker's address and a legitimate client's.
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const MIB: u64 = 1024;

/// The body bytes every attack stream sends: one static buffer, so that queuing 2.5 GB of
/// stream data costs the test process nothing.
static ZEROS: [u8; 4 << 20] = [0; 4 << 20];

/// Samples the daemon's RSS every 50 ms, keeping the peak; past `kill_above` KiB it SIGKILLs
/// the daemon (an unfixed daemon would otherwise eat the shared machine's memory) and says so.
struct RssWatch {
    peak: Arc<AtomicU64>,
    killed: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssWatch {
    fn start(daemon: &Daemon, kill_above: u64) -> Self {
        let pid = daemon.pid();
        let peak = Arc::new(AtomicU64::new(daemon.rss_kib()));
        let killed = Arc::new(AtomicBool::new(false));
        let (p, k) = (Arc::clone(&peak), Arc::clone(&killed));
        let task = tokio::spawn(async move {
            loop {
                let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                    return;
                };
                let rss = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    .unwrap_or(0);
                p.fetch_max(rss, Ordering::Relaxed);
                if rss > kill_above {
                    k.store(true, Ordering::Relaxed);
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self { peak, killed, task }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

/// One attack stream: opened without credentials on `path`, declaring a message of
/// `declared` bytes and sending all but the last byte. The answer task says whether (and how)
/// the server answered; the send half is kept so that the stream stays open.
async fn stalled_stream(
    conn: &H2Conn,
    path: &str,
    declared: usize,
) -> Option<(
    h2::SendStream<Bytes>,
    tokio::task::JoinHandle<Answer>,
)> {
    let (response, mut stream) = conn.open(path, None, &[]).await.ok()?;
    let answer = tokio::spawn(read_answer(response));
    let _ = stream.send_data(length_prefix(0, declared).into(), false);
    let _ = stream.send_data(Bytes::from_static(&ZEROS[..declared - 1]), false);
    Some((stream, answer))
}

/// One HTTP/1.1 connection that sends a request line and `header_bytes` of headers (40
/// headers, under hyper's default count limit) and never finishes them. Returns whether the
/// server answered or closed.
async fn stalled_headers(addr: std::net::SocketAddr, header_bytes: usize) -> bool {
    let Ok(mut stream) = tcp_from(ATTACKER, addr).await else {
        return true;
    };
    let mut head = b"POST /endpoints HTTP/1.1\r\nHost: p11kms\r\n".to_vec();
    let per = header_bytes / 40;
    for i in 0..40 {
        head.extend_from_slice(format!("x-pad-{i:02}: ").as_bytes());
        head.extend(std::iter::repeat_n(b'a', per.saturating_sub(12)));
        head.extend_from_slice(b"\r\n");
    }
    let (mut read, mut write) = stream.split();
    let mut buf = [0u8; 1024];
    tokio::select! {
        // The server stopping us is all we want to know; a write that blocks (the server no
        // longer reads) simply waits here until the test ends.
        _ = async { let _ = write.write_all(&head).await; std::future::pending::<()>().await } => false,
        n = read.read(&mut buf) => { let _ = n; true }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_memory_pinning_attack_stays_under_100_mb_and_sign_still_answers() {
    const CONNECTIONS: usize = 5;
    const STREAMS: usize = 128;
    const DECLARED: usize = (4 << 20) - 1;
    const H1_CONNECTIONS: usize = 300;
    const H1_HEADER_BYTES: usize = 400_000;
    const HOLD: Duration = Duration::from_secs(10);
    const LIMIT_KIB: u64 = 100 * MIB;
    let _cpu = common::load::cpu_exclusive();
    let token = TestToken::dev();
    let daemon = Daemon::serve(&token, &[]);
    let admin = daemon.admin_token().to_string();
    let key = dev_key_id(P256);
    let pem = daemon
        .kms()
        .await
        .public_key(&key)
        .await
        .expect("public key");
    let public_key = common::verify::parse_public_key(&pem, P256).expect("the key parses");
    // A legitimate client is connected before the attack, from another address.
    let client = H2Conn::connect_from(CLIENT, daemon.addr())
        .await
        .expect("the client connects");
    let sign = |message: &[u8]| {
        grpc_frame(
            &AsymmetricSignRequest {
                key_id: key.clone(),
                message: message.to_vec(),
            }
            .encode_to_vec(),
        )
    };
    let warm = client
        .unary(SIGN, Some(&admin), &[], vec![sign(b"warm")])
        .await;
    assert_eq!(warm.code(), Some(0), "{warm:?}");

    let baseline = daemon.rss_kib();
    let watch = RssWatch::start(&daemon, 1024 * MIB);
    let started = Instant::now();

    // HTTP/2: anonymous streams on every public service, and on Sign (refused unread).
    let paths = [HEALTH_CHECK, REFLECTION_V1, ENDPOINTS_LIST, SIGN];
    let mut held = Vec::new();
    let mut answers = Vec::new();
    let mut not_opened = 0;
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        let Ok(stream) = tcp_from(ATTACKER, daemon.addr()).await else {
            not_opened += STREAMS;
            continue;
        };
        let Ok(conn) = H2Conn::try_over(stream).await else {
            not_opened += STREAMS;
            continue;
        };
        for s in 0..STREAMS {
            let opened = tokio::time::timeout(
                Duration::from_secs(10),
                stalled_stream(&conn, paths[s % paths.len()], DECLARED),
            )
            .await;
            match opened {
                Ok(Some((stream, answer))) => {
                    held.push(stream);
                    answers.push(answer);
                }
                _ => not_opened += 1,
            }
        }
        conns.push(conn);
    }
    // HTTP/1.1: connections with ~400 KB of unfinished headers.
    let h1: Vec<_> = (0..H1_CONNECTIONS)
        .map(|_| tokio::spawn(stalled_headers(daemon.addr(), H1_HEADER_BYTES)))
        .collect();
    let set_up = started.elapsed();

    // The legitimate Sign, with a 10 s deadline, while the attack holds.
    let asked = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        client.unary(
            SIGN,
            Some(&admin),
            &[("grpc-timeout", "10S".to_string())],
            vec![sign(b"under attack")],
        ),
    )
    .await
    .unwrap_or_else(|_| Answer::Reset("no answer within 30 s".into()));
    let sign_took = asked.elapsed();

    // Hold the attack for its full length, then look at what it achieved.
    tokio::time::sleep(HOLD.saturating_sub(started.elapsed())).await;
    let peak = watch.peak();
    let killed = watch.killed.load(Ordering::Relaxed);
    watch.task.abort();
    let mut refused = 0;
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for a in &answers {
        if a.is_finished() {
            refused += 1;
        }
    }
    for a in answers {
        if a.is_finished() {
            let answer = a.await.expect("answer task");
            *codes
                .entry(answer.code().map_or_else(|| format!("{answer:?}"), |c| c.to_string()))
                .or_default() += 1;
        } else {
            a.abort();
        }
    }
    let h1_stopped = h1.iter().filter(|t| t.is_finished()).count();
    for t in h1 {
        t.abort();
    }
    drop(held);
    println!(
        "attack: {CONNECTIONS}x{STREAMS} anonymous HTTP/2 streams declaring {DECLARED} bytes \
         ({not_opened} not opened; {refused} answered: {codes:?}) + {H1_CONNECTIONS} HTTP/1.1 \
         connections with {H1_HEADER_BYTES} bytes of headers ({h1_stopped} stopped by the server); \
         set up in {set_up:.1?}; RSS {baseline} KiB -> peak {peak} KiB over {HOLD:?}{}; \
         legitimate Sign: {:?} in {sign_took:.1?}",
        if killed { " (daemon SIGKILLed past 1 GiB)" } else { "" },
        answer.code()
    );
    assert!(
        !killed && peak < LIMIT_KIB,
        "the daemon's RSS reached {peak} KiB (limit {LIMIT_KIB} KiB)"
    );
    let Answer::Grpc { code: 0, body, .. } = &answer else {
        panic!("the legitimate Sign failed under attack: {answer:?}");
    };
    let signature = AsymmetricSignResponse::decode(first_message(body))
        .expect("a Sign response")
        .signature;
    public_key
        .verify_message(P256, b"under attack", &signature)
        .expect("the signature verifies");
}

/// HTTP/1.1 gets the header limit HTTP/2 has: a 20 KB header is refused with 431 on both, and
/// a 2 KB one is served on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_share_one_header_limit() {
    let token = TestToken::dev();
    let daemon = Daemon::serve(&token, &[]);
    let status_h1 = |pad: usize| {
        let addr = daemon.addr();
        async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let request = format!(
                "GET /endpoints HTTP/1.1\r\nHost: p11kms\r\nx-padding: {}\r\nConnection: close\r\n\r\n",
                "a".repeat(pad)
            );
            stream.write_all(request.as_bytes()).await.expect("write");
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            String::from_utf8_lossy(&answer)
                .split(' ')
                .nth(1)
                .unwrap_or("none")
                .to_string()
        }
    };
    let conn = H2Conn::connect(daemon.addr()).await;
    let status_h2 = |pad: usize| {
        let conn = &conn;
        async move {
            conn.unary(
                ENDPOINTS_LIST,
                None,
                &[("x-padding", "a".repeat(pad))],
                vec![grpc_frame(&[])],
            )
            .await
        }
    };
    let small = (status_h1(2_000).await, status_h2(2_000).await);
    let large = (status_h1(20_000).await, status_h2(20_000).await);
    println!("2 KB header: HTTP/1.1 {}, HTTP/2 {:?}; 20 KB header: HTTP/1.1 {}, HTTP/2 {:?}", small.0, small.1, large.0, large.1);
    assert_eq!(small.0, "200");
    assert_eq!(small.1.code(), Some(0));
    assert_eq!(large.0, "431", "HTTP/1.1 accepted a 20 KB header");
    assert_eq!(large.1, Answer::Http(431), "HTTP/2 and a 20 KB header");
}
