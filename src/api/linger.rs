//! Lingering on request bodies that were refused unread.
//!
//! Over HTTP/1.1 a client writes its whole request body before it reads the answer. When a
//! request is refused before its body is read (too large by `Content-Length`, unauthenticated,
//! rate limited, unrouted), hyper answers and then closes the connection with the rest of the
//! body still arriving; the kernel turns that close into a TCP reset, and the client reports
//! "broken pipe" or "connection reset" instead of our precise error. So a body dropped unread is
//! drained in the background, discarding every byte, as web servers do with a lingering close:
//! the answer arrives intact and the connection stays usable. Draining is bounded in bytes and
//! time, so a client cannot make us read forever; past either bound the connection is closed as
//! before.
//!
//! HTTP/2 needs none of this (hyper resets just the stream, with NO_ERROR, as RFC 9113 §8.1
//! allows), nor does a request that asked `Expect: 100-continue` (its client waits for our
//! answer before it sends the body, so there is nothing in flight to reset).

use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::{Bytes, Incoming};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Most bytes of an unread body drained before the connection is given up.
pub const MAX_DRAIN_BYTES: u64 = 64 << 20;
/// Longest a connection lingers to drain an unread body.
pub const MAX_DRAIN_TIME: Duration = Duration::from_secs(10);

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
