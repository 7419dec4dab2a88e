//! What a `GetBlocks` stream checks its reads against ([`PieceCheck`]), and the hash of a piece
//! computed as its bytes are read ([`PieceHasher`]). See the parent module for how the reader
//! uses them.

use crate::chunking::{Geometry, Manifest, PieceIndex};
use crate::peer::store::Store;
use blake3::hazmat::HasherExt;
use std::sync::Arc;

/// What a stream checks its reads against, and whom it tells when the file no longer matches.
pub(crate) struct PieceCheck {
    /// The manifest the file was shared (or is being downloaded) with.
    pub(super) manifest: Arc<Manifest>,
    /// Told when a shared file no longer matches its manifest (it ignores names it does not share
    /// with this content, such as a download in progress).
    pub(super) store: Arc<Store>,
}

impl PieceCheck {
    /// Checks reads against `manifest`, telling `store` of a mismatch.
    pub(crate) fn new(manifest: Arc<Manifest>, store: Arc<Store>) -> Self {
        PieceCheck { manifest, store }
    }
}

/// The hash of one piece, computed as its bytes are read, in as many parts as they come.
/// The same function as [`crate::chunking::piece_hash`] (a chaining value at the piece's offset,
/// or the root hash of a file of one piece), fed incrementally.
pub(super) struct PieceHasher {
    piece: PieceIndex,
    hasher: blake3::Hasher,
    root: bool,
}

impl PieceHasher {
    pub(super) fn new(geometry: &Geometry, piece: PieceIndex) -> Self {
        let mut hasher = blake3::Hasher::new();
        let root = geometry.piece_count() == 1;
        if !root {
            hasher.set_input_offset(geometry.piece_bytes(piece).start);
        }
        PieceHasher {
            piece,
            hasher,
            root,
        }
    }

    pub(super) fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
    }

    /// True if the bytes fed are exactly this piece of `manifest`.
    pub(super) fn matches(&self, manifest: &Manifest) -> bool {
        let hash = if self.root {
            *self.hasher.finalize().as_bytes()
        } else {
            self.hasher.finalize_non_root()
        };
        manifest.piece_hashes().get(self.piece as usize) == Some(&hash)
    }
}

#[cfg(test)]
/// Deterministic bytes that differ from piece to piece.
pub(super) fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect()
}

/// The manifest of `data` with pieces of `piece_size` bytes (not the size `Geometry` picks).
#[cfg(test)]
pub(super) fn manifest_with_pieces(data: &[u8], piece_size: u64) -> Manifest {
    let geometry = Geometry::new(data.len() as u64, piece_size).unwrap();
    let hashes = (0..geometry.piece_count())
        .map(|p| {
            let r = geometry.piece_bytes(p);
            let piece = &data[r.start as usize..r.end as usize];
            crate::chunking::piece_hash(&geometry, p, piece).to_vec()
        })
        .collect();
    Manifest::from_parts(crate::chunking::ContentId::of(data), geometry, hashes).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_piece_hasher_agrees_with_the_manifest_however_the_bytes_come() {
        for (size, piece_size) in [
            (1, 65536),
            (65536, 65536),
            (65537, 65536),
            (3 * 65536 + 5, 65536),
            (5 << 20, 1 << 20),
            ((3 << 20) + 4097, 1 << 20),
        ] {
            let data = pattern(size);
            let manifest = manifest_with_pieces(&data, piece_size);
            let g = manifest.geometry();
            for piece in 0..g.piece_count() {
                let r = g.piece_bytes(piece);
                let bytes = &data[r.start as usize..r.end as usize];
                for step in [1000, 4096, 262_144, usize::MAX] {
                    let mut hasher = PieceHasher::new(&g, piece);
                    for part in bytes.chunks(step.min(bytes.len()).max(1)) {
                        hasher.update(part);
                    }
                    assert!(hasher.matches(&manifest), "{size} {piece} {step}");
                }
                let mut changed = bytes.to_vec();
                changed[bytes.len() / 2] ^= 1;
                let mut hasher = PieceHasher::new(&g, piece);
                hasher.update(&changed);
                assert!(!hasher.matches(&manifest), "{size} {piece}");
            }
        }
    }
}
