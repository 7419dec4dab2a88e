//! Block and piece geometry, content ids and manifests. Pure and synchronous.
//!
//! * A **block** (4096 bytes, the original design's unit) addresses data on the wire: `GetBlocks`
//!   asks for a range of blocks.
//! * A **piece** is a power-of-two number of blocks, chosen per file so that a manifest stays small
//!   (at most [`MAX_PIECES_TARGET`] pieces unless the file is huge). It is the unit of verification
//!   and of download scheduling.
//! * The **content id** of a file is the plain BLAKE3 hash of its bytes (what `b3sum` prints).
//! * The **manifest** lists the BLAKE3 chaining value of every piece. Because pieces are
//!   power-of-two sized and aligned, they are exactly subtrees of the BLAKE3 tree, so merging their
//!   chaining values up the tree ([`blake3::hazmat`]) must give the content id: a downloader checks
//!   a manifest from any holder against the content id without trusting the holder, then checks
//!   each piece as it arrives.

mod bitfield;
pub use bitfield::{Bitfield, BitfieldError};
use blake3::hazmat::{
    merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::str::FromStr;

/// Size of a block in bytes: the addressing unit of `GetBlocks`.
pub const BLOCK_SIZE: u32 = 4096;
/// Smallest piece: 16 blocks (64 KiB). Smaller pieces cost more in hashes and requests than they
/// gain in scheduling granularity.
pub const MIN_PIECE_SIZE: u32 = 64 * 1024;
/// Largest piece: 16 MiB (files over 64 GiB get more than [`MAX_PIECES_TARGET`] pieces).
pub const MAX_PIECE_SIZE: u32 = 16 * 1024 * 1024;
/// Piece sizes double until a file has at most this many pieces (a 128 KiB manifest).
pub(crate) const MAX_PIECES_TARGET: u64 = 4096;
/// Length of a piece hash (a BLAKE3 chaining value) and of a content id.
pub(crate) const HASH_LEN: usize = 32;

/// Errors of this module: malformed ids and manifests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkingError {
    /// A content id that is not 64 hex characters.
    #[error("content id must be 64 hexadecimal characters, got {0:?}")]
    BadContentId(String),
    /// A piece size that is not a power-of-two multiple of the block size within bounds.
    #[error("piece size {0} is not a power of two between {MIN_PIECE_SIZE} and {MAX_PIECE_SIZE}")]
    BadPieceSize(u64),
    /// A manifest whose number of piece hashes does not match its size.
    #[error("manifest has {got} piece hashes, a file of {size} bytes needs {want}")]
    PieceCountMismatch {
        /// Declared file size.
        size: u64,
        /// Hashes needed.
        want: u64,
        /// Hashes present.
        got: u64,
    },
    /// A piece hash that is not 32 bytes.
    #[error("piece hash {index} is {len} bytes, expected {HASH_LEN}")]
    BadPieceHash {
        /// Which piece.
        index: u64,
        /// Its length.
        len: usize,
    },
    /// A manifest whose hashes do not merge into the content id.
    #[error("manifest does not match content id {0}")]
    RootMismatch(ContentId),
}

/// A malformed id or manifest in a request is the caller's mistake: INVALID_ARGUMENT, with the
/// reason.
impl From<ChunkingError> for tonic::Status {
    fn from(e: ChunkingError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// The identity of a file's content: the BLAKE3 hash of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId(pub [u8; HASH_LEN]);

impl ContentId {
    /// Content id of a byte slice held in memory.
    pub fn of(data: &[u8]) -> Self {
        ContentId(*blake3::hash(data).as_bytes())
    }

    /// The 64-character lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A short prefix (12 hex characters) for people to read and type.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }

    /// Content id of a file on disk, read through once (blocking). Streams the file through
    /// BLAKE3 in small buffers, so memory stays flat whatever the file's size; the id equals
    /// [`ContentId::of`] over the same bytes (and what `b3sum` prints).
    pub fn of_file(path: &std::path::Path) -> std::io::Result<Self> {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(std::fs::File::open(path)?)?;
        Ok(ContentId(*hasher.finalize().as_bytes()))
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({})", self.short())
    }
}

impl FromStr for ContentId {
    type Err = ChunkingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; HASH_LEN];
        // Only lowercase, so that one content has exactly one spelling on the wire.
        if s.len() != 2 * HASH_LEN || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ChunkingError::BadContentId(truncate(s)));
        }
        hex::decode_to_slice(s, &mut out).map_err(|_| ChunkingError::BadContentId(truncate(s)))?;
        Ok(ContentId(out))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Checks that `prefix` can be the start of a content id: 1-64 lowercase hex characters.
pub(crate) fn is_content_id_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= 2 * HASH_LEN
        && prefix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Index of a piece within a file.
pub(crate) type PieceIndex = u64;

/// The block and piece layout of a file of a given size.
///
/// Invariant: `piece_size` is a power of two, a multiple of [`BLOCK_SIZE`], within
/// [`MIN_PIECE_SIZE`]..=[`MAX_PIECE_SIZE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    size: u64,
    piece_size: u32,
}

impl Geometry {
    /// The layout p2pshare chooses for a file of `size` bytes.
    pub fn for_size(size: u64) -> Self {
        let mut piece_size = MIN_PIECE_SIZE;
        while piece_size < MAX_PIECE_SIZE && size.div_ceil(piece_size as u64) > MAX_PIECES_TARGET {
            piece_size *= 2;
        }
        Geometry { size, piece_size }
    }

    /// A layout announced by someone else; checked.
    pub fn new(size: u64, piece_size: u64) -> Result<Self, ChunkingError> {
        if !piece_size.is_power_of_two()
            || piece_size < MIN_PIECE_SIZE as u64
            || piece_size > MAX_PIECE_SIZE as u64
        {
            return Err(ChunkingError::BadPieceSize(piece_size));
        }
        Ok(Geometry {
            size,
            piece_size: piece_size as u32,
        })
    }

    /// File size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Piece size in bytes.
    pub fn piece_size(&self) -> u32 {
        self.piece_size
    }

    /// Number of blocks (the last may be short).
    pub fn block_count(&self) -> u64 {
        self.size.div_ceil(BLOCK_SIZE as u64)
    }

    /// Number of pieces (the last may be short).
    pub fn piece_count(&self) -> u64 {
        self.size.div_ceil(self.piece_size as u64)
    }

    /// Blocks per (full) piece.
    pub(crate) fn blocks_per_piece(&self) -> u64 {
        (self.piece_size / BLOCK_SIZE) as u64
    }

    /// Byte range of a piece. Panics on an index past the end: callers hold checked indexes.
    pub fn piece_bytes(&self, piece: PieceIndex) -> Range<u64> {
        assert!(piece < self.piece_count(), "piece {piece} out of range");
        // `piece < piece_count` keeps `start < size`; the end saturates for sizes within one
        // piece of `u64::MAX` (the clamp to `size` makes that exact).
        let start = piece * self.piece_size as u64;
        start..start.saturating_add(self.piece_size as u64).min(self.size)
    }

    /// Block range of a run of pieces `pieces.start..pieces.end`, clamped to the file's blocks.
    pub fn blocks_of_pieces(&self, pieces: Range<PieceIndex>) -> Range<u64> {
        let end = pieces
            .end
            .saturating_mul(self.blocks_per_piece())
            .min(self.block_count());
        let first = pieces
            .start
            .saturating_mul(self.blocks_per_piece())
            .min(end);
        first..end
    }

    /// The pieces a non-empty byte range `bytes` (within the file) touches.
    pub fn pieces_of_bytes(&self, bytes: Range<u64>) -> Range<PieceIndex> {
        let piece = self.piece_size as u64;
        bytes.start / piece..bytes.end.div_ceil(piece).max(bytes.start / piece + 1)
    }

    /// Byte range of a block range, clamped to the file size. `None` if the range is empty,
    /// inverted or runs past the last block. Never overflows, whatever the inputs (they come from
    /// the network).
    pub fn block_bytes(&self, first_block: u64, block_count: u64) -> Option<Range<u64>> {
        let end_block = first_block.checked_add(block_count)?;
        if block_count == 0 || end_block > self.block_count() {
            return None;
        }
        // `first_block < block_count()`, so `start < size`. The end of the last block can pass
        // `u64::MAX` for a file within one block of it: saturate, then clamp to the size.
        let start = first_block * BLOCK_SIZE as u64;
        Some(start..end_block.saturating_mul(BLOCK_SIZE as u64).min(self.size))
    }
}

/// Hash of one piece as it appears in a manifest: the chaining value of the piece as a subtree at
/// its offset, or, for a file of a single piece, the root hash of the whole file.
pub(crate) fn piece_hash(geometry: &Geometry, piece: PieceIndex, data: &[u8]) -> [u8; HASH_LEN] {
    piece_hash_parts(geometry, piece, [data])
}

/// [`piece_hash`] of the concatenation of `parts` (a piece as the slices it arrived in).
pub(crate) fn piece_hash_parts<'a>(
    geometry: &Geometry,
    piece: PieceIndex,
    parts: impl IntoIterator<Item = &'a [u8]>,
) -> [u8; HASH_LEN] {
    let mut hasher = PieceHasher::new(geometry, piece);
    for part in parts {
        hasher.update(part);
    }
    hasher.finish()
}

/// [`piece_hash`] fed incrementally: a chaining value at the piece's offset, or the root hash of
/// a file of one piece.
pub(crate) struct PieceHasher {
    piece: PieceIndex,
    hasher: blake3::Hasher,
    root: bool,
}

impl PieceHasher {
    /// A hasher for piece `piece` of a file laid out as `geometry`.
    pub(crate) fn new(geometry: &Geometry, piece: PieceIndex) -> Self {
        let mut hasher = blake3::Hasher::new();
        let root = geometry.piece_count() == 1;
        if !root {
            hasher.set_input_offset(piece * geometry.piece_size as u64);
        }
        PieceHasher {
            piece,
            hasher,
            root,
        }
    }

    /// Feeds the next bytes of the piece. Large inputs hash faster (blake3's SIMD works over wide
    /// inputs): feed whole slices, not small pieces of them.
    pub(crate) fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
    }

    /// The hash of the bytes fed.
    pub(crate) fn finish(&self) -> [u8; HASH_LEN] {
        if self.root {
            *self.hasher.finalize().as_bytes()
        } else {
            self.hasher.finalize_non_root()
        }
    }

    /// True if the bytes fed are exactly this piece of `manifest`.
    pub(crate) fn matches(&self, manifest: &Manifest) -> bool {
        manifest.piece_hashes().get(self.piece as usize) == Some(&self.finish())
    }
}

/// The verified description of a file: content id, layout and per-piece hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    content_id: ContentId,
    geometry: Geometry,
    piece_hashes: Vec<[u8; HASH_LEN]>,
}

impl Manifest {
    /// Builds a manifest from untrusted parts and checks that the piece hashes merge into
    /// `content_id`. Only a manifest that passes is ever constructed.
    ///
    /// What the check binds: every piece hash, their number, and so the piece size whenever there
    /// are two pieces or more. What it cannot bind: the exact size within the last piece (chaining
    /// values do not reveal how many bytes a subtree held), nor the piece size of a file of one
    /// piece (whose only hash is the content id, whatever the piece size). A manifest with such a
    /// wrong size is accepted here but useless: the true last piece then fails
    /// [`Manifest::verify_piece`], so it can stall a download, never corrupt one. Callers should
    /// cross-check the size with another source (the tracker's, or a second holder's).
    pub fn from_parts(
        content_id: ContentId,
        geometry: Geometry,
        piece_hashes: Vec<Vec<u8>>,
    ) -> Result<Self, ChunkingError> {
        let want = geometry.piece_count();
        if piece_hashes.len() as u64 != want {
            return Err(ChunkingError::PieceCountMismatch {
                size: geometry.size(),
                want,
                got: piece_hashes.len() as u64,
            });
        }
        let hashes = piece_hashes
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                <[u8; HASH_LEN]>::try_from(h.as_slice()).map_err(|_| ChunkingError::BadPieceHash {
                    index: i as u64,
                    len: h.len(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let manifest = Manifest {
            content_id,
            geometry,
            piece_hashes: hashes,
        };
        if manifest.computed_root() != content_id {
            return Err(ChunkingError::RootMismatch(content_id));
        }
        Ok(manifest)
    }

    /// Hashes everything `reader` yields (exactly `size` bytes expected) into a manifest.
    /// Returns an error if the reader fails or yields a different number of bytes.
    pub(crate) fn from_reader(mut reader: impl Read, size: u64) -> std::io::Result<Self> {
        let geometry = Geometry::for_size(size);
        let mut piece_hashes = Vec::with_capacity(geometry.piece_count() as usize);
        let mut buf = vec![0u8; geometry.piece_size() as usize];
        for piece in 0..geometry.piece_count() {
            let len = geometry.piece_bytes(piece).end - geometry.piece_bytes(piece).start;
            reader.read_exact(&mut buf[..len as usize])?;
            piece_hashes.push(piece_hash(&geometry, piece, &buf[..len as usize]));
        }
        // The file must end where its size said it would.
        if reader.read(&mut [0u8; 1])? != 0 {
            return Err(std::io::Error::other("file grew while being hashed"));
        }
        let mut manifest = Manifest {
            content_id: ContentId([0; HASH_LEN]),
            geometry,
            piece_hashes,
        };
        manifest.content_id = manifest.computed_root();
        Ok(manifest)
    }

    /// Manifest of bytes held in memory.
    pub fn of_bytes(data: &[u8]) -> Self {
        Self::from_reader(data, data.len() as u64).expect("reading memory cannot fail")
    }

    /// The content id this manifest is for.
    pub fn content_id(&self) -> ContentId {
        self.content_id
    }

    /// The file's layout.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Piece hashes in order.
    pub fn piece_hashes(&self) -> &[[u8; HASH_LEN]] {
        &self.piece_hashes
    }

    /// True if `data` is exactly piece `piece` of this file.
    pub fn verify_piece(&self, piece: PieceIndex, data: &[u8]) -> bool {
        self.verify_piece_parts(piece, [data])
    }

    /// [`Manifest::verify_piece`] of the concatenation of `parts`.
    pub(crate) fn verify_piece_parts<'a>(
        &self,
        piece: PieceIndex,
        parts: impl IntoIterator<Item = &'a [u8]> + Clone,
    ) -> bool {
        let Some(expected) = self.piece_hashes.get(piece as usize) else {
            return false;
        };
        let range = self.geometry.piece_bytes(piece);
        let len: usize = parts.clone().into_iter().map(<[u8]>::len).sum();
        len as u64 == range.end - range.start
            && piece_hash_parts(&self.geometry, piece, parts) == *expected
    }

    /// The root hash implied by the piece hashes.
    fn computed_root(&self) -> ContentId {
        let hashes = &self.piece_hashes;
        let root = match hashes.len() {
            0 => *blake3::hash(b"").as_bytes(),
            1 => hashes[0],
            _ => {
                let split = left_subtree_pieces(hashes.len());
                let left = merge_non_root(&hashes[..split]);
                let right = merge_non_root(&hashes[split..]);
                *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes()
            }
        };
        ContentId(root)
    }
}

/// Pieces in the left subtree of a BLAKE3 tree node over `n >= 2` pieces: the largest power of
/// two strictly less than `n`. (BLAKE3 puts the largest power-of-two number of chunks that leaves
/// at least one byte on the right into the left subtree; with power-of-two pieces, of which only
/// the last may be short, that is this count.)
fn left_subtree_pieces(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

fn merge_non_root(cvs: &[ChainingValue]) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let split = left_subtree_pieces(cvs.len());
    let left = merge_non_root(&cvs[..split]);
    let right = merge_non_root(&cvs[split..]);
    merge_subtrees_non_root(&left, &right, Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes at every boundary the code has: blocks, BLAKE3 chunks, pieces, piece-size steps.
    const INTERESTING_SIZES: &[u64] = &[
        0,
        1,
        1023,
        1024,
        1025,
        4095,
        4096,
        4097,
        MIN_PIECE_SIZE as u64 - 1,
        MIN_PIECE_SIZE as u64,
        MIN_PIECE_SIZE as u64 + 1,
        2 * MIN_PIECE_SIZE as u64,
        3 * MIN_PIECE_SIZE as u64 + 17,
        5 * 1024 * 1024 + 3,
        MIN_PIECE_SIZE as u64 * MAX_PIECES_TARGET + 1,
    ];

    fn pattern(len: u64) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect()
    }

    #[test]
    fn manifest_root_equals_plain_blake3_for_every_interesting_size() {
        for &size in INTERESTING_SIZES {
            let data = pattern(size);
            let manifest = Manifest::of_bytes(&data);
            assert_eq!(
                manifest.content_id(),
                ContentId::of(&data),
                "size {size} ({} pieces)",
                manifest.geometry().piece_count()
            );
        }
    }

    #[test]
    fn manifest_roots_match_for_every_piece_count_up_to_40() {
        for pieces in 1..=40u64 {
            for tail in [-1i64, 0] {
                let size = (pieces * MIN_PIECE_SIZE as u64) as i64 + tail;
                let data = pattern(size as u64);
                assert_eq!(Manifest::of_bytes(&data).content_id(), ContentId::of(&data));
            }
        }
    }

    #[test]
    fn every_piece_verifies_and_any_change_is_caught() {
        let data = pattern(3 * MIN_PIECE_SIZE as u64 + 100);
        let manifest = Manifest::of_bytes(&data);
        let geometry = manifest.geometry();
        for piece in 0..geometry.piece_count() {
            let range = geometry.piece_bytes(piece);
            let mut bytes = data[range.start as usize..range.end as usize].to_vec();
            assert!(manifest.verify_piece(piece, &bytes));
            let mid = bytes.len() / 2;
            bytes[mid] ^= 1;
            assert!(!manifest.verify_piece(piece, &bytes));
            bytes.pop();
            assert!(!manifest.verify_piece(piece, &bytes));
        }
        // A piece's bytes offered as another piece fail (offsets are part of the hash).
        let first = &data[..MIN_PIECE_SIZE as usize];
        assert!(!manifest.verify_piece(1, first));
        assert!(!manifest.verify_piece(99, first));
    }

    #[test]
    fn manifest_from_parts_rejects_anything_but_the_truth() {
        let data = pattern(4 * MIN_PIECE_SIZE as u64);
        let good = Manifest::of_bytes(&data);
        let parts = || -> Vec<Vec<u8>> { good.piece_hashes().iter().map(|h| h.to_vec()).collect() };
        let ok = Manifest::from_parts(good.content_id(), good.geometry(), parts()).unwrap();
        assert_eq!(ok, good);

        let mut tampered = parts();
        tampered[2][0] ^= 0x80;
        assert_eq!(
            Manifest::from_parts(good.content_id(), good.geometry(), tampered),
            Err(ChunkingError::RootMismatch(good.content_id()))
        );
        let mut short = parts();
        short.pop();
        assert!(matches!(
            Manifest::from_parts(good.content_id(), good.geometry(), short),
            Err(ChunkingError::PieceCountMismatch { .. })
        ));
        let mut bad_len = parts();
        bad_len[0].push(0);
        assert!(matches!(
            Manifest::from_parts(good.content_id(), good.geometry(), bad_len),
            Err(ChunkingError::BadPieceHash { index: 0, .. })
        ));
        let other = ContentId::of(b"something else");
        assert!(Manifest::from_parts(other, good.geometry(), parts()).is_err());
    }

    #[test]
    fn geometry_counts_blocks_and_pieces() {
        for (size, blocks) in [(0, 0), (1, 1), (4095, 1), (4096, 1), (4097, 2)] {
            let g = Geometry::for_size(size);
            assert_eq!(g.block_count(), blocks, "size {size}");
            assert_eq!(g.piece_count(), blocks.min(1), "size {size}");
        }
        let g = Geometry::for_size(1 << 30);
        assert_eq!(g.piece_size(), 256 * 1024);
        assert_eq!(g.piece_count(), 4096);
        assert!(Geometry::for_size(u64::MAX / 2).piece_size() == MAX_PIECE_SIZE);
    }

    #[test]
    fn block_ranges_are_checked() {
        let g = Geometry::for_size(3 * 4096 + 5);
        assert_eq!(g.block_count(), 4);
        assert_eq!(g.block_bytes(0, 4), Some(0..3 * 4096 + 5));
        assert_eq!(g.block_bytes(3, 1), Some(3 * 4096..3 * 4096 + 5));
        assert_eq!(g.block_bytes(1, 1), Some(4096..8192));
        assert_eq!(g.block_bytes(4, 1), None);
        assert_eq!(g.block_bytes(2, 0), None);
        assert_eq!(g.block_bytes(u64::MAX, 2), None);
        assert_eq!(g.block_bytes(0, u64::MAX), None);
        // A file within one block of u64::MAX: its last block's end is past u64::MAX.
        let huge = Geometry::for_size(u64::MAX);
        let last = huge.block_count() - 1;
        assert_eq!(
            huge.block_bytes(last, 1),
            Some(last * BLOCK_SIZE as u64..u64::MAX)
        );
        let last_piece = huge.piece_count() - 1;
        assert_eq!(huge.piece_bytes(last_piece).end, u64::MAX);
        assert_eq!(
            huge.blocks_of_pieces(last_piece..u64::MAX),
            last_piece * huge.blocks_per_piece()..huge.block_count()
        );
    }

    #[test]
    fn geometry_new_rejects_bad_piece_sizes() {
        assert!(Geometry::new(10, 3 * 4096).is_err());
        assert!(Geometry::new(10, 4096).is_err());
        assert!(Geometry::new(10, 1 << 40).is_err());
        assert!(Geometry::new(10, MIN_PIECE_SIZE as u64).is_ok());
    }

    #[test]
    fn byte_ranges_map_to_the_pieces_they_touch() {
        let g = Geometry::new(10 * 65536 + 5, 65536).unwrap();
        assert_eq!(g.pieces_of_bytes(0..1), 0..1);
        assert_eq!(g.pieces_of_bytes(0..65536), 0..1);
        assert_eq!(g.pieces_of_bytes(65535..65537), 0..2);
        assert_eq!(g.pieces_of_bytes(10 * 65536..10 * 65536 + 5), 10..11);
        let all = g.block_bytes(0, g.block_count()).unwrap();
        assert_eq!(g.pieces_of_bytes(all), 0..g.piece_count());
    }

    #[test]
    fn blocks_tile_the_file_at_edge_sizes() {
        for size in [0u64, 1, 4095, 4096, 4097, 3 * 1024 * 1024 + 1] {
            let data = pattern(size);
            let geometry = Geometry::for_size(size);
            let blocks: Vec<&[u8]> = data.chunks(BLOCK_SIZE as usize).collect();
            assert_eq!(blocks.len() as u64, geometry.block_count());
            for (index, block) in blocks.iter().enumerate() {
                let range = geometry.block_bytes(index as u64, 1).unwrap();
                assert_eq!(&data[range.start as usize..range.end as usize], *block);
            }
            assert_eq!(geometry.block_bytes(geometry.block_count(), 1), None);
        }
    }

    #[test]
    fn content_id_hex_round_trips_and_rejects_junk() {
        let id = ContentId::of(b"hello");
        assert_eq!(id.to_hex().parse::<ContentId>().unwrap(), id);
        assert_eq!(
            id.to_hex(),
            "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"
        );
        for junk in ["", "abc", &"g".repeat(64), &id.to_hex().to_uppercase()] {
            assert!(junk.parse::<ContentId>().is_err(), "{junk}");
        }
        assert!(is_content_id_prefix("ea8f"));
        assert!(!is_content_id_prefix("EA8F"));
        assert!(!is_content_id_prefix(""));
    }
}
