//! Which pieces of a file a holder has: one bit per piece, as BitTorrent's bitfield.
//!
//! On the wire (`GetPiecesResponse.bitfield`) it is `ceil(pieces / 8)` bytes, piece `i` in byte
//! `i / 8` at bit `7 - i % 8` (the most significant bit first), spare bits of the last byte zero.
//! [`Bitfield::from_bytes`] refuses anything else: a holder's answer is hostile input.

use std::fmt;

/// A set of piece indexes `0..len`, one bit each.
#[derive(Clone, PartialEq, Eq)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: u64,
    ones: u64,
}

/// Why bytes from the network are not a bitfield of the expected length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitfieldError {
    /// The byte count does not match the piece count.
    #[error("bitfield of {got} bytes for {pieces} pieces (expected {expected})")]
    WrongLength {
        /// Pieces in the file.
        pieces: u64,
        /// Bytes expected: `ceil(pieces / 8)`.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// Bits past the last piece are set.
    #[error("bitfield has bits set past piece {pieces}")]
    SpareBits {
        /// Pieces in the file.
        pieces: u64,
    },
}

impl Bitfield {
    /// No piece of `len`.
    pub fn empty(len: u64) -> Self {
        Bitfield {
            bytes: vec![0; len.div_ceil(8) as usize],
            len,
            ones: 0,
        }
    }

    /// Every piece of `len`.
    pub fn full(len: u64) -> Self {
        let mut field = Self::empty(len);
        for piece in 0..len {
            field.set(piece);
        }
        field
    }

    /// The pieces whose flag is true.
    pub fn from_flags(flags: &[bool]) -> Self {
        let mut field = Self::empty(flags.len() as u64);
        for (piece, _) in flags.iter().enumerate().filter(|(_, &f)| f) {
            field.set(piece as u64);
        }
        field
    }

    /// Parses the wire form for a file of `len` pieces, refusing a wrong length or spare bits.
    pub fn from_bytes(bytes: &[u8], len: u64) -> Result<Self, BitfieldError> {
        let expected = len.div_ceil(8);
        if bytes.len() as u64 != expected {
            return Err(BitfieldError::WrongLength {
                pieces: len,
                expected,
                got: bytes.len() as u64,
            });
        }
        let spare = (expected * 8 - len) as u32;
        if spare > 0 && bytes[bytes.len() - 1] & ((1u8 << spare) - 1) != 0 {
            return Err(BitfieldError::SpareBits { pieces: len });
        }
        Ok(Bitfield {
            bytes: bytes.to_vec(),
            len,
            ones: bytes.iter().map(|b| b.count_ones() as u64).sum(),
        })
    }

    /// The wire form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// How many pieces the file has.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a file of no pieces.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many pieces are set.
    pub fn count(&self) -> u64 {
        self.ones
    }

    /// True when every piece is set.
    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    /// Whether `piece` is set (false past the end).
    pub fn has(&self, piece: u64) -> bool {
        piece < self.len && self.bytes[(piece / 8) as usize] & (0x80 >> (piece % 8)) != 0
    }

    /// Sets `piece`; returns true if it was not set. Ignores pieces past the end.
    pub fn set(&mut self, piece: u64) -> bool {
        if piece >= self.len || self.has(piece) {
            return false;
        }
        self.bytes[(piece / 8) as usize] |= 0x80 >> (piece % 8);
        self.ones += 1;
        true
    }

    /// The pieces set here and not in `older` (what a holder gained since `older`).
    pub fn gained_since<'a>(&'a self, older: &'a Bitfield) -> impl Iterator<Item = u64> + 'a {
        (0..self.len).filter(move |&p| self.has(p) && !older.has(p))
    }

    /// The pieces set, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.len).filter(move |&p| self.has(p))
    }
}

impl fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bitfield({}/{})", self.ones, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_is_msb_first_and_checked() {
        let mut field = Bitfield::empty(10);
        assert!(field.set(0));
        assert!(field.set(9));
        assert!(!field.set(9));
        assert!(!field.set(10));
        assert_eq!(field.as_bytes(), &[0x80, 0x40]);
        assert_eq!(field.count(), 2);
        let parsed = Bitfield::from_bytes(&[0x80, 0x40], 10).unwrap();
        assert_eq!(parsed, field);
        assert_eq!(parsed.iter().collect::<Vec<_>>(), vec![0, 9]);
        assert!(matches!(
            Bitfield::from_bytes(&[0x80], 10),
            Err(BitfieldError::WrongLength { expected: 2, .. })
        ));
        assert_eq!(
            Bitfield::from_bytes(&[0x80, 0x20], 10),
            Err(BitfieldError::SpareBits { pieces: 10 })
        );
        assert!(Bitfield::from_bytes(&[], 0).unwrap().is_full());
        assert!(Bitfield::from_bytes(&[0xff], 8).unwrap().is_full());
        assert!(!field.has(u64::MAX));
    }

    #[test]
    fn full_flags_and_gains() {
        let full = Bitfield::full(13);
        assert!(full.is_full());
        assert_eq!(full.as_bytes(), &[0xff, 0xf8]);
        let some = Bitfield::from_flags(&[true, false, true]);
        let more = Bitfield::from_flags(&[true, true, true]);
        assert_eq!(more.gained_since(&some).collect::<Vec<_>>(), vec![1]);
    }
}
