//! Small answers in small HTTP/2 frames: [`SmallFrames`].
//!
//! h2 (under tonic and hyper) copies a DATA frame of fewer than 256 bytes into its write buffer,
//! beside the HEADERS before it and the trailers after it, and one write system call then
//! carries all the frames buffered, of every call on the connection that answered meanwhile. A
//! DATA frame of 256 bytes or more is not copied: h2 keeps it aside (chained) and buffers
//! nothing more until the socket has taken it, so each such answer costs a write of its own.
//! A `WhoHas` answer of ten holders is about 400 bytes: measured with the benchmark's tracker
//! scenario (4 connections x 8 calls in flight), the tracker spent about twice as much time in
//! `tcp_sendmsg` per `WhoHas` as per empty call. Cut into frames of under 256 bytes, an answer
//! of up to [`MAX_CUT`] bytes is buffered whole and written with the others. Larger answers (a
//! page of a listing) go as they are: for them one write of their own is the cheaper way.
//!
//! Only the HTTP/2 framing changes: a gRPC message may span any number of DATA frames, and
//! every client reassembles them.

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;
use tonic::Status;

/// h2's `CHAIN_THRESHOLD` (h2 0.4, sockets with vectored writes): DATA frames of at least this
/// many bytes are written by themselves.
const H2_CHAIN_THRESHOLD: usize = 256;

/// The most bytes a cut piece holds.
const PIECE: usize = H2_CHAIN_THRESHOLD - 1;

/// Largest DATA frame that is cut (into at most 5 pieces): past it, the frame headers and
/// the work per frame of the pieces would cost more than the write they save.
const MAX_CUT: usize = 1024;

/// Wraps a service: the DATA frames of its answers of [`H2_CHAIN_THRESHOLD`] to [`MAX_CUT`]
/// bytes are cut into pieces h2 copies into its write buffer.
#[derive(Debug, Clone)]
pub(crate) struct SmallFrames<S> {
    inner: S,
}

impl<S> SmallFrames<S> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: S) -> Self {
        SmallFrames { inner }
    }
}

impl<S: NamedService> NamedService for SmallFrames<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for SmallFrames<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let answer = self.inner.call(request);
        Box::pin(async move { Ok(answer.await?.map(|body| Body::new(Cut::new(body)))) })
    }
}

/// A response body whose DATA frames of [`H2_CHAIN_THRESHOLD`] to [`MAX_CUT`] bytes come out
/// in pieces of at most [`PIECE`] bytes; other frames (larger data, trailers) pass as they are.
struct Cut {
    inner: Body,
    /// What is left of the frame being cut.
    rest: Bytes,
}

impl Cut {
    fn new(inner: Body) -> Self {
        Cut {
            inner,
            rest: Bytes::new(),
        }
    }

    fn piece(&mut self) -> Frame<Bytes> {
        Frame::data(self.rest.split_to(self.rest.len().min(PIECE)))
    }
}

impl http_body::Body for Cut {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if !this.rest.is_empty() {
            return Poll::Ready(Some(Ok(this.piece())));
        }
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => return Poll::Ready(other),
        };
        Poll::Ready(Some(Ok(match frame.into_data() {
            Ok(data) if (H2_CHAIN_THRESHOLD..=MAX_CUT).contains(&data.len()) => {
                this.rest = data;
                this.piece()
            }
            Ok(data) => Frame::data(data),
            Err(other) => other,
        })))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use std::collections::VecDeque;

    /// A body that yields the frames it was given.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = Status;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(Ok))
        }
        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    /// A body of data frames of these sizes (each filled with its index), then trailers.
    fn body(sizes: &[usize]) -> Body {
        let frames = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Frame::data(Bytes::from(vec![i as u8; n])))
            .chain([Frame::trailers(http::HeaderMap::new())])
            .collect();
        Body::new(Frames(frames))
    }

    async fn frames_of(mut body: Cut) -> (Vec<Vec<u8>>, bool) {
        let mut data = Vec::new();
        let mut trailers = false;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            match frame.unwrap().into_data() {
                Ok(bytes) => {
                    data.push(bytes.to_vec());
                    assert!(!body.is_end_stream(), "the trailers are still to come");
                }
                Err(frame) => trailers |= frame.is_trailers(),
            }
        }
        assert!(body.is_end_stream());
        (data, trailers)
    }

    #[tokio::test]
    async fn small_answers_are_cut_under_the_threshold_and_others_pass_whole() {
        let (frames, trailers) = frames_of(Cut::new(body(&[100, 600, 255, 256, 2000]))).await;
        let sizes: Vec<usize> = frames.iter().map(Vec::len).collect();
        assert_eq!(sizes, [100, 255, 255, 90, 255, 255, 1, 2000]);
        assert!(trailers, "trailers pass through");
        // Same bytes, same order.
        let joined: Vec<u8> = frames.concat();
        let expected: Vec<u8> = [(0u8, 100), (1, 600), (2, 255), (3, 256), (4, 2000)]
            .iter()
            .flat_map(|&(b, n)| std::iter::repeat_n(b, n))
            .collect();
        assert_eq!(joined, expected);
        assert!(frames.iter().take(7).all(|f| f.len() < H2_CHAIN_THRESHOLD));
    }
}
