//! `GetBlocks` served below tonic's codec: the block data read from disk goes to HTTP/2 as it
//! is, after a small prefix per message (see [`crate::peer::blocks_wire`]), instead of being
//! copied into tonic's encode buffer. Every other method goes to the generated server.
//!
//! The call itself is the same [`Peer::get_blocks`] (every check, limit and refusal applies),
//! and what the client sees is what tonic would send: the same headers, messages, and the status
//! in the trailers, or alone (trailers-only) when the call is refused. What the route adds is
//! the reading of the request, bounded by [`MAX_REQUEST_BYTES`] (RESOURCE_EXHAUSTED past it,
//! decided on the length prefix, as [`crate::grpc::ClearLimits`] answers) and by the server's
//! request timeout, like any other call.

use super::{PeerService, MAX_REQUEST_BYTES};
use crate::pb::peer as pb;
use crate::pb::peer::peer_server::Peer;
use crate::peer::blocks_wire::{parse_request, response_prefix, GET_BLOCKS_PATH, HEADER};
use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio_stream::Stream;
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;
use tonic::Status;

/// The response messages of one `GetBlocks` call, as the service produces them.
type Messages = Pin<Box<dyn Stream<Item = Result<pb::GetBlocksResponse, Status>> + Send>>;

/// The Peer service's generated server `inner`, with `GetBlocks` answered by `service` directly.
#[derive(Clone)]
pub struct BlocksRoute<S> {
    inner: S,
    service: Arc<PeerService>,
}

impl<S> BlocksRoute<S> {
    pub(super) fn new(inner: S, service: Arc<PeerService>) -> Self {
        BlocksRoute { inner, service }
    }
}

impl<S: NamedService> NamedService for BlocksRoute<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for BlocksRoute<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // A compressed request (never negotiated) is the generated server's to refuse, in its
        // words.
        let compressed = request
            .headers()
            .get("grpc-encoding")
            .is_some_and(|e| e != "identity");
        if request.uri().path() != GET_BLOCKS_PATH || compressed {
            return Box::pin(self.inner.call(request));
        }
        let service = self.service.clone();
        Box::pin(async move { Ok(get_blocks(&service, request).await) })
    }
}

/// Answers one `GetBlocks` call.
async fn get_blocks(service: &PeerService, request: http::Request<Body>) -> http::Response<Body> {
    let (parts, body) = request.into_parts();
    let message = match read_request(body)
        .await
        .and_then(|body| parse_request(body, MAX_REQUEST_BYTES))
    {
        Ok(message) => message,
        Err(status) => return status.into_http(),
    };
    let request = tonic::Request::from_http(http::Request::from_parts(parts, message));
    match service.get_blocks(request).await {
        Err(status) => status.into_http(),
        Ok(response) => {
            let (metadata, messages, extensions) = response.into_parts();
            let mut response = http::Response::new(Body::new(BlocksBody {
                messages,
                data: None,
                done: false,
            }));
            *response.headers_mut() = metadata.into_headers();
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            *response.extensions_mut() = extensions;
            response
        }
    }
}

/// The request body: its one message, read no further than the length its header declares,
/// which is checked first (a request over [`MAX_REQUEST_BYTES`] is refused before its body is
/// read, as the generated server does).
async fn read_request(mut body: Body) -> Result<Bytes, Status> {
    let mut got = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            got.extend_from_slice(&data);
        }
        if got.len() >= HEADER {
            let declared = u32::from_be_bytes([got[1], got[2], got[3], got[4]]) as usize;
            if declared > MAX_REQUEST_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "request too large: {declared} bytes, the limit is {MAX_REQUEST_BYTES}"
                )));
            }
            // More than one message is the parser's to refuse; nothing past that is read.
            if got.len() > HEADER + declared {
                break;
            }
        }
    }
    Ok(got.freeze())
}

/// The response body: each message as its prefix then its data (the `Bytes` read from disk,
/// not copied), then the status as trailers.
struct BlocksBody {
    messages: Messages,
    /// The data of the message whose prefix went out last.
    data: Option<Bytes>,
    done: bool,
}

impl http_body::Body for BlocksBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let status = match ready!(self.messages.as_mut().poll_next(cx)) {
            Some(Ok(message)) => {
                let prefix = response_prefix(message.first_block, message.data.len());
                if !message.data.is_empty() {
                    self.data = Some(message.data);
                }
                return Poll::Ready(Some(Ok(Frame::data(prefix))));
            }
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        self.done = true;
        let mut trailers = http::HeaderMap::new();
        if let Err(e) = status.add_header(&mut trailers) {
            // A message that cannot be a header value: the code alone still goes out.
            tracing::debug!("stream status not sent whole: {e}");
            trailers.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.data.is_none()
    }
}
