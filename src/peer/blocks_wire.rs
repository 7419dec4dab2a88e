//! `GetBlocks` on the wire, below tonic's codec, for the bulk data path on both ends.
//!
//! Tonic's codec copies every message once more than needed: the server encodes each
//! `GetBlocksResponse` into its own buffer (a copy of the block data), and the client gathers
//! each DATA frame into a decode buffer (another copy) before prost slices it. Measured on a
//! 1 GiB download those copies were a quarter of the downloader's CPU and a tenth of each
//! holder's. Here the server sends a small prefix (the gRPC message header and the protobuf bytes
//! up to the data) followed by the block `Bytes` as they were read, and the client keeps the data
//! as the slices of the DATA frames it came in ([`Rope`]), so the only copy left in user space is
//! the one into the disk writer's aligned buffer. The bytes on the wire are exactly what tonic and
//! any other gRPC implementation send and accept (the tests check both ways), so clients
//! generated from `proto/peer.proto` and holders built on them are unaffected.
//!
//! Everything read here comes from the network and is parsed as hostile: a message's length is
//! checked against [`crate::grpc::MAX_MESSAGE_SIZE`] before anything is buffered for it,
//! compressed messages (never negotiated) and malformed protobuf are errors, never panics.

use crate::grpc::Rope;
use crate::pb::peer as pb;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{decode_varint, encode_varint, encoded_len_varint};
use tonic::Status;

/// The HTTP/2 path of `GetBlocks`.
pub(crate) const GET_BLOCKS_PATH: &str = "/p2pshare.peer.v1.Peer/GetBlocks";
/// The gRPC message header: a compression flag and a 4-byte big-endian length.
pub(crate) const HEADER: usize = 5;
/// `GetBlocksResponse.first_block`: field 1, varint.
const FIRST_BLOCK_KEY: u8 = 1 << 3;
/// `GetBlocksResponse.data`: field 2, length-delimited.
const DATA_KEY: u8 = (2 << 3) | 2;

/// Why a `GetBlocks` stream could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum WireError {
    /// A message marked compressed, though no compression was negotiated.
    #[error("a compressed message, though none was negotiated")]
    Compressed,
    /// A message longer than the limit.
    #[error("a message of {len} bytes, over the limit of {max}")]
    TooLarge {
        /// Its declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Bytes that are not a valid protobuf message of the expected type.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// The stream ended inside a message.
    #[error("the stream ended inside a message ({0} bytes left over)")]
    Truncated(usize),
}

impl From<WireError> for Status {
    fn from(e: WireError) -> Self {
        match e {
            // As tonic answers a message over its decoding limit.
            WireError::TooLarge { .. } => Status::out_of_range(e.to_string()),
            _ => Status::internal(e.to_string()),
        }
    }
}

/// The gRPC message header for a message of `len` bytes, uncompressed.
fn put_header(out: &mut BytesMut, len: usize) {
    out.put_u8(0);
    // Callers bound `len` far below 4 GiB (a message is at most a few MiB).
    out.put_u32(len as u32);
}

/// What goes on the wire before a `GetBlocksResponse`'s data: the message header and the
/// protobuf bytes of `first_block` and of the data field's key and length, exactly as prost
/// encodes them (a zero `first_block` and empty data are omitted, as proto3 says).
pub(crate) fn response_prefix(first_block: u64, data_len: usize) -> Bytes {
    let first = if first_block == 0 {
        0
    } else {
        1 + encoded_len_varint(first_block)
    };
    let data = if data_len == 0 {
        0
    } else {
        1 + encoded_len_varint(data_len as u64) + data_len
    };
    let message_len = first + data;
    let mut out = BytesMut::with_capacity(HEADER + first + 11);
    put_header(&mut out, message_len);
    if first_block != 0 {
        out.put_u8(FIRST_BLOCK_KEY);
        encode_varint(first_block, &mut out);
    }
    if data_len != 0 {
        out.put_u8(DATA_KEY);
        encode_varint(data_len as u64, &mut out);
    }
    out.freeze()
}

/// One framed gRPC message: header and protobuf bytes (a request, or a test's response).
pub(crate) fn frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(HEADER + len);
    put_header(&mut out, len);
    message
        .encode(&mut out)
        .expect("the buffer was sized for the message");
    out.freeze()
}

/// Cuts a stream of DATA frames into gRPC messages, without copying their bytes.
#[derive(Debug)]
pub(crate) struct MessageReader {
    pending: Rope,
    max: usize,
}

impl MessageReader {
    /// A reader refusing messages over `max` bytes.
    pub(crate) fn new(max: usize) -> Self {
        MessageReader {
            pending: Rope::default(),
            max,
        }
    }

    /// Adds the payload of a DATA frame.
    pub(crate) fn push(&mut self, data: Bytes) {
        self.pending.push(data);
    }

    /// The next whole message's protobuf bytes, if one has arrived. Fails on a header that is
    /// compressed or over the limit, as soon as the header is in (before its body is waited for).
    pub(crate) fn next_message(&mut self) -> Result<Option<Rope>, WireError> {
        let mut header = [0u8; HEADER];
        if !self.pending.peek(&mut header) {
            return Ok(None);
        }
        if header[0] != 0 {
            return Err(WireError::Compressed);
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > self.max {
            return Err(WireError::TooLarge { len, max: self.max });
        }
        if self.pending.len() - HEADER < len {
            return Ok(None);
        }
        self.pending.advance(HEADER);
        Ok(Some(self.pending.split_to(len)))
    }

    /// At the end of the stream: an error if part of a message is left.
    pub(crate) fn finish(&self) -> Result<(), WireError> {
        match self.pending.len() {
            0 => Ok(()),
            left => Err(WireError::Truncated(left)),
        }
    }
}

/// A decoded `GetBlocksResponse`: its first block and its data, as received.
#[derive(Debug)]
pub(crate) struct BlockRun {
    /// `first_block`.
    pub(crate) first_block: u64,
    /// `data`, as the slices it arrived in.
    pub(crate) data: Rope,
}

/// Decodes a `GetBlocksResponse` from its protobuf bytes, keeping `data` as received. Accepts
/// whatever a conforming encoder may send: fields in any order, unknown fields (skipped), a
/// repeated field (the last one wins, as for any proto3 scalar).
pub(crate) fn parse_response(mut message: Rope) -> Result<BlockRun, WireError> {
    let mut run = BlockRun {
        first_block: 0,
        data: Rope::default(),
    };
    let varint = |m: &mut Rope| decode_varint(m).map_err(|_| WireError::Malformed("bad varint"));
    while message.has_remaining() {
        let key = varint(&mut message)?;
        let (field, wire_type) = (key >> 3, key & 7);
        match (field, wire_type) {
            (0, _) => return Err(WireError::Malformed("field number 0")),
            (1, 0) => run.first_block = varint(&mut message)?,
            (2, 2) => {
                let len = length(&mut message)?;
                run.data = message.split_to(len);
            }
            (1 | 2, _) => return Err(WireError::Malformed("a field of the wrong wire type")),
            // Unknown fields: skipped.
            (_, 0) => {
                varint(&mut message)?;
            }
            (_, 1) => skip(&mut message, 8)?,
            (_, 2) => {
                let len = length(&mut message)?;
                skip(&mut message, len)?;
            }
            (_, 5) => skip(&mut message, 4)?,
            _ => return Err(WireError::Malformed("an unsupported wire type")),
        }
    }
    Ok(run)
}

/// A length prefix that fits in what is left of `message`.
fn length(message: &mut Rope) -> Result<usize, WireError> {
    let len = decode_varint(message).map_err(|_| WireError::Malformed("bad varint"))?;
    if len > message.remaining() as u64 {
        return Err(WireError::Malformed("a length past the end of the message"));
    }
    Ok(len as usize)
}

fn skip(message: &mut Rope, len: usize) -> Result<(), WireError> {
    if len > message.remaining() {
        return Err(WireError::Malformed("a field past the end of the message"));
    }
    message.advance(len);
    Ok(())
}

/// Decodes the one `GetBlocksRequest` of a request body (header and protobuf bytes), of at most
/// `max` bytes.
pub(crate) fn parse_request(body: Bytes, max: usize) -> Result<pb::GetBlocksRequest, Status> {
    let mut reader = MessageReader::new(max);
    reader.push(body);
    let message = match reader.next_message() {
        Ok(Some(message)) => message,
        Ok(None) => return Err(Status::internal("the request ended inside its message")),
        Err(WireError::TooLarge { len, max }) => {
            return Err(Status::resource_exhausted(format!(
                "request too large: {len} bytes, the limit is {max}"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    if reader.finish().is_err() {
        return Err(Status::invalid_argument(
            "GetBlocks takes one request message",
        ));
    }
    <pb::GetBlocksRequest as prost::Message>::decode(message)
        .map_err(|e| Status::internal(format!("failed to decode the request: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// `bytes` cut at every position in `cuts`, as DATA frames would be.
    fn cut(bytes: &Bytes, cuts: &[usize]) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
            let c = c.min(bytes.len());
            if c > at {
                out.push(bytes.slice(at..c));
                at = c;
            }
        }
        out
    }

    fn data(len: usize) -> Bytes {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn the_prefix_and_data_are_what_prost_encodes() {
        for (first_block, len) in [(0, 1), (0, 4096), (7, 262_144), (u64::MAX, 130), (300, 0)] {
            let data = data(len);
            let mut ours = BytesMut::from(response_prefix(first_block, len).as_ref());
            ours.extend_from_slice(&data);
            let theirs = frame(&pb::GetBlocksResponse { first_block, data });
            assert_eq!(
                ours.freeze(),
                theirs,
                "first_block {first_block}, {len} bytes"
            );
        }
    }

    #[test]
    fn messages_are_read_back_whatever_the_frame_cuts() {
        let sent: Vec<pb::GetBlocksResponse> = (0..3)
            .map(|i| pb::GetBlocksResponse {
                first_block: i * 64,
                data: data(10_000 + i as usize),
            })
            .collect();
        let wire: Bytes = sent.iter().flat_map(|m| frame(m).to_vec()).collect();
        for cuts in [
            vec![],
            vec![1, 2, 3, 4, 5, 6],
            vec![4, 5000, 10_010, 10_011],
            vec![29_999],
        ] {
            let mut reader = MessageReader::new(1 << 20);
            let mut got = Vec::new();
            for part in cut(&wire, &cuts) {
                reader.push(part);
                while let Some(message) = reader.next_message().unwrap() {
                    let run = parse_response(message).unwrap();
                    got.push(pb::GetBlocksResponse {
                        first_block: run.first_block,
                        data: run.data.into_bytes(),
                    });
                }
            }
            reader.finish().unwrap();
            assert_eq!(got, sent, "cuts {cuts:?}");
        }
    }

    #[test]
    fn any_field_order_unknown_fields_and_repeats_decode_as_prost_does() {
        // data first, an unknown varint, fixed64, fixed32 and bytes field, first_block twice and
        // data twice: prost keeps the last of each.
        let mut body = BytesMut::new();
        body.put_u8(DATA_KEY);
        encode_varint(3, &mut body);
        body.extend_from_slice(b"old");
        body.put_u8(FIRST_BLOCK_KEY);
        encode_varint(5, &mut body);
        body.put_u8(3 << 3);
        encode_varint(99, &mut body);
        body.put_u8((4 << 3) | 1);
        body.put_u64(1);
        body.put_u8((5 << 3) | 5);
        body.put_u32(1);
        body.put_u8((6 << 3) | 2);
        encode_varint(2, &mut body);
        body.extend_from_slice(b"xy");
        body.put_u8(FIRST_BLOCK_KEY);
        encode_varint(9, &mut body);
        body.put_u8(DATA_KEY);
        encode_varint(3, &mut body);
        body.extend_from_slice(b"new");
        let body = body.freeze();
        let theirs = pb::GetBlocksResponse::decode(body.clone()).unwrap();
        let ours = parse_response(Rope::from(body)).unwrap();
        assert_eq!(ours.first_block, theirs.first_block);
        assert_eq!(ours.data.into_bytes(), theirs.data);
        assert_eq!(theirs.first_block, 9);
    }

    #[test]
    fn hostile_streams_are_errors_not_panics() {
        let mut compressed = MessageReader::new(1 << 20);
        compressed.push(Bytes::from_static(&[1, 0, 0, 0, 1, 0]));
        assert!(matches!(
            compressed.next_message(),
            Err(WireError::Compressed)
        ));

        // The limit is enforced on the header, before the body arrives.
        let mut huge = MessageReader::new(1 << 20);
        huge.push(Bytes::from_static(&[0, 0xff, 0xff, 0xff, 0xff]));
        assert!(matches!(
            huge.next_message(),
            Err(WireError::TooLarge {
                len: 0xffff_ffff,
                ..
            })
        ));

        let mut short = MessageReader::new(1 << 20);
        short.push(Bytes::from_static(&[0, 0, 0, 0, 9, 1, 2]));
        assert!(matches!(short.next_message(), Ok(None)));
        assert_eq!(short.finish(), Err(WireError::Truncated(7)));

        for body in [
            &[0x12, 0x05, 1, 2][..],   // data longer than the message
            &[0x08],                   // first_block without its varint
            &[0x08, 0xff, 0xff, 0xff], // unterminated varint
            &[0x0a, 0x01, 0x00],       // first_block as bytes
            &[0x10, 0x01],             // data as a varint
            &[0x00, 0x01],             // field 0
            &[0x1b],                   // a group
            &[0x19, 1, 2],             // fixed64 cut short
            &[
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ] {
            let got = parse_response(Rope::from(Bytes::copy_from_slice(body)));
            assert!(
                matches!(got, Err(WireError::Malformed(_))),
                "{body:?}: {got:?}"
            );
        }
    }

    #[test]
    fn a_request_is_one_bounded_message() {
        let request = pb::GetBlocksRequest {
            file: None,
            first_block: 3,
            block_count: 4,
        };
        assert_eq!(parse_request(frame(&request), 1024).unwrap(), request);
        let two: Bytes = [frame(&request), frame(&request)].concat().into();
        assert_eq!(
            parse_request(two, 1024).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            parse_request(Bytes::from_static(&[0, 0, 1, 0, 0]), 1024)
                .unwrap_err()
                .code(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(
            parse_request(Bytes::from_static(&[0, 0, 0, 0, 2, 0x08]), 1024)
                .unwrap_err()
                .code(),
            tonic::Code::Internal
        );
        assert_eq!(
            parse_request(Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0xff]), 1024)
                .unwrap_err()
                .code(),
            tonic::Code::Internal
        );
    }
}
