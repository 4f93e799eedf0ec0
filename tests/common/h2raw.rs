//! A bare HTTP/2 client (`h2`) for what tonic will not send: hand-built gRPC frames (malformed
//! protobuf, two messages on a unary call, a body that ends mid-frame), streams that stall
//! halfway through their body, oversized headers, and connections from a chosen loopback
//! address (`127.0.0.2` is another client than `127.0.0.1` to the daemon's per-IP limits).
//!
//! ```ignore
//! let conn = H2Conn::connect(daemon.addr()).await;
//! let answer = conn.unary(SIGN, Some(daemon.admin_token()), &[], vec![grpc_frame(&msg)]).await;
//! assert_eq!(answer.code(), Some(3));
//! ```

use bytes::Bytes;
use std::net::{IpAddr, SocketAddr};
use tokio::net::{TcpSocket, TcpStream};

/// gRPC paths the tests call.
pub const SIGN: &str =
    "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureCryptoService/Sign";
/// `AsymmetricSignatureKeyService/Get`.
pub const KEY_GET: &str =
    "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureKeyService/Get";
/// `grpc.health.v1.Health/Check`.
pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
/// `grpc.health.v1.Health/Watch` (server streaming; one request message).
pub const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";
/// gRPC reflection v1 (bidirectional streaming).
pub const REFLECTION_V1: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
/// Endpoint discovery, `ApiEndpointService/List`.
pub const ENDPOINTS_LIST: &str = "/yandex.cloud.endpoint.ApiEndpointService/List";

/// A gRPC message frame: uncompressed, big-endian length, payload.
pub fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut frame = length_prefix(0, payload.len());
    frame.extend_from_slice(payload);
    frame.into()
}

/// The 5-byte gRPC frame header alone: the compressed flag and a declared length.
pub fn length_prefix(flag: u8, declared: usize) -> Vec<u8> {
    let mut prefix = vec![flag];
    prefix.extend_from_slice(&u32::try_from(declared).expect("fits").to_be_bytes());
    prefix
}

/// What the server answered on one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A gRPC status (trailers-only or after the messages), with the response messages' bytes.
    Grpc {
        /// `grpc-status`.
        code: i32,
        /// `grpc-message` (percent-encoded as sent).
        message: String,
        /// The response body (gRPC frames), empty for trailers-only answers.
        body: Vec<u8>,
    },
    /// An HTTP status without any gRPC status.
    Http(u16),
    /// The stream was reset (`RST_STREAM`) or the connection failed.
    Reset(String),
}

impl Answer {
    /// The gRPC code, if the answer has one.
    pub fn code(&self) -> Option<i32> {
        match self {
            Answer::Grpc { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// One HTTP/2 connection with its driver task.
pub struct H2Conn {
    /// The request handle (clone it for concurrent streams).
    pub send: h2::client::SendRequest<Bytes>,
    /// The connection task; ends when the connection does.
    pub driver: tokio::task::JoinHandle<Result<(), h2::Error>>,
}

impl H2Conn {
    /// Connects from `127.0.0.1`.
    pub async fn connect(addr: SocketAddr) -> Self {
        Self::over(TcpStream::connect(addr).await.expect("connect")).await
    }

    /// Connects from `local` (any address of `127.0.0.0/8` works on Linux loopback).
    pub async fn connect_from(local: IpAddr, addr: SocketAddr) -> std::io::Result<Self> {
        let stream = tcp_from(local, addr).await?;
        Ok(Self::over(stream).await)
    }

    /// An HTTP/2 handshake over `io`.
    pub async fn over<T>(io: T) -> Self
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        Self::try_over(io).await.expect("HTTP/2 handshake")
    }

    /// An HTTP/2 handshake over `io`, which the server may refuse (close).
    pub async fn try_over<T>(io: T) -> Result<Self, h2::Error>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = h2::client::Builder::new()
            // Our own windows must never be what stalls a test.
            .initial_window_size(4 << 20)
            .initial_connection_window_size(64 << 20)
            .handshake(io)
            .await?;
        let driver = tokio::spawn(conn);
        Ok(Self { send, driver })
    }

    /// Opens a gRPC stream on `path` and sends nothing yet; the caller writes the body.
    pub async fn open(
        &self,
        path: &str,
        bearer: Option<&str>,
        extra: &[(&str, String)],
    ) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>), String> {
        let request = grpc_request(path, bearer, extra);
        let mut send = self.send.clone().ready().await.map_err(|e| e.to_string())?;
        send.send_request(request, false).map_err(|e| e.to_string())
    }

    /// One call: sends `chunks` (each as one DATA frame, the last with END_STREAM; none: the
    /// HEADERS frame ends the stream) and reads the answer.
    pub async fn unary(
        &self,
        path: &str,
        bearer: Option<&str>,
        extra: &[(&str, String)],
        chunks: Vec<Bytes>,
    ) -> Answer {
        let request = grpc_request(path, bearer, extra);
        let mut send = match self.send.clone().ready().await {
            Ok(send) => send,
            Err(e) => return Answer::Reset(e.to_string()),
        };
        let (response, mut stream) = match send.send_request(request, chunks.is_empty()) {
            Ok(sent) => sent,
            Err(e) => return Answer::Reset(e.to_string()),
        };
        let last = chunks.len().saturating_sub(1);
        for (i, chunk) in chunks.into_iter().enumerate() {
            // Queued whole: h2 sends it as flow control allows, and drops the rest if the
            // server answers (and resets the stream) first.
            if stream.send_data(chunk, i == last).is_err() {
                break;
            }
        }
        read_answer(response).await
    }
}

/// A TCP connection from `local` to `addr`.
pub async fn tcp_from(local: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match local {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(local, 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn grpc_request(path: &str, bearer: Option<&str>, extra: &[(&str, String)]) -> http::Request<()> {
    let mut builder = http::Request::post(format!("http://p11kms{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(bearer) = bearer {
        builder = builder.header("authorization", format!("Bearer {bearer}"));
    }
    for (name, value) in extra {
        builder = builder.header(*name, value.as_str());
    }
    builder.body(()).expect("request")
}

/// Reads a response to its end: its gRPC status, else its HTTP status, else the reset.
pub async fn read_answer(response: h2::client::ResponseFuture) -> Answer {
    let response = match response.await {
        Ok(r) => r,
        Err(e) => {
            return Answer::Reset(
                e.reason()
                    .map_or_else(|| e.to_string(), |r| format!("{r:?}")),
            )
        }
    };
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
    if let Some((code, message)) = status_of(&head.headers) {
        return Answer::Grpc {
            code,
            message,
            body: Vec::new(),
        };
    }
    if head.status != http::StatusCode::OK {
        return Answer::Http(head.status.as_u16());
    }
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(chunk) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            Err(e) => return Answer::Reset(e.to_string()),
        }
    }
    match body.trailers().await {
        Ok(Some(trailers)) => match status_of(&trailers) {
            Some((code, message)) => Answer::Grpc {
                code,
                message,
                body: data,
            },
            None => Answer::Reset("trailers without grpc-status".into()),
        },
        Ok(None) => Answer::Reset("no trailers".into()),
        Err(e) => Answer::Reset(e.to_string()),
    }
}

/// The payload of the first gRPC frame of a response body.
pub fn first_message(body: &[u8]) -> &[u8] {
    assert!(body.len() >= 5, "no gRPC frame in {} bytes", body.len());
    let len = u32::from_be_bytes(body[1..5].try_into().expect("4 bytes")) as usize;
    &body[5..5 + len]
}

/// HTTP/2 spoken frame by frame, for what no client library sends: streams past the server's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`, frames that break the protocol. Header blocks are HPACK
/// literals without indexing or Huffman coding (valid HPACK that any decoder reads).
pub struct RawH2 {
    stream: TcpStream,
    read: Vec<u8>,
}

/// One frame the server sent.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Frame type (0 DATA, 1 HEADERS, 3 RST_STREAM, 4 SETTINGS, 6 PING, 7 GOAWAY, ...).
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Stream id.
    pub stream: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            3 => 0,
            7 => 4,
            _ => return None,
        };
        self.payload
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }
}

/// RST_STREAM / GOAWAY error codes.
pub const PROTOCOL_ERROR: u32 = 1;
/// The server did not process the stream; the client may retry it.
pub const REFUSED_STREAM: u32 = 7;

fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u8, value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | u8::try_from(value).expect("below the prefix"));
        return;
    }
    out.push(first | u8::try_from(max).expect("prefix"));
    let mut rest = value - max;
    while rest >= 128 {
        out.push(u8::try_from(rest % 128).expect("7 bits") | 0x80);
        rest /= 128;
    }
    out.push(u8::try_from(rest).expect("7 bits"));
}

fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    // Literal header field without indexing, new name (RFC 7541 §6.2.2).
    out.push(0);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

impl RawH2 {
    /// Connects, sends the preface and an empty SETTINGS frame.
    pub async fn connect(addr: SocketAddr) -> Self {
        use tokio::io::AsyncWriteExt as _;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(super::tls::H2_PREFACE_AND_SETTINGS)
            .await
            .expect("preface");
        Self {
            stream,
            read: Vec::new(),
        }
    }

    /// Sends one frame.
    pub async fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        use tokio::io::AsyncWriteExt as _;
        let len = u32::try_from(payload.len()).expect("fits");
        let mut frame = len.to_be_bytes()[1..].to_vec();
        frame.extend_from_slice(&[kind, flags]);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).await.expect("write a frame");
    }

    /// Opens `stream` with a gRPC request on `path` (END_STREAM when `end`), splitting the
    /// header block into CONTINUATION frames of 16 KiB.
    pub async fn headers(&mut self, stream: u32, path: &str, extra: &[(&str, String)], end: bool) {
        // :method POST and :scheme http from the static table, the rest literal.
        let mut block = vec![0x83, 0x86];
        hpack_literal(&mut block, ":path", path);
        hpack_literal(&mut block, ":authority", "p11kms");
        hpack_literal(&mut block, "content-type", "application/grpc");
        hpack_literal(&mut block, "te", "trailers");
        for (name, value) in extra {
            hpack_literal(&mut block, name, value);
        }
        let chunks: Vec<&[u8]> = block.chunks(16 * 1024).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let mut flags = if last { 0x4 } else { 0 };
            if i == 0 && end {
                flags |= 0x1;
            }
            let kind = if i == 0 { 0x1 } else { 0x9 };
            self.frame(kind, flags, stream, chunk).await;
        }
    }

    /// The next frame from the server, answering its SETTINGS and PINGs on the way; `None` when
    /// the connection ended.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        use tokio::io::AsyncReadExt as _;
        loop {
            if self.read.len() >= 9 {
                let len = (usize::from(self.read[0]) << 16)
                    | (usize::from(self.read[1]) << 8)
                    | usize::from(self.read[2]);
                if self.read.len() >= 9 + len {
                    let frame = Frame {
                        kind: self.read[3],
                        flags: self.read[4],
                        stream: u32::from_be_bytes(self.read[5..9].try_into().expect("4 bytes"))
                            & 0x7fff_ffff,
                        payload: self.read[9..9 + len].to_vec(),
                    };
                    self.read.drain(..9 + len);
                    match (frame.kind, frame.flags & 0x1) {
                        (4, 0) => self.frame(4, 0x1, 0, &[]).await,
                        (6, 0) => {
                            let payload = frame.payload.clone();
                            self.frame(6, 0x1, 0, &payload).await;
                        }
                        _ => {}
                    }
                    return Some(frame);
                }
            }
            let mut buf = [0u8; 16 * 1024];
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.read.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Frames until one on `stream` that ends it (END_STREAM or RST_STREAM), or a GOAWAY, or
    /// the end of the connection; returns that frame.
    pub async fn answer_on(&mut self, stream: u32) -> Option<Frame> {
        while let Some(frame) = self.next_frame().await {
            let ends = frame.stream == stream && (frame.kind == 3 || frame.flags & 0x1 != 0);
            if ends || frame.kind == 7 {
                return Some(frame);
            }
        }
        None
    }
}
