//! The client end of `GetBlocks` below tonic's codec: the request goes out on the same pooled
//! channel (its swarm key, TLS and windows), and the response's block data is kept as the slices
//! of the HTTP/2 DATA frames it arrived in ([`Rope`]) instead of being gathered into tonic's
//! decode buffer (see [`crate::peer::blocks_wire`]). What it accepts is any conforming gRPC
//! server's answer (tonic-built holders included); what it refuses, it refuses with a status, as
//! tonic's client would: a message over [`MAX_MESSAGE_SIZE`], a compressed or malformed message,
//! a stream cut inside a message or ended without a status.

use crate::grpc::{ClientChannel, MAX_MESSAGE_SIZE};
use crate::pb::peer as pb;
use crate::peer::blocks_wire::{frame, parse_response, BlockRun, MessageReader, GET_BLOCKS_PATH};
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::{Code, Status};

/// The messages of one `GetBlocks` call.
pub(super) struct Blocks {
    body: Body,
    reader: MessageReader,
    /// The status the stream ended with, once its trailers are in.
    ended: Option<Status>,
}

/// Starts a `GetBlocks` call on `channel`: the response's head, or the status it was refused
/// with (a failure to connect included, as tonic reports it).
pub(super) async fn get_blocks(
    channel: &mut ClientChannel,
    request: tonic::Request<pb::GetBlocksRequest>,
) -> Result<Blocks, Status> {
    let (metadata, extensions, message) = request.into_parts();
    let mut http_request =
        http::Request::new(Body::new(http_body_util::Full::new(frame(&message))));
    *http_request.method_mut() = http::Method::POST;
    *http_request.uri_mut() = http::Uri::from_static(GET_BLOCKS_PATH);
    *http_request.version_mut() = http::Version::HTTP_2;
    *http_request.headers_mut() = metadata.into_headers();
    *http_request.extensions_mut() = extensions;
    let headers = http_request.headers_mut();
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    let response = channel
        .call(http_request)
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    // Trailers-only: the call was refused (or answered with nothing).
    let ended = match Status::from_header_map(response.headers()) {
        Some(status) if status.code() != Code::Ok => return Err(status),
        Some(ok) => Some(ok),
        None if response.status() != http::StatusCode::OK => {
            return Err(status_of_http(response.status()))
        }
        None => None,
    };
    Ok(Blocks {
        body: Body::new(response.into_body()),
        reader: MessageReader::new(MAX_MESSAGE_SIZE),
        ended,
    })
}

impl Blocks {
    /// The next message; `None` at the end of a stream that ended OK; the status of one that
    /// failed, after the messages that came before it.
    pub(super) async fn message(&mut self) -> Result<Option<BlockRun>, Status> {
        loop {
            if let Some(message) = self.reader.next_message()? {
                return Ok(Some(parse_response(message)?));
            }
            if let Some(status) = &self.ended {
                self.reader.finish()?;
                return match status.code() {
                    Code::Ok => Ok(None),
                    _ => Err(status.clone()),
                };
            }
            match self.body.frame().await {
                None => {
                    self.reader.finish()?;
                    return Err(Status::internal("the stream ended without a status"));
                }
                Some(Err(status)) => return Err(status),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.reader.push(data),
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        self.ended =
                            Some(Status::from_header_map(&trailers).unwrap_or_else(|| {
                                Status::internal("the stream's trailers hold no status")
                            }));
                    }
                },
            }
        }
    }
}

/// The status a response that is not gRPC's "200 OK" stands for (the gRPC spec's mapping of
/// HTTP status codes).
fn status_of_http(code: http::StatusCode) -> Status {
    let grpc = match code.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(grpc, format!("HTTP status {code} instead of a gRPC answer"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::ClientSecurity;
    use crate::peer::blocks_wire::response_prefix;
    use bytes::Bytes;
    use tokio::net::TcpListener;

    /// What a crafted server answers.
    #[derive(Clone, Copy, Debug)]
    enum Answer {
        /// Two messages then an OK status, the data cut into odd DATA frames.
        TwoMessages,
        /// Trailers-only RESOURCE_EXHAUSTED.
        Refused,
        /// One message, then a status of UNAVAILABLE in the trailers.
        FailsAfterOne,
        /// A message marked compressed.
        Compressed,
        /// A header announcing a message over the limit.
        Huge,
        /// Half a message, then an OK status.
        Truncated,
        /// A message and the end of the body, no trailers.
        NoTrailers,
        /// HTTP 503, no gRPC status.
        Http503,
    }

    fn data(len: usize) -> Bytes {
        (0..len).map(|i| (i % 253) as u8).collect()
    }

    /// Serves one connection's requests with `answer`; hands back each request's head and body.
    async fn crafted_server(
        answer: Answer,
    ) -> (
        String,
        tokio::sync::mpsc::UnboundedReceiver<(http::request::Parts, Bytes)>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (seen, requests) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut connection = h2::server::handshake(tcp).await.unwrap();
            while let Some(Ok((request, mut respond))) = connection.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let (parts, mut body) = request.into_parts();
                    let mut got = Vec::new();
                    while let Some(Ok(chunk)) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.len());
                        got.extend_from_slice(&chunk);
                    }
                    let _ = seen.send((parts, Bytes::from(got)));
                    answer_with(answer, &mut respond);
                });
            }
        });
        (address, requests)
    }

    fn answer_with(answer: Answer, respond: &mut h2::server::SendResponse<Bytes>) {
        let grpc = |status: u16| {
            http::Response::builder()
                .status(status)
                .header("content-type", "application/grpc")
                .body(())
                .unwrap()
        };
        let trailers = |code: i32, message: &str| {
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", code.into());
            if !message.is_empty() {
                t.insert("grpc-message", message.parse().unwrap());
            }
            t
        };
        if let Answer::Refused = answer {
            let mut head = grpc(200);
            head.headers_mut().insert("grpc-status", 8.into());
            head.headers_mut()
                .insert("grpc-message", "busy".parse().unwrap());
            respond.send_response(head, true).unwrap();
            return;
        }
        if let Answer::Http503 = answer {
            respond.send_response(grpc(503), true).unwrap();
            return;
        }
        let mut send = respond.send_response(grpc(200), false).unwrap();
        let message = |first: u64, len: usize| -> Bytes {
            [response_prefix(first, len), data(len)].concat().into()
        };
        match answer {
            Answer::TwoMessages => {
                let wire: Bytes = [message(0, 5000), message(2, 100)].concat().into();
                for cut in [0..3, 3..4000, 4000..5010, 5010..wire.len()] {
                    send.send_data(wire.slice(cut), false).unwrap();
                }
                send.send_trailers(trailers(0, "")).unwrap();
            }
            Answer::FailsAfterOne => {
                send.send_data(message(4, 10), false).unwrap();
                send.send_trailers(trailers(14, "disk on fire")).unwrap();
            }
            Answer::Compressed => {
                let mut wire = message(0, 10).to_vec();
                wire[0] = 1;
                send.send_data(wire.into(), false).unwrap();
                send.send_trailers(trailers(0, "")).unwrap();
            }
            Answer::Huge => {
                send.send_data(Bytes::from_static(&[0, 0x40, 0, 0, 0]), false)
                    .unwrap();
                send.send_trailers(trailers(0, "")).unwrap();
            }
            Answer::Truncated => {
                send.send_data(message(0, 100).slice(0..50), false).unwrap();
                send.send_trailers(trailers(0, "")).unwrap();
            }
            Answer::NoTrailers => {
                send.send_data(message(0, 10), true).unwrap();
            }
            Answer::Refused | Answer::Http503 => unreachable!(),
        }
    }

    /// Calls `GetBlocks` on a crafted server: the runs received, then how the stream ended.
    async fn call(answer: Answer) -> (Vec<(u64, Bytes)>, Result<(), Status>) {
        let (address, mut requests) = crafted_server(answer).await;
        let mut channel = ClientSecurity::default().channel(&address).unwrap();
        let mut request = tonic::Request::new(pb::GetBlocksRequest {
            file: None,
            first_block: 7,
            block_count: 2,
        });
        request
            .metadata_mut()
            .insert("x-test", "kept".parse().unwrap());
        let mut runs = Vec::new();
        let ended = async {
            let mut blocks = get_blocks(&mut channel, request).await?;
            while let Some(run) = blocks.message().await? {
                runs.push((run.first_block, run.data.into_bytes()));
            }
            Ok(())
        }
        .await;
        // What the server saw is a gRPC call any server understands.
        let (parts, body) = requests.recv().await.unwrap();
        assert_eq!(parts.uri.path(), GET_BLOCKS_PATH);
        assert_eq!(parts.method, http::Method::POST);
        assert_eq!(parts.headers["content-type"], "application/grpc");
        assert_eq!(parts.headers["te"], "trailers");
        assert_eq!(parts.headers["x-test"], "kept");
        let sent = crate::peer::blocks_wire::parse_request(body, 1024).unwrap();
        assert_eq!((sent.first_block, sent.block_count), (7, 2));
        (runs, ended)
    }

    #[tokio::test]
    async fn messages_cut_across_frames_arrive_whole_then_the_end() {
        let (runs, ended) = call(Answer::TwoMessages).await;
        ended.unwrap();
        assert_eq!(runs, vec![(0, data(5000)), (2, data(100))]);
    }

    #[tokio::test]
    async fn refusals_and_failures_are_the_statuses_sent() {
        let (runs, ended) = call(Answer::Refused).await;
        assert!(runs.is_empty());
        let status = ended.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::ResourceExhausted, "busy")
        );

        let (runs, ended) = call(Answer::FailsAfterOne).await;
        assert_eq!(runs, vec![(4, data(10))]);
        let status = ended.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unavailable, "disk on fire")
        );

        let (_, ended) = call(Answer::Http503).await;
        assert_eq!(ended.unwrap_err().code(), Code::Unavailable);
    }

    #[tokio::test]
    async fn hostile_answers_are_clear_errors() {
        for (answer, code, says) in [
            (Answer::Compressed, Code::Internal, "compressed"),
            (Answer::Huge, Code::OutOfRange, "over the limit"),
            (Answer::Truncated, Code::Internal, "inside a message"),
            (Answer::NoTrailers, Code::Internal, "without a status"),
        ] {
            let (_, ended) = call(answer).await;
            let status = ended.unwrap_err();
            assert_eq!(status.code(), code, "{answer:?}: {status:?}");
            assert!(status.message().contains(says), "{answer:?}: {status:?}");
        }
    }
}
