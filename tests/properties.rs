//! Property tests of the pure chunking logic (issue 7): what a manifest binds, what piece
//! verification catches, that the manifest's root is plain BLAKE3, and that block arithmetic on
//! numbers straight from the network never panics and always agrees with itself; and (issue 12)
//! that a holder's bitfield, straight from the network, is accepted exactly when it is one.
//! (Arbitrary tracker answers fed to the shell are in `tests/boundary.rs`.)
//!
//! Case counts and sizes are modest so the suite stays fast in a debug build.

use p2pshare::chunking::{
    Bitfield, BitfieldError, ChunkingError, ContentId, Geometry, Manifest, BLOCK_SIZE,
    MAX_PIECE_SIZE, MIN_PIECE_SIZE,
};
use proptest::prelude::*;

const KIB: u64 = 1024;
const PIECE: u64 = MIN_PIECE_SIZE as u64;
const BLOCK: u64 = BLOCK_SIZE as u64;

/// Deterministic bytes, fast even unoptimized.
fn data(len: u64, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len as usize + 8);
    while (out.len() as u64) < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

/// File sizes weighted to the edges that matter: empty, around blocks and BLAKE3 chunks, around
/// piece boundaries, and anything up to 4 MiB (64 pieces).
fn file_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..=3 * KIB,
        (1u64..=64, -2i64..=2).prop_map(|(pieces, d)| (pieces * PIECE).saturating_add_signed(d)),
        (1u64..=64, -1i64..=1).prop_map(|(blocks, d)| (blocks * BLOCK).saturating_add_signed(d)),
        0u64..=64 * PIECE,
    ]
}

fn valid_piece_sizes() -> Vec<u64> {
    let mut sizes = Vec::new();
    let mut size = MIN_PIECE_SIZE as u64;
    while size <= MAX_PIECE_SIZE as u64 {
        sizes.push(size);
        size *= 2;
    }
    sizes
}

fn parts(manifest: &Manifest) -> Vec<Vec<u8>> {
    manifest.piece_hashes().iter().map(|h| h.to_vec()).collect()
}

fn piece_of<'a>(data: &'a [u8], geometry: &Geometry, piece: u64) -> &'a [u8] {
    let range = geometry.piece_bytes(piece);
    &data[range.start as usize..range.end as usize]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The manifest's root is exactly what `b3sum` prints, for any size.
    #[test]
    fn manifest_root_is_plain_blake3(size in file_size(), seed in any::<u64>()) {
        let bytes = data(size, seed);
        let manifest = Manifest::of_bytes(&bytes);
        prop_assert_eq!(manifest.content_id(), ContentId(*blake3::hash(&bytes).as_bytes()));
        prop_assert_eq!(manifest.geometry(), Geometry::for_size(size));
        prop_assert_eq!(manifest.piece_hashes().len() as u64, manifest.geometry().piece_count());
        // And the honest parts are accepted as they are.
        let rebuilt =
            Manifest::from_parts(manifest.content_id(), manifest.geometry(), parts(&manifest));
        prop_assert_eq!(rebuilt, Ok(manifest));
    }

    /// Changing any bit of any piece hash is always caught.
    #[test]
    fn tampering_with_any_piece_hash_is_rejected(
        size in 1u64..=24 * PIECE,
        seed in any::<u64>(),
        piece in any::<prop::sample::Index>(),
        byte in 0usize..32,
        flip in 1u8..=255,
    ) {
        let manifest = Manifest::of_bytes(&data(size, seed));
        let mut hashes = parts(&manifest);
        let piece = piece.index(hashes.len());
        hashes[piece][byte] ^= flip;
        prop_assert_eq!(
            Manifest::from_parts(manifest.content_id(), manifest.geometry(), hashes),
            Err(ChunkingError::RootMismatch(manifest.content_id()))
        );
    }

    /// Hashes dropped, added, lengthened or shortened are always caught.
    #[test]
    fn malformed_hash_lists_are_rejected(
        size in 1u64..=24 * PIECE,
        seed in any::<u64>(),
        piece in any::<prop::sample::Index>(),
        what in 0u8..4,
    ) {
        let manifest = Manifest::of_bytes(&data(size, seed));
        let mut hashes = parts(&manifest);
        let piece = piece.index(hashes.len());
        match what {
            0 => { hashes.remove(piece); }
            1 => { let copy = hashes[piece].clone(); hashes.insert(piece, copy); }
            2 => hashes[piece].push(0),
            _ => { hashes[piece].pop(); }
        }
        let result = Manifest::from_parts(manifest.content_id(), manifest.geometry(), hashes);
        prop_assert!(result.is_err());
    }

    /// Another content id is always refused for these hashes.
    #[test]
    fn another_content_id_is_rejected(
        size in file_size(),
        seed in any::<u64>(),
        other in any::<[u8; 32]>(),
    ) {
        let manifest = Manifest::of_bytes(&data(size, seed));
        prop_assume!(other != manifest.content_id().0);
        let result = Manifest::from_parts(ContentId(other), manifest.geometry(), parts(&manifest));
        prop_assert!(result.is_err());
    }

    /// A changed piece size is rejected whenever the file has two pieces or more. (With one piece
    /// or none, the only hash is the content id whatever the piece size, so the "tampered"
    /// manifest describes the same content the same way: it is accepted and verifies the same
    /// bytes.)
    #[test]
    fn tampering_with_the_piece_size_is_rejected(
        size in file_size(),
        seed in any::<u64>(),
        other in prop::sample::select(valid_piece_sizes()),
    ) {
        let bytes = data(size, seed);
        let manifest = Manifest::of_bytes(&bytes);
        let original = manifest.geometry();
        prop_assume!(other != original.piece_size() as u64);
        let tampered = Geometry::new(size, other).unwrap();
        let result = Manifest::from_parts(manifest.content_id(), tampered, parts(&manifest));
        if original.piece_count() >= 2 {
            let pieces = original.piece_count();
            prop_assert!(result.is_err(), "piece size {} accepted for {} pieces", other, pieces);
        } else if let Ok(accepted) = result {
            prop_assert_eq!(accepted.piece_hashes(), manifest.piece_hashes());
            if size > 0 {
                prop_assert!(accepted.verify_piece(0, &bytes));
            }
        }
    }

    /// A piece size that is not a power of two within bounds never makes a geometry.
    #[test]
    fn bad_piece_sizes_never_make_a_geometry(size in any::<u64>(), piece_size in any::<u64>()) {
        let valid = valid_piece_sizes().contains(&piece_size);
        prop_assert_eq!(Geometry::new(size, piece_size).is_ok(), valid);
    }

    /// A changed size is rejected when it changes the number of pieces. When it does not, the
    /// hashes cannot tell (chaining values do not say how long the last piece is): the manifest is
    /// accepted, but it can only stall a download, never complete a wrong one, because the true
    /// last piece and any last piece of the claimed length both fail verification.
    #[test]
    fn tampering_with_the_size_is_rejected_or_caught_at_the_last_piece(
        size in 1u64..=24 * PIECE,
        seed in any::<u64>(),
        delta in prop_oneof![-3 * PIECE as i64..=3 * PIECE as i64, -5i64..=5],
        filler in any::<u8>(),
    ) {
        let bytes = data(size, seed);
        let manifest = Manifest::of_bytes(&bytes);
        let original = manifest.geometry();
        let claimed = size.saturating_add_signed(delta);
        prop_assume!(claimed != size);
        let tampered = Geometry::new(claimed, original.piece_size() as u64).unwrap();
        let result = Manifest::from_parts(manifest.content_id(), tampered, parts(&manifest));
        if tampered.piece_count() != original.piece_count() {
            let is_count_mismatch = matches!(result, Err(ChunkingError::PieceCountMismatch { .. }));
            prop_assert!(is_count_mismatch, "{:?}", result);
        } else if let Ok(accepted) = result {
            let last = original.piece_count() - 1;
            // The true last piece no longer verifies...
            prop_assert!(!accepted.verify_piece(last, piece_of(&bytes, &original, last)));
            // ...nor does the true data cut or padded to the claimed length.
            let claimed_range = tampered.piece_bytes(last);
            let mut forged: Vec<u8> = bytes[claimed_range.start as usize..].to_vec();
            forged.resize((claimed_range.end - claimed_range.start) as usize, filler);
            prop_assert!(!accepted.verify_piece(last, &forged));
            // Every other piece is untouched by the claim and still verifies.
            for piece in 0..last {
                prop_assert!(accepted.verify_piece(piece, piece_of(&bytes, &original, piece)));
            }
        }
    }

    /// Any corrupted byte of any piece is caught, as is a piece cut short, grown, or offered as
    /// another piece; the true piece verifies.
    #[test]
    fn corrupting_any_byte_of_any_piece_is_caught(
        size in 1u64..=24 * PIECE,
        seed in any::<u64>(),
        piece in any::<prop::sample::Index>(),
        offset in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        other_piece in any::<prop::sample::Index>(),
    ) {
        let bytes = data(size, seed);
        let manifest = Manifest::of_bytes(&bytes);
        let geometry = manifest.geometry();
        let count = geometry.piece_count() as usize;
        let piece = piece.index(count) as u64;
        let true_piece = piece_of(&bytes, &geometry, piece);
        prop_assert!(manifest.verify_piece(piece, true_piece));

        let mut corrupt = true_piece.to_vec();
        let at = offset.index(corrupt.len());
        corrupt[at] ^= flip;
        prop_assert!(!manifest.verify_piece(piece, &corrupt));

        let mut short = true_piece.to_vec();
        short.pop();
        prop_assert!(!manifest.verify_piece(piece, &short));
        let mut long = true_piece.to_vec();
        long.push(flip);
        prop_assert!(!manifest.verify_piece(piece, &long));

        let other = other_piece.index(count) as u64;
        if other != piece {
            prop_assert!(!manifest.verify_piece(other, true_piece));
        }
        prop_assert!(!manifest.verify_piece(geometry.piece_count(), true_piece));
        prop_assert!(!manifest.verify_piece(u64::MAX, true_piece));
    }
}

/// Any file size, weighted to the extremes where arithmetic overflows.
fn any_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        0u64..=1 << 20,
        (0u64..=1 << 26).prop_map(|d| u64::MAX - d),
        Just(u64::MAX),
    ]
}

/// A block index or count for a file of `blocks` blocks: near it, small, or anything.
fn block_number(blocks: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        (0u64..=4).prop_map(move |d| blocks.saturating_sub(d)),
        (0u64..=4).prop_map(move |d| blocks.saturating_add(d)),
        0u64..=70,
        any::<u64>(),
        (0u64..=2).prop_map(|d| u64::MAX - d),
    ]
}

fn range_request() -> impl Strategy<Value = (Geometry, u64, u64)> {
    (any_size(), prop::sample::select(valid_piece_sizes())).prop_flat_map(|(size, piece_size)| {
        let geometry = Geometry::new(size, piece_size).unwrap();
        let blocks = geometry.block_count();
        (Just(geometry), block_number(blocks), block_number(blocks))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// `block_bytes` never panics, accepts exactly the non-empty ranges within the file, and
    /// returns the bytes those blocks cover.
    #[test]
    fn block_bytes_is_total_and_exact((geometry, first, count) in range_request()) {
        let size = geometry.size() as u128;
        let (first_wide, count_wide) = (first as u128, count as u128);
        let within = count > 0 && first_wide + count_wide <= geometry.block_count() as u128;
        let got = geometry.block_bytes(first, count);
        prop_assert_eq!(got.is_some(), within, "blocks {} + {}", first, count);
        if let Some(range) = got {
            let block = BLOCK as u128;
            prop_assert_eq!(range.start as u128, first_wide * block);
            prop_assert_eq!(range.end as u128, ((first_wide + count_wide) * block).min(size));
            prop_assert!(range.start < range.end);
            let len = (range.end - range.start) as u128;
            prop_assert!(len <= count_wide * block && len > (count_wide - 1) * block);
        }
    }

    /// Two adjacent block ranges cover exactly the bytes of their union.
    #[test]
    fn adjacent_block_ranges_join(
        (geometry, first, count) in range_request(),
        split in any::<prop::sample::Index>(),
    ) {
        prop_assume!(count >= 2);
        if let Some(whole) = geometry.block_bytes(first, count) {
            let k = 1 + split.index(count as usize - 1) as u64;
            let left = geometry.block_bytes(first, k).unwrap();
            let right = geometry.block_bytes(first + k, count - k).unwrap();
            prop_assert_eq!(left.start, whole.start);
            prop_assert_eq!(left.end, right.start);
            prop_assert_eq!(right.end, whole.end);
        }
    }

    /// A piece's block range and its byte range agree, at any size, for any piece.
    #[test]
    fn pieces_blocks_and_bytes_agree(
        size in any_size(),
        piece_size in prop::sample::select(valid_piece_sizes()),
        (where_, random) in (0u8..3, any::<u64>()),
        run in 1u64..=8,
    ) {
        let geometry = Geometry::new(size, piece_size).unwrap();
        let pieces = geometry.piece_count();
        prop_assume!(pieces > 0);
        // A piece among the first few, among the last few (where ends overflow), or anywhere.
        let piece = match where_ {
            0 => random % pieces.min(4),
            1 => pieces - 1 - random % pieces.min(4),
            _ => random % pieces,
        };
        let bytes = geometry.piece_bytes(piece);
        prop_assert!(bytes.start < bytes.end && bytes.end <= size);
        let blocks = geometry.blocks_of_pieces(piece..piece + 1);
        let via_blocks = geometry.block_bytes(blocks.start, blocks.end - blocks.start);
        prop_assert_eq!(via_blocks, Some(bytes.clone()));
        // A run of pieces maps to the blocks of its first and last piece, clamped to the file.
        let end = piece.saturating_add(run).min(pieces);
        let run_blocks = geometry.blocks_of_pieces(piece..end);
        let last = geometry.piece_bytes(end - 1);
        prop_assert_eq!(
            geometry.block_bytes(run_blocks.start, run_blocks.end - run_blocks.start),
            Some(bytes.start..last.end)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A `GetPiecesResponse` bitfield and piece count as any holder may send them: parsing never
    /// panics, accepts exactly `ceil(pieces / 8)` bytes with the spare bits clear, and what it
    /// accepts reads back bit for bit (piece i is bit 7 - i % 8 of byte i / 8).
    #[test]
    fn any_bitfield_from_the_network_parses_exactly(
        bytes in prop::collection::vec(any::<u8>(), 0..40),
        pieces in prop_oneof![0u64..320, Just(u64::MAX), any::<u64>()],
    ) {
        match Bitfield::from_bytes(&bytes, pieces) {
            Ok(field) => {
                prop_assert_eq!(bytes.len() as u64, pieces.div_ceil(8));
                prop_assert_eq!(field.as_bytes(), &bytes[..]);
                prop_assert_eq!(field.len(), pieces);
                let mut ones = 0;
                for piece in 0..pieces {
                    let bit = bytes[(piece / 8) as usize] >> (7 - piece % 8) & 1 == 1;
                    prop_assert_eq!(field.has(piece), bit);
                    ones += u64::from(bit);
                }
                prop_assert_eq!(field.count(), ones);
                prop_assert_eq!(field.is_full(), ones == pieces);
            }
            Err(BitfieldError::WrongLength { expected, got, .. }) => {
                prop_assert_eq!(expected, pieces.div_ceil(8));
                prop_assert_eq!(got, bytes.len() as u64);
                prop_assert_ne!(got, expected);
            }
            Err(BitfieldError::SpareBits { .. }) => {
                prop_assert_eq!(bytes.len() as u64, pieces.div_ceil(8));
                prop_assert!(pieces % 8 != 0);
            }
        }
    }
}
