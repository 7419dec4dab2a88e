//! A raw HTTP/2 gRPC client (the `h2` crate) for flood tests: it binds the address it comes from
//! (127.0.0.2 is "another client" on Linux loopback), chooses its receive window (0: the server
//! may send it no DATA), and never reads what it is not asked to.
#![allow(dead_code)]

use bytes::Bytes;
use p2pshare::pb::peer as ppb;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::TcpSocket;
use tokio_util::sync::CancellationToken;

/// gRPC's RESOURCE_EXHAUSTED.
pub const RESOURCE_EXHAUSTED: i32 = 8;

/// A raw HTTP/2 connection from `from` to `server`, with stream receive window `window`.
pub struct Raw {
    pub send: h2::client::SendRequest<Bytes>,
    /// Cancelled when the connection has ended (closed by either side).
    pub ended: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Raw {
    pub async fn connect(from: IpAddr, server: SocketAddr, window: u32) -> std::io::Result<Raw> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(from, 0))?;
        let tcp = socket.connect(server).await?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(window)
            .handshake::<_, Bytes>(tcp)
            .await
            .map_err(std::io::Error::other)?;
        let ended = CancellationToken::new();
        let done = ended.clone();
        let task = tokio::spawn(async move {
            let _ = connection.await;
            done.cancel();
        });
        Ok(Raw { send, ended, task })
    }

    /// Whether the connection ends within `timeout`.
    pub async fn ends_within(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.ended.cancelled())
            .await
            .is_ok()
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One gRPC message in its length-prefixed frame.
pub fn grpc_frame(message: &impl prost::Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(0);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame.into()
}

/// What the server did with a call.
pub enum Answer {
    /// It started answering (headers without a status): the stream is held, never read.
    Held(h2::RecvStream, h2::SendStream<Bytes>),
    /// It answered at once with this gRPC status code and message.
    Status(i32, String),
}

/// Sends one gRPC call with `message` to `path` on `raw`.
pub async fn call(
    raw: &Raw,
    server: SocketAddr,
    path: &str,
    message: Bytes,
) -> Result<Answer, h2::Error> {
    let mut send = raw.send.clone().ready().await?;
    let request = tonic::codegen::http::Request::post(format!("http://{server}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = send.send_request(request, false)?;
    body.send_data(message, true)?;
    let response = response.await?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Ok(match header("grpc-status") {
        Some(code) => Answer::Status(
            code.parse().unwrap_or(-1),
            // Percent-encoded on the wire; spaces are all these tests look at.
            header("grpc-message")
                .unwrap_or_default()
                .replace("%20", " "),
        ),
        None => Answer::Held(response.into_body(), body),
    })
}

/// Asks for all `blocks` blocks of `name`.
pub async fn get_blocks(
    raw: &Raw,
    server: SocketAddr,
    name: &str,
    blocks: u64,
) -> Result<Answer, h2::Error> {
    let request = ppb::GetBlocksRequest {
        file: Some(ppb::FileSelector {
            name: name.into(),
            ..Default::default()
        }),
        first_block: 0,
        block_count: blocks,
    };
    call(
        raw,
        server,
        "/p2pshare.peer.v1.Peer/GetBlocks",
        grpc_frame(&request),
    )
    .await
}

/// A health check over `raw`: its gRPC status, or the transport error.
pub async fn health(raw: &Raw, server: SocketAddr) -> Result<i32, h2::Error> {
    let request = tonic_health::pb::HealthCheckRequest::default();
    match call(
        raw,
        server,
        "/grpc.health.v1.Health/Check",
        grpc_frame(&request),
    )
    .await?
    {
        Answer::Status(code, _) => Ok(code),
        // A unary answer comes with data; its status is in the trailers.
        Answer::Held(mut body, _) => {
            while body.data().await.transpose()?.is_some() {}
            let trailers = body.trailers().await?.unwrap_or_default();
            Ok(trailers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(-1))
        }
    }
}
