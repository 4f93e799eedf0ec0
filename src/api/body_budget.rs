//! The global bound on memory held for request bodies still being received.
//!
//! Every request body on the listener is wrapped in a [`CountedBody`], which adds the bytes it
//! hands on to one shared counter and takes them back when the body ends, fails or is dropped.
//! A body that has ended is a request being served, bounded by its handler's deadline; what an
//! attacker can pin is bodies that never end, so that is what is counted.
//!
//! The request-context layer asks [`BodyBudget::admits`] before a request with a body is
//! served: from [`BodyBudget::limit`] bytes on, new ones are refused (RESOURCE_EXHAUSTED), and
//! requests without a valid credential from half of it, so that anonymous streams cannot
//! crowd out callers with credentials. Requests already admitted keep reading: each is bounded
//! by its own size limit (64 KiB for gRPC, [`crate::api::yandex::rest::MAX_BODY_BYTES`] for
//! REST), so the total can pass the limit by at most the requests in flight times that.

use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// The shared counter.
#[derive(Debug)]
pub struct BodyBudget {
    limit: u64,
    held: AtomicU64,
}

impl BodyBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: AtomicU64::new(0),
        })
    }

    /// The configured limit (`server.max_buffered_body_bytes`).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes held by unfinished bodies now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Whether a new request with a body may start: below the limit, or below half of it for
    /// a request without a valid credential.
    ///
    /// # Errors
    /// A message for the client that says to retry later.
    pub fn admits(&self, authenticated: bool) -> Result<(), String> {
        let bound = if authenticated {
            self.limit
        } else {
            self.limit / 2
        };
        let held = self.held();
        if held < bound {
            return Ok(());
        }
        Err(format!(
            "the gateway is holding its limit of request bodies still being received \
             ({held} bytes; server.max_buffered_body_bytes = {}); retry shortly",
            self.limit
        ))
    }

    fn take(&self, n: u64) {
        self.held.fetch_add(n, Ordering::Relaxed);
    }

    fn give_back(&self, n: u64) {
        self.held.fetch_sub(n, Ordering::Relaxed);
    }
}

/// A request body whose bytes count against a [`BodyBudget`] until it ends.
#[derive(Debug)]
pub struct CountedBody<B> {
    inner: B,
    budget: Arc<BodyBudget>,
    held: u64,
}

impl<B> CountedBody<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, budget: Arc<BodyBudget>) -> Self {
        Self {
            inner,
            budget,
            held: 0,
        }
    }

    fn release(&mut self) {
        self.budget.give_back(std::mem::take(&mut self.held));
    }
}

impl<B: Body + Unpin> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        use bytes::Buf as _;
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.remaining() as u64;
                    self.held += n;
                    self.budget.take(n);
                }
                if frame.is_trailers() || self.inner.is_end_stream() {
                    self.release();
                }
            }
            Poll::Ready(None | Some(Err(_))) => self.release(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for CountedBody<B> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt as _;

    type Chunks = http_body_util::StreamBody<
        tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
    >;

    fn chunks(n: usize, size: usize) -> Chunks {
        http_body_util::StreamBody::new(tokio_stream::iter(
            (0..n)
                .map(|_| Ok(Frame::data(Bytes::from(vec![0u8; size]))))
                .collect::<Vec<_>>(),
        ))
    }

    #[tokio::test]
    async fn bytes_count_until_the_body_ends_or_is_dropped() {
        let budget = BodyBudget::new(1000);
        let mut a = CountedBody::new(chunks(3, 100), Arc::clone(&budget));
        a.frame().await.unwrap().unwrap();
        a.frame().await.unwrap().unwrap();
        assert_eq!(budget.held(), 200);
        let mut b = CountedBody::new(chunks(10, 40), Arc::clone(&budget));
        for _ in 0..8 {
            b.frame().await.unwrap().unwrap();
        }
        assert_eq!(budget.held(), 520);
        // 520 bytes held: over half (anonymous refused), under the whole (admitted).
        assert!(budget.admits(false).unwrap_err().contains("retry"));
        budget.admits(true).unwrap();
        drop(b);
        assert_eq!(budget.held(), 200);
        budget.admits(false).unwrap();
        a.frame().await.unwrap().unwrap();
        assert!(a.frame().await.is_none());
        assert_eq!(budget.held(), 0);
        drop(a);
        assert_eq!(budget.held(), 0);
    }
}
