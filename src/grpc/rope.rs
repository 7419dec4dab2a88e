//! [`Rope`]: a byte sequence kept as the `Bytes` slices it arrived in, so bulk data read off a
//! connection reaches its destination without being gathered into one buffer first (see
//! [`crate::peer::blocks_wire`]). It is a [`Buf`], so varints and other small fields parse
//! across slice boundaries with the `bytes`/`prost` helpers.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;

/// Bytes held as a list of shared slices; splitting and taking never copy the data.
#[derive(Clone, Debug, Default)]
pub(crate) struct Rope {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl From<Bytes> for Rope {
    fn from(bytes: Bytes) -> Self {
        let mut rope = Rope::default();
        rope.push(bytes);
        rope
    }
}

impl Rope {
    /// Number of bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// True if it holds no byte.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `bytes` (no copy).
    pub(crate) fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.chunks.push_back(bytes);
        }
    }

    /// Appends the slices of `other` (no copy).
    pub(crate) fn append(&mut self, other: Rope) {
        self.len += other.len;
        self.chunks.extend(other.chunks);
    }

    /// Takes the first `n` bytes (all of them if there are fewer), without copying.
    pub(crate) fn split_to(&mut self, n: usize) -> Rope {
        let mut taken = Rope::default();
        let mut want = n.min(self.len);
        while want > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let piece = if front.len() <= want {
                self.chunks.pop_front().unwrap_or_default()
            } else {
                front.split_to(want)
            };
            want -= piece.len();
            self.len -= piece.len();
            taken.push(piece);
        }
        taken
    }

    /// The slices, in order.
    pub(crate) fn chunks(&self) -> impl Iterator<Item = &[u8]> + Clone {
        self.chunks.iter().map(|b| b.as_ref())
    }

    /// Copies the first `out.len()` bytes into `out`, without consuming them; false if there
    /// are fewer.
    pub(crate) fn peek(&self, out: &mut [u8]) -> bool {
        if out.len() > self.len {
            return false;
        }
        let mut at = 0;
        for chunk in self.chunks() {
            let take = chunk.len().min(out.len() - at);
            out[at..at + take].copy_from_slice(&chunk[..take]);
            at += take;
            if at == out.len() {
                break;
            }
        }
        true
    }

    /// Copies all the bytes into `out`, whose length must be [`Rope::len`].
    pub(crate) fn copy_into(&self, out: &mut [u8]) {
        debug_assert_eq!(out.len(), self.len);
        let mut at = 0;
        for chunk in self.chunks() {
            let end = (at + chunk.len()).min(out.len());
            out[at..end].copy_from_slice(&chunk[..end - at]);
            at = end;
        }
    }

    /// The bytes as one `Bytes`: no copy when they lie in one slice.
    pub(crate) fn into_bytes(mut self) -> Bytes {
        match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.pop_front().unwrap_or_default(),
            _ => {
                let mut all = BytesMut::with_capacity(self.len);
                for chunk in &self.chunks {
                    all.extend_from_slice(chunk);
                }
                all.freeze()
            }
        }
    }
}

impl Buf for Rope {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |b| b.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.len, "advance past the end of a rope");
        while cnt > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            if front.len() <= cnt {
                cnt -= front.len();
                self.len -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(cnt);
                self.len -= cnt;
                cnt = 0;
            }
        }
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        assert!(len <= self.len, "copy_to_bytes past the end of a rope");
        self.split_to(len).into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope_of(parts: &[&[u8]]) -> Rope {
        let mut rope = Rope::default();
        for part in parts {
            rope.push(Bytes::copy_from_slice(part));
        }
        rope
    }

    fn contents(rope: &Rope) -> Vec<u8> {
        rope.chunks().flatten().copied().collect()
    }

    #[test]
    fn splitting_keeps_order_and_shares_the_slices() {
        let source = Bytes::from_static(b"abcdefghij");
        let mut rope = Rope::default();
        rope.push(source.slice(0..3));
        rope.push(Bytes::new());
        rope.push(source.slice(3..10));
        assert_eq!(rope.len(), 10);
        let head = rope.split_to(5);
        assert_eq!(contents(&head), b"abcde");
        assert_eq!(contents(&rope), b"fghij");
        assert_eq!(rope.len(), 5);
        // The taken part of the second slice points into the source: no copy was made.
        let second = head.chunks().nth(1).unwrap();
        assert_eq!(second.as_ptr(), source[3..].as_ptr());
        let rest = rope.split_to(100);
        assert_eq!(contents(&rest), b"fghij");
        assert!(rope.is_empty());
    }

    #[test]
    fn peeking_copying_and_buf_reads_cross_slices() {
        let rope = rope_of(&[b"ab", b"c", b"defg"]);
        let mut five = [0u8; 5];
        assert!(rope.peek(&mut five));
        assert_eq!(&five, b"abcde");
        assert!(!rope.peek(&mut [0u8; 8]));
        let mut all = vec![0u8; 7];
        rope.copy_into(&mut all);
        assert_eq!(all, b"abcdefg");

        let mut buf = rope.clone();
        assert_eq!(buf.get_u8(), b'a');
        buf.advance(2);
        assert_eq!(buf.remaining(), 4);
        assert_eq!(buf.copy_to_bytes(3), Bytes::from_static(b"def"));
        assert_eq!(buf.chunk(), b"g");
        assert_eq!(rope.into_bytes(), Bytes::from_static(b"abcdefg"));
    }

    #[test]
    fn varints_parse_across_slice_boundaries() {
        let mut encoded = BytesMut::new();
        prost::encoding::encode_varint(300_000_000_000, &mut encoded);
        let (a, b) = encoded.split_at(2);
        let mut rope = rope_of(&[a, b]);
        assert_eq!(
            prost::encoding::decode_varint(&mut rope).unwrap(),
            300_000_000_000
        );
        assert!(rope.is_empty());
    }
}
