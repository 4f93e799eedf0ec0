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
) -> Option<(h2::SendStream<Bytes>, tokio::task::JoinHandle<Answer>)> {
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
                .entry(
                    answer
                        .code()
                        .map_or_else(|| format!("{answer:?}"), |c| c.to_string()),
                )
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
        if killed {
            " (daemon SIGKILLed past 1 GiB)"
        } else {
            ""
        },
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
    println!(
        "2 KB header: HTTP/1.1 {}, HTTP/2 {:?}; 20 KB header: HTTP/1.1 {}, HTTP/2 {:?}",
        small.0, small.1, large.0, large.1
    );
    assert_eq!(small.0, "200");
    assert_eq!(small.1.code(), Some(0));
    assert_eq!(large.0, "431", "HTTP/1.1 accepted a 20 KB header");
    assert_eq!(large.1, Answer::Http(431), "HTTP/2 and a 20 KB header");
}

/// A gRPC health check on `conn`: `Ok(code)` or the transport error.
async fn health_check(conn: &H2Conn) -> Answer {
    tokio::time::timeout(
        Duration::from_secs(30),
        conn.unary(HEALTH_CHECK, None, &[], vec![grpc_frame(&[])]),
    )
    .await
    .unwrap_or_else(|_| Answer::Reset("no answer within 30 s".into()))
}

/// A connection from `local` that has answered a health check, or why not.
async fn connected_from(local: IpAddr, daemon: &Daemon) -> Result<H2Conn, String> {
    let stream = tcp_from(local, daemon.addr())
        .await
        .map_err(|e| e.to_string())?;
    let conn = H2Conn::try_over(stream).await.map_err(|e| e.to_string())?;
    match health_check(&conn).await {
        Answer::Grpc { code: 0, .. } => Ok(conn),
        other => Err(format!("{other:?}")),
    }
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_limited_per_address_and_in_total_with_a_reserve_for_health_checks() {
    let token = TestToken::dev();
    token.set_server("max_connections", 4);
    token.set_server("max_connections_per_ip", 2);
    token.set_server("health_reserve_connections", 1);
    let daemon = Daemon::serve(&token, &[]);
    let admin = daemon.admin_token().to_string();

    // Two from one address; its third is closed at once.
    let a1 = connected_from(ip(1), &daemon).await.expect("first from .1");
    let _a2 = connected_from(ip(1), &daemon)
        .await
        .expect("second from .1");
    let a3 = connected_from(ip(1), &daemon).await;
    assert!(
        a3.is_err(),
        "a third connection from one address was served"
    );
    // Two more from another: the global limit of 4 is reached.
    let _b1 = connected_from(ip(2), &daemon).await.expect("first from .2");
    let _b2 = connected_from(ip(2), &daemon)
        .await
        .expect("second from .2");
    // The reserve: health checks only.
    let probe = connected_from(ip(3), &daemon)
        .await
        .expect("a health check gets through on the reserve");
    let sign = grpc_frame(
        &AsymmetricSignRequest {
            key_id: dev_key_id(P256),
            message: b"on the reserve".to_vec(),
        }
        .encode_to_vec(),
    );
    let refused = probe
        .unary(SIGN, Some(&admin), &[], vec![sign.clone()])
        .await;
    let Answer::Grpc { code, message, .. } = &refused else {
        panic!("a Sign on a reserve connection: {refused:?}");
    };
    assert_eq!(*code, 14, "UNAVAILABLE: {refused:?}");
    assert!(message.contains("max_connections"), "{message}");
    // Past the reserve, nothing.
    let full = connected_from(ip(4), &daemon).await;
    assert!(full.is_err(), "a connection past the reserve was served");
    let refusals = daemon.stderr_count("connection refused at a limit");
    println!(
        "per address 2, total 4, reserve 1: third from .1 -> {:?}; reserve Sign -> {code} {message:?}; \
         past the reserve -> {:?}; {refusals} 'connection refused at a limit' log lines",
        a3.err(),
        full.err()
    );
    assert!(refusals >= 2, "{}", daemon.stderr());

    // A closed connection frees its place: .4 gets a full connection once .1 has one fewer.
    // The server learns of the closes asynchronously, so a connection made right after them
    // may still land in the reserve (health checks only): wait for one that signs.
    drop(a1);
    drop(probe);
    let started = Instant::now();
    loop {
        if let Ok(c) = connected_from(ip(4), &daemon).await {
            let answer = c.unary(SIGN, Some(&admin), &[], vec![sign.clone()]).await;
            match answer.code() {
                Some(0) => break,
                Some(14) => {}
                _ => panic!("a Sign on a freed place: {answer:?}"),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the freed places were never given out again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens a stream on `path` and sends `bytes` of a message that declares more, then stalls.
async fn partial_body(
    conn: &H2Conn,
    path: &str,
    bearer: Option<&str>,
    bytes: usize,
) -> (h2::SendStream<Bytes>, tokio::task::JoinHandle<Answer>) {
    let (response, mut stream) = conn.open(path, bearer, &[]).await.expect("open a stream");
    let answer = tokio::spawn(read_answer(response));
    let mut body = length_prefix(0, bytes + 100);
    body.extend_from_slice(&ZEROS[..bytes]);
    let _ = stream.send_data(body.into(), false);
    (stream, answer)
}

/// Opens stalled streams until one is answered: the refusal, and how many were held.
async fn fill_until_refused(
    conn: &H2Conn,
    path: &str,
    bearer: Option<&str>,
    bytes: usize,
    held: &mut Vec<h2::SendStream<Bytes>>,
) -> (Answer, usize) {
    let started = Instant::now();
    let mut open: Vec<tokio::task::JoinHandle<Answer>> = Vec::new();
    loop {
        if let Some(i) = open.iter().position(tokio::task::JoinHandle::is_finished) {
            let answer = open.swap_remove(i).await.expect("answer task");
            for a in open {
                a.abort();
            }
            return (answer, held.len() - 1);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} streams of {bytes} bytes held and none refused",
            held.len()
        );
        let (stream, answer) = tokio::time::timeout(
            Duration::from_secs(30),
            partial_body(conn, path, bearer, bytes),
        )
        .await
        .expect("the connection's stream limit was reached and nothing was refused");
        held.push(stream);
        open.push(answer);
        // The attacker's pace: the daemon reads each body as it comes, so that the stream
        // that passes the budget is refused close to it.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_past_the_global_budget_are_refused_until_some_finish() {
    const BUDGET: i64 = 1 << 20;
    const PIECE: usize = 60_000;
    let token = TestToken::dev();
    token.set_server("max_buffered_body_bytes", BUDGET);
    let daemon = Daemon::serve(&token, &[]);
    let admin = daemon.admin_token().to_string();
    let get_public_key =
        "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureCryptoService/GetPublicKey";

    // Without credentials: refused from half the budget.
    let anonymous = H2Conn::connect(daemon.addr()).await;
    let mut held = Vec::new();
    let (refusal, admitted) =
        fill_until_refused(&anonymous, HEALTH_CHECK, None, PIECE, &mut held).await;
    println!("anonymous: {admitted} streams of {PIECE} bytes held, then {refusal:?}");
    let Answer::Grpc {
        code: 8, message, ..
    } = &refusal
    else {
        panic!("anonymous stream past half the budget: {refusal:?}");
    };
    assert!(message.contains("max_buffered_body_bytes"), "{message}");
    assert!(
        admitted * PIECE >= (BUDGET / 2) as usize,
        "refused with only {admitted} streams held"
    );
    // With credentials: admitted up to the whole budget.
    let authenticated = H2Conn::connect(daemon.addr()).await;
    let mut held_too = Vec::new();
    let (refusal, more) = fill_until_refused(
        &authenticated,
        get_public_key,
        Some(&admin),
        PIECE,
        &mut held_too,
    )
    .await;
    println!("with credentials: {more} more streams held, then {refusal:?}");
    assert_eq!(refusal.code(), Some(8), "{refusal:?}");
    // Refused only once the whole budget was held (credentials get past the anonymous half;
    // how far the anonymous streams alone got depends on how fast the daemon read them).
    assert!(
        (admitted + more) * PIECE >= BUDGET as usize,
        "refused with only {} bytes held",
        (admitted + more) * PIECE
    );

    // Finished (here: abandoned) bodies give their bytes back.
    drop((held, held_too, anonymous, authenticated));
    let conn = H2Conn::connect(daemon.addr()).await;
    let sign = grpc_frame(
        &AsymmetricSignRequest {
            key_id: dev_key_id(P256),
            message: b"after the flood".to_vec(),
        }
        .encode_to_vec(),
    );
    let started = Instant::now();
    loop {
        let answer = conn
            .unary(SIGN, Some(&admin), &[], vec![sign.clone()])
            .await;
        if answer.code() == Some(0) {
            break;
        }
        assert_eq!(answer.code(), Some(8), "{answer:?}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the budget was never given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_credentials_and_health_checks_have_buckets_per_address() {
    let token = TestToken::dev();
    // Refills take 1000 s: within the test each bucket holds exactly its burst.
    token.set_config("rate_limit", "anonymous_per_ip_rps", 0.001);
    token.set_config("rate_limit", "anonymous_burst", 5);
    token.set_config("rate_limit", "health_per_ip_rps", 0.001);
    token.set_config("rate_limit", "health_burst", 8);
    let daemon = Daemon::serve(&token, &[]);
    let admin = daemon.admin_token().to_string();
    let conn = H2Conn::connect(daemon.addr()).await;
    let mut codes = Vec::new();
    for _ in 0..10 {
        let answer = conn
            .unary(ENDPOINTS_LIST, None, &[], vec![grpc_frame(&[])])
            .await;
        codes.push(answer.code());
    }
    let mut health = Vec::new();
    for _ in 0..10 {
        health.push(health_check(&conn).await.code());
    }
    let elsewhere = connected_from(CLIENT, &daemon).await.map(|_| ());
    let with_credentials = conn
        .unary(ENDPOINTS_LIST, Some(&admin), &[], vec![grpc_frame(&[])])
        .await;
    println!(
        "anonymous (burst 5): {codes:?}; health (burst 8): {health:?}; another address: \
         {elsewhere:?}; with credentials: {:?}",
        with_credentials.code()
    );
    assert_eq!(codes, [[Some(0); 5], [Some(8); 5]].concat());
    assert_eq!(health, [vec![Some(0); 8], vec![Some(8); 2]].concat());
    assert!(elsewhere.is_ok(), "{elsewhere:?}");
    assert_eq!(with_credentials.code(), Some(0));
}
