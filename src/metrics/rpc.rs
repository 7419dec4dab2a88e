//! Calls by method and gRPC status code: a table of atomics built once from the descriptor sets
//! of what the server serves, the tower layer that counts into it, and the response body that
//! finds the status in the trailers.

use super::Metrics;
use crate::grpc::ServiceKind;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prost::Message as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codegen::{http, Service};

/// gRPC status codes, 0 to 16, by their canonical names (the label values).
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const CANCELLED: usize = 1;
const UNKNOWN: usize = 2;

/// The code in a `grpc-status` value; UNKNOWN for anything that is not one.
fn code_of(value: &[u8]) -> usize {
    match value {
        [d @ b'0'..=b'9'] => usize::from(d - b'0'),
        [b'1', d @ b'0'..=b'6'] => 10 + usize::from(d - b'0'),
        _ => UNKNOWN,
    }
}

/// One method a server serves.
#[derive(Debug)]
struct Method {
    /// The HTTP/2 path of its calls, `/package.Service/Method`.
    path: String,
    service: String,
    name: String,
}

/// Calls handled (by method and code) and in flight (by method). The last method is `unknown`:
/// every path the server does not serve counts there, so the label set stays bounded whatever
/// clients send.
#[derive(Debug)]
pub(crate) struct RpcTable {
    methods: Vec<Method>,
    handled: Box<[[AtomicU64; CODE_NAMES.len()]]>,
    active: Box<[AtomicI64]>,
}

impl RpcTable {
    /// The methods a server of `kind` serves: its own service's, health's and reflection's, read
    /// from the compiled-in descriptor sets (so a new RPC is counted without a change here).
    pub(super) fn new(kind: ServiceKind) -> Self {
        let sets: [&[u8]; 4] = [
            crate::grpc::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut methods = Vec::new();
        for set in sets {
            // The sets are compiled in; one that does not decode only loses its rows.
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in &set.file {
                for service in &file.service {
                    let full = format!("{}.{}", file.package(), service.name());
                    // The shared descriptor set has both p2pshare services; a server runs one.
                    if full.starts_with("p2pshare.") && full != kind.name() {
                        continue;
                    }
                    for method in &service.method {
                        methods.push(Method {
                            path: format!("/{full}/{}", method.name()),
                            service: full.clone(),
                            name: method.name().to_string(),
                        });
                    }
                }
            }
        }
        methods.push(Method {
            path: String::new(),
            service: "unknown".into(),
            name: "unknown".into(),
        });
        RpcTable {
            handled: methods.iter().map(|_| Default::default()).collect(),
            active: methods.iter().map(|_| AtomicI64::new(0)).collect(),
            methods,
        }
    }

    /// The row of the method at `path` (`unknown` for a path not served).
    fn index(&self, path: &str) -> usize {
        let last = self.methods.len() - 1;
        self.methods[..last]
            .iter()
            .position(|m| m.path == path)
            .unwrap_or(last)
    }
}

impl Collector for RpcTable {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut handled = encoder.encode_descriptor(
                "rpcs_handled",
                "RPCs answered, by method and gRPC status code (streams counted at their end; \
                 CANCELLED if the client went away first).",
                None,
                MetricType::Counter,
            )?;
            for (method, counts) in self.methods.iter().zip(self.handled.iter()) {
                for (code, count) in CODE_NAMES.iter().zip(counts) {
                    let count = count.load(Ordering::Relaxed);
                    if count == 0 {
                        continue;
                    }
                    let labels = [
                        ("service", method.service.as_str()),
                        ("method", method.name.as_str()),
                        ("code", code),
                    ];
                    handled
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
                }
            }
        }
        let mut active = encoder.encode_descriptor(
            "rpcs_active",
            "RPCs (HTTP/2 streams) in flight, by method.",
            None,
            MetricType::Gauge,
        )?;
        for (method, count) in self.methods.iter().zip(self.active.iter()) {
            let labels = [
                ("service", method.service.as_str()),
                ("method", method.name.as_str()),
            ];
            active
                .encode_family(&labels)?
                .encode_gauge(&count.load(Ordering::Relaxed))?;
        }
        Ok(())
    }
}

/// One call in flight: counted active from its start; counted handled once, with its code,
/// when the code is seen (or CANCELLED if it never is).
struct Call {
    table: Arc<RpcTable>,
    method: usize,
    done: bool,
}

impl Call {
    fn start(table: Arc<RpcTable>, path: &str) -> Self {
        let method = table.index(path);
        table.active[method].fetch_add(1, Ordering::Relaxed);
        Call {
            table,
            method,
            done: false,
        }
    }

    fn finish(&mut self, code: usize) {
        if !self.done {
            self.done = true;
            self.table.handled[self.method][code].fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // No status went out: the client reset the stream, the connection closed, or the
        // server's request timeout gave up on the call (answering CANCELLED itself).
        self.finish(CANCELLED);
        self.table.active[self.method].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Server middleware counting every call by method and status code (nothing when the server
/// has no [`Metrics`]).
#[derive(Clone)]
pub(crate) struct RpcLayer {
    table: Option<Arc<RpcTable>>,
}

impl RpcLayer {
    pub(crate) fn new(metrics: Option<&Metrics>) -> Self {
        RpcLayer {
            table: metrics.map(|m| m.server().rpcs.clone()),
        }
    }
}

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = RpcCounter<S>;

    fn layer(&self, inner: S) -> RpcCounter<S> {
        RpcCounter {
            inner,
            table: self.table.clone(),
        }
    }
}

/// The [`RpcLayer`] around one service.
#[derive(Clone)]
pub(crate) struct RpcCounter<S> {
    inner: S,
    table: Option<Arc<RpcTable>>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RpcCounter<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let mut call = self
            .table
            .as_ref()
            .map(|table| Call::start(table.clone(), request.uri().path()));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // Trailers-only: an error answered before any message carries its status here.
            if let (Some(call), Some(status)) = (&mut call, response.headers().get("grpc-status")) {
                call.finish(code_of(status.as_bytes()));
            }
            Ok(response.map(|body| CountedBody { body, call }))
        })
    }
}

/// A response body that finds its call's status in the trailers at its end.
pub(crate) struct CountedBody<B> {
    body: B,
    call: Option<Call>,
}

impl<B> http_body::Body for CountedBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let (Some(call), Poll::Ready(end)) = (&mut this.call, &polled) {
            match end {
                Some(Ok(frame)) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        let status = trailers.get("grpc-status");
                        call.finish(status.map_or(UNKNOWN, |s| code_of(s.as_bytes())));
                    }
                }
                // Ended without a status (or failed): not a gRPC answer.
                Some(Err(_)) | None => call.finish(UNKNOWN),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_values_map_to_codes() {
        assert_eq!(code_of(b"0"), 0);
        assert_eq!(code_of(b"8"), 8);
        assert_eq!(code_of(b"16"), 16);
        for bad in [&b""[..], b"17", b"-1", b"00", b"1x", b"123"] {
            assert_eq!(code_of(bad), UNKNOWN, "{bad:?}");
        }
        assert_eq!(CODE_NAMES[8], "RESOURCE_EXHAUSTED");
        assert_eq!(CODE_NAMES[16], "UNAUTHENTICATED");
    }

    #[test]
    fn the_table_has_the_servers_own_methods_and_unknown() {
        let table = RpcTable::new(ServiceKind::Tracker);
        let register = table.index("/p2pshare.tracker.v1.Tracker/Register");
        assert_eq!(table.methods[register].name, "Register");
        let health = table.index("/grpc.health.v1.Health/Check");
        assert_eq!(table.methods[health].service, "grpc.health.v1.Health");
        // The other p2pshare service, and anything else, is unknown.
        let last = table.methods.len() - 1;
        assert_eq!(table.index("/p2pshare.peer.v1.Peer/GetBlocks"), last);
        assert_eq!(table.index("/x/y"), last);
        assert_eq!(table.index(""), last);
        let peer = RpcTable::new(ServiceKind::Peer);
        let blocks = peer.index("/p2pshare.peer.v1.Peer/GetBlocks");
        assert_eq!(peer.methods[blocks].name, "GetBlocks");
    }

    #[test]
    fn a_call_without_a_status_counts_as_cancelled_once() {
        let table = Arc::new(RpcTable::new(ServiceKind::Peer));
        let path = "/p2pshare.peer.v1.Peer/GetManifest";
        let row = table.index(path);
        let mut answered = Call::start(table.clone(), path);
        let dropped = Call::start(table.clone(), path);
        assert_eq!(table.active[row].load(Ordering::Relaxed), 2);
        answered.finish(5);
        answered.finish(0);
        drop(answered);
        drop(dropped);
        assert_eq!(table.active[row].load(Ordering::Relaxed), 0);
        let counts: Vec<u64> = table.handled[row]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        assert_eq!((counts[5], counts[CANCELLED], counts[0]), (1, 1, 0));
    }
}
