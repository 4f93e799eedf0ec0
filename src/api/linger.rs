//! Lingering, so that a client gets the answer we sent before the connection went away.
//!
//! When a socket is closed with bytes from the client still unread (or arriving after the
//! close), the kernel answers with a TCP reset. A client still writing then gets "broken pipe"
//! or "connection reset" from its write, and many clients (hyper's, and so `reqwest` and
//! tonic) report that error instead of reading the answer we sent: our response, our GOAWAY.
//! On some systems the reset also discards what the client had received but not yet read.
//! Two places need care:
//!
//! * **A request body refused unread** ([`LingeringBody`]). Over HTTP/1.1 a client writes its
//!   whole body before it reads the answer. When a request is refused before its body is read
//!   (too large by `Content-Length`, unauthenticated, rate limited, unrouted), the body is
//!   drained in the background, every byte discarded: the answer arrives intact and the
//!   connection stays usable. HTTP/2 needs none of this (hyper resets just the stream, with
//!   NO_ERROR, as RFC 9113 §8.1 allows), nor does a request that asked `Expect: 100-continue`
//!   (its client waits for our answer before it sends the body).
//! * **Closing a connection** ([`LingeringClose`]): after our side is shut down (FIN sent, after
//!   the GOAWAY or the last response), we read and discard until the client closes too, then
//!   close the socket. A TLS client answers our close_notify with its own, which would otherwise
//!   hit a closed socket.
//!
//! Both are bounded in bytes or time, so a client cannot make us wait or read forever; past a
//! bound the connection is closed as it would have been without lingering.

use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::{Bytes, Incoming};
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Most bytes of an unread request body drained before the connection is given up.
pub const MAX_DRAIN_BYTES: u64 = 64 << 20;
/// Longest a connection lingers to drain an unread request body.
pub const MAX_DRAIN_TIME: Duration = Duration::from_secs(10);
/// Longest a connection whose side is shut down waits for the client to close its own.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// A request body that, if dropped before it was read to the end, is drained in the
/// background.
#[derive(Debug)]
pub struct LingeringBody {
    inner: Option<Incoming>,
    linger: bool,
}

impl LingeringBody {
    /// Wraps the body of `request`, lingering only where it helps: HTTP/1.x without
    /// `Expect: 100-continue`.
    pub fn wrap(request: http::Request<Incoming>) -> http::Request<Self> {
        let linger = request.version() <= http::Version::HTTP_11
            && !request
                .headers()
                .get(http::header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        request.map(|body| Self {
            inner: Some(body),
            linger,
        })
    }
}

impl Body for LingeringBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.inner.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for LingeringBody {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        // A body declared larger than the drain bound would be cut off anyway: close now.
        if !self.linger || body.is_end_stream() || body.size_hint().lower() > MAX_DRAIN_BYTES {
            return;
        }
        // Bodies are dropped on the runtime's workers; outside a runtime there is no
        // connection left to save.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body));
        }
    }
}

/// Reads and discards `body` until it ends, fails, or passes either bound.
async fn drain(mut body: Incoming) {
    let mut seen: u64 = 0;
    let _ = tokio::time::timeout(MAX_DRAIN_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > MAX_DRAIN_BYTES {
                return;
            }
        }
    })
    .await;
}

/// A socket that, when shut down, waits (up to [`CLOSE_LINGER`]) for the client to close its
/// side before it reports the shutdown done, discarding whatever the client still sends.
#[derive(Debug)]
pub struct LingeringClose<S> {
    inner: S,
    closing: Closing,
}

#[derive(Debug)]
enum Closing {
    Open,
    Draining(Pin<Box<Sleep>>),
    Closed,
}

impl<S> LingeringClose<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            closing: Closing::Open,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LingeringClose<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for LingeringClose<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.closing {
                Closing::Open => {
                    ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                    this.closing = Closing::Draining(Box::pin(tokio::time::sleep(CLOSE_LINGER)));
                }
                Closing::Draining(deadline) => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        this.closing = Closing::Closed;
                        continue;
                    }
                    let mut scratch = [0u8; 4096];
                    let mut buf = ReadBuf::new(&mut scratch);
                    match ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf)) {
                        // More from the client: discard it and read on.
                        Ok(()) if !buf.filled().is_empty() => {}
                        // Its end of file (or an error): nothing left to protect.
                        _ => this.closing = Closing::Closed,
                    }
                }
                Closing::Closed => return Poll::Ready(Ok(())),
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
