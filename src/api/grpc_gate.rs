//! The gRPC request gate: one layer in front of every gRPC service on the listener (ours,
//! endpoint discovery, health, reflection, and any added later), so that each gets the same
//! request checks from one place.
//!
//! tonic's own decoding answers a malformed request with INTERNAL, which clients retry, takes
//! the first message of a unary call and silently drops the rest, and has a 4 MiB limit on the
//! services we do not build (health, reflection). The gate reads each request body frame by
//! frame before tonic does and hands tonic only frames it has checked:
//!
//! - a declared message length over the limit → OUT_OF_RANGE, from the 5-byte prefix, before
//!   any of the message is buffered;
//! - a compressed flag → INVALID_ARGUMENT (the gateway accepts no compression);
//! - a message that is not a valid protobuf of the method's input type (bad varint, wrong wire
//!   type, non-UTF-8 string, a field cut short) → INVALID_ARGUMENT, naming the type and the
//!   fault. It is decoded against the method's descriptor with `prost-reflect`, which uses
//!   prost's own field decoders, so what passes here decodes in tonic too;
//! - for methods whose request is a single message (unary and server streaming): a second
//!   message, or none → INVALID_ARGUMENT;
//! - a body that ends inside a frame → INVALID_ARGUMENT.
//!
//! The errors reach tonic as body errors carrying a `tonic::Status`, which tonic answers as is.
//! A streaming-request service may swallow such an error and end its response with OK
//! (tonic-reflection does); for those, the gate puts its error into the final trailers.
//!
//! A gRPC method missing from the descriptor pool is answered UNIMPLEMENTED by the gate, so a
//! service added without its descriptors cannot be reached unchecked.

use super::context::Protocol;
use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use tonic::Status;
use tower::{Layer, Service, ServiceExt as _};

/// Length of a gRPC frame header: the compressed flag and the big-endian message length.
const FRAME_HEADER: usize = 5;

/// What the gate knows about one method.
#[derive(Debug)]
struct Method {
    input: MessageDescriptor,
    /// The request is a stream of messages (client or bidirectional streaming).
    streaming: bool,
}

/// The methods the gate admits, by HTTP path (`/package.Service/Method`).
#[derive(Debug)]
pub struct Methods {
    by_path: HashMap<String, Arc<Method>>,
    max_message: usize,
}

impl Methods {
    /// Every method of every service in the serialized `FileDescriptorSet`s, with
    /// `max_message` as the largest message accepted.
    ///
    /// # Errors
    /// A descriptor set that does not decode or does not link.
    pub fn from_descriptor_sets(sets: &[&[u8]], max_message: usize) -> Result<Self, String> {
        let mut pool = DescriptorPool::new();
        for set in sets {
            pool.decode_file_descriptor_set(*set)
                .map_err(|e| format!("a gRPC descriptor set is unusable: {e}"))?;
        }
        let by_path = pool
            .services()
            .flat_map(|service| {
                service
                    .methods()
                    .map(|m| {
                        (
                            format!("/{}/{}", service.full_name(), m.name()),
                            Arc::new(Method {
                                input: m.input(),
                                streaming: m.is_client_streaming(),
                            }),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(Self {
            by_path,
            max_message,
        })
    }

    /// Whether `path` names a known method.
    pub fn knows(&self, path: &str) -> bool {
        self.by_path.contains_key(path)
    }
}

/// Puts the gate in front of `router` (gRPC requests only; others pass untouched).
pub fn apply(router: axum::Router, methods: Methods) -> axum::Router {
    router.layer(GateLayer {
        methods: Arc::new(methods),
    })
}

/// The layer; see the module docs.
#[derive(Clone, Debug)]
pub struct GateLayer {
    methods: Arc<Methods>,
}

impl<S> Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Gate {
            inner,
            methods: Arc::clone(&self.methods),
        }
    }
}

/// The layer's service.
#[derive(Clone, Debug)]
pub struct Gate<S> {
    inner: S,
    methods: Arc<Methods>,
}

impl<S> Service<Request<Body>> for Gate<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        if Protocol::of(&request) != Protocol::Grpc {
            return Box::pin(inner.oneshot(request));
        }
        let Some(method) = self.methods.by_path.get(request.uri().path()).cloned() else {
            let path: String = request.uri().path().chars().take(200).collect();
            let status = Status::unimplemented(format!("no gRPC method {path} on this gateway"));
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let failed = Arc::new(Mutex::new(None));
        let streaming = method.streaming;
        let request = request.map(|body| {
            Body::new(CheckedBody {
                inner: body,
                buf: BytesMut::new(),
                method,
                max_message: self.methods.max_message,
                messages: 0,
                done: false,
                failed: Arc::clone(&failed),
            })
        });
        Box::pin(async move {
            let response = inner.oneshot(request).await?;
            Ok(if streaming {
                response.map(|body| {
                    Body::new(StatusOverride {
                        inner: body,
                        failed,
                    })
                })
            } else {
                response
            })
        })
    }
}

/// A request body that yields only whole, checked gRPC frames.
struct CheckedBody {
    inner: Body,
    buf: BytesMut,
    method: Arc<Method>,
    max_message: usize,
    messages: usize,
    /// The body ended or failed: nothing more is yielded.
    done: bool,
    /// The gate's refusal, for [`StatusOverride`].
    failed: Arc<Mutex<Option<Status>>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl CheckedBody {
    fn type_name(&self) -> &str {
        self.method.input.full_name()
    }

    /// The next whole message frame in the buffer, checked; `None` when more bytes are needed.
    fn next_message(&mut self) -> Result<Option<Bytes>, Status> {
        if !self.method.streaming && self.messages > 0 && !self.buf.is_empty() {
            return Err(Status::invalid_argument(format!(
                "a unary gRPC call carries exactly one {} message; this request has more: send \
                 one message per call",
                self.type_name()
            )));
        }
        if self.buf.len() < FRAME_HEADER {
            return Ok(None);
        }
        match self.buf[0] {
            0 => {}
            1 => {
                return Err(Status::invalid_argument(
                    "the request message is compressed; this gateway accepts uncompressed \
                     messages only (no grpc-encoding, compressed flag 0)",
                ))
            }
            flag => {
                return Err(Status::invalid_argument(format!(
                    "not a gRPC message frame: the compressed flag is {flag} (0 or 1 expected)"
                )))
            }
        }
        let len = u32::from_be_bytes(self.buf[1..FRAME_HEADER].try_into().expect("4 bytes"));
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.max_message {
            return Err(Status::out_of_range(format!(
                "the request message is too large: {len} bytes, over this gateway's limit of {} \
                 bytes",
                self.max_message
            )));
        }
        if self.buf.len() < FRAME_HEADER + len {
            return Ok(None);
        }
        let frame = self.buf.split_to(FRAME_HEADER + len).freeze();
        if let Err(e) = DynamicMessage::decode(self.method.input.clone(), &frame[FRAME_HEADER..]) {
            return Err(Status::invalid_argument(format!(
                "the request is not a valid {} protobuf message: {e}",
                self.type_name()
            )));
        }
        self.messages += 1;
        Ok(Some(frame))
    }

    /// What the end of the body means: fine, or a message missing or cut short.
    fn at_end(&self) -> Result<(), Status> {
        let arrived = self.buf.len();
        if arrived == 0 {
            return if !self.method.streaming && self.messages == 0 {
                Err(Status::invalid_argument(format!(
                    "the request has no message: a unary gRPC call carries exactly one {}",
                    self.type_name()
                )))
            } else {
                Ok(())
            };
        }
        if arrived < FRAME_HEADER {
            return Err(Status::invalid_argument(format!(
                "the request ends inside a gRPC frame header: {arrived} of its {FRAME_HEADER} \
                 bytes arrived"
            )));
        }
        let declared = u32::from_be_bytes(self.buf[1..FRAME_HEADER].try_into().expect("4 bytes"));
        Err(Status::invalid_argument(format!(
            "the request ends inside a message: {} of its {declared} bytes arrived",
            arrived - FRAME_HEADER
        )))
    }

    fn fail(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        self.buf = BytesMut::new();
        tracing::debug!(code = ?status.code(), message = status.message(), "gRPC request refused by the gate");
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(status.clone());
        Poll::Ready(Some(Err(Box::new(status))))
    }
}

impl http_body::Body for CheckedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.next_message() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(Frame::data(frame)))),
                Ok(None) => {}
                Err(status) => return this.fail(status),
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.buf.extend_from_slice(&data),
                    Err(frame) => {
                        // Trailers: the body is over.
                        if let Err(status) = this.at_end() {
                            return this.fail(status);
                        }
                        this.done = true;
                        return Poll::Ready(Some(Ok(frame)));
                    }
                },
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => {
                    if let Err(status) = this.at_end() {
                        return this.fail(status);
                    }
                    this.done = true;
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A streaming response whose final status becomes the gate's refusal, if the request was
/// refused and the service ended with OK anyway.
struct StatusOverride {
    inner: Body,
    failed: Arc<Mutex<Option<Status>>>,
}

impl http_body::Body for StatusOverride {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let Some(Ok(frame)) = frame else {
            return Poll::Ready(frame);
        };
        let Some(trailers) = frame.trailers_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let ok = trailers
            .get("grpc-status")
            .is_none_or(|code| code.as_bytes() == b"0");
        let refusal = self.failed.lock().unwrap_or_else(|p| p.into_inner()).take();
        match refusal {
            Some(status) if ok => {
                let mut trailers = trailers.clone();
                // A status always renders (its message is percent-encoded).
                let _ = status.add_header(&mut trailers);
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            _ => Poll::Ready(Some(Ok(frame))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn methods() -> Methods {
        Methods::from_descriptor_sets(
            &[
                crate::api::yandex::grpc::pb::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ],
            64 * 1024,
        )
        .unwrap()
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0];
        f.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// The frames the gate yields for `chunks` sent to `path`, or its refusal.
    async fn run(path: &str, chunks: Vec<Vec<u8>>) -> Result<Vec<Bytes>, Status> {
        let methods = methods();
        let method = Arc::clone(&methods.by_path[path]);
        let stream = tokio_stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from(c)))),
        );
        let mut body = CheckedBody {
            inner: Body::new(http_body_util::StreamBody::new(stream)),
            buf: BytesMut::new(),
            method,
            max_message: methods.max_message,
            messages: 0,
            done: false,
            failed: Arc::default(),
        };
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => out.push(f.into_data().unwrap()),
                Err(e) => return Err(e.downcast::<Status>().map(|s| *s).unwrap()),
            }
        }
        Ok(out)
    }

    const CHECK: &str = "/grpc.health.v1.Health/Check";
    const REFLECT: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";

    #[tokio::test]
    async fn whole_frames_pass_whatever_the_chunking() {
        let f = frame(&[0x0a, 0x03, b'a', b'b', b'c']);
        let one_byte_chunks: Vec<Vec<u8>> = f.iter().map(|b| vec![*b]).collect();
        assert_eq!(
            run(CHECK, one_byte_chunks).await.unwrap(),
            vec![Bytes::from(f.clone())]
        );
        let both: Vec<u8> = [f.clone(), f.clone()].concat();
        assert_eq!(run(REFLECT, vec![both]).await.unwrap().len(), 2);
        assert_eq!(run(REFLECT, vec![]).await.unwrap().len(), 0);
    }

    #[tokio::test]
    async fn every_malformation_is_invalid_argument_and_size_is_out_of_range() {
        let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            ("bad varint", vec![frame(&[0xff; 11])]),
            ("wrong wire type", vec![frame(&[0x08, 0x01])]),
            ("not UTF-8", vec![frame(&[0x0a, 0x02, 0xc3, 0x28])]),
            ("cut short", vec![frame(&[0x0a, 0x05, b'k'])]),
            ("missing", vec![]),
            ("ends mid-frame", vec![vec![0, 0, 0, 0, 9, 1]]),
            ("ends mid-header", vec![vec![0, 0]]),
            ("two messages", vec![frame(&[]), frame(&[])]),
            ("trailing byte", vec![frame(&[]), vec![0]]),
            ("compressed", vec![vec![1, 0, 0, 0, 0]]),
            ("bad flag", vec![vec![7, 0, 0, 0, 0]]),
        ];
        for (name, chunks) in cases {
            let err = run(CHECK, chunks).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}: {err:?}");
            assert!(!err.message().is_empty());
        }
        let mut big = vec![0];
        big.extend_from_slice(&(64u32 * 1024 + 1).to_be_bytes());
        let err = run(CHECK, vec![big]).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
        // A bad message on a streaming request is refused too.
        let err = run(
            REFLECT,
            vec![frame(&[0x3a, 0x01, b'*']), frame(&[0xff; 11])],
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn every_service_on_the_listener_is_described() {
        let m = methods();
        for path in [
            "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureCryptoService/Sign",
            "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureKeyService/Create",
            "/yandex.cloud.operation.OperationService/Get",
            "/yandex.cloud.endpoint.ApiEndpointService/List",
            CHECK,
            "/grpc.health.v1.Health/Watch",
            REFLECT,
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(m.knows(path), "{path}");
        }
        assert!(m.by_path[REFLECT].streaming);
        assert!(!m.by_path["/grpc.health.v1.Health/Watch"].streaming);
    }
}
