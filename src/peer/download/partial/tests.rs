//! Unit tests of the partial file: reservation, the record, resumes, unnamed small files.

use super::*;
use std::os::unix::fs::MetadataExt;

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn the_file_is_reserved_and_the_record_exists_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(20 * 64 * 1024);
    let manifest = Manifest::of_bytes(&bytes);
    let cancel = CancellationToken::new();
    let (partial, done) = Partial::open(dir.path(), &manifest, true, &cancel)
        .unwrap()
        .unwrap();
    assert!(done.iter().all(|d| !d));
    assert!(allocated(&partial.path) >= bytes.len() as u64);
    let record = dir.path().join(format!("{}.done", manifest.content_id()));
    assert_eq!(std::fs::read(&record).unwrap(), vec![0u8; 20]);
    let inode = std::fs::metadata(&record).unwrap().ino();
    let mut flags = vec![false; 20];
    flags[3] = true;
    partial.save_record(&flags);
    // Rewritten in place: the same file, nothing beside it.
    assert_eq!(std::fs::metadata(&record).unwrap().ino(), inode);
    assert_eq!(std::fs::read(&record).unwrap()[3], 1);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn a_file_of_one_piece_has_no_record_and_resumes_from_its_piece() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(4096);
    let manifest = Manifest::of_bytes(&bytes);
    let cancel = CancellationToken::new();
    let (partial, done) = Partial::open(dir.path(), &manifest, true, &cancel)
        .unwrap()
        .unwrap();
    assert_eq!(done, vec![false]);
    assert!(partial.is_resumable());
    // Unnamed: nothing in the folder (no record either), reached through its descriptor.
    assert!(partial.is_unnamed());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert_eq!(std::fs::metadata(partial.open_path()).unwrap().len(), 4096);
    // Nothing verified: nothing kept, and a file at its path is not its to remove.
    std::fs::write(&partial.path, b"another's").unwrap();
    assert_eq!(partial.keep_verified(&[false]), Kept::Nothing);
    assert_eq!(std::fs::read(&partial.path).unwrap(), b"another's");
    std::fs::remove_file(&partial.path).unwrap();

    // Written and verified, then stopped (say the disk filled while moving it into place):
    // kept, and the next attempt finds the piece by hashing it.
    let (partial, _) = Partial::open(dir.path(), &manifest, true, &cancel)
        .unwrap()
        .unwrap();
    partial.file.write_all_at(&bytes, 0).unwrap();
    assert!(matches!(
        partial.keep_verified(&[true]),
        Kept::Pieces {
            pieces: 1,
            total: 1,
            ..
        }
    ));
    // Named now, with its content.
    assert!(!partial.is_unnamed());
    assert_eq!(std::fs::read(&partial.path).unwrap(), bytes);
    drop(partial);
    let (_, done) = Partial::open(dir.path(), &manifest, true, &cancel)
        .unwrap()
        .unwrap();
    assert_eq!(done, vec![true]);

    // A partial file whose piece does not hash right counts for nothing.
    let path = dir.path().join(format!("{}.part", manifest.content_id()));
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    let (_, done) = Partial::open(dir.path(), &manifest, true, &cancel)
        .unwrap()
        .unwrap();
    assert_eq!(done, vec![false]);
}

#[test]
fn a_stopped_download_keeps_only_its_verified_pieces_and_resumes_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(20 * 64 * 1024);
    let manifest = Manifest::of_bytes(&bytes);
    let g = manifest.geometry();
    assert_eq!(g.piece_count(), 20);
    let cancel = CancellationToken::new();
    // An older version's leftover is cleaned up.
    let stray = dir
        .path()
        .join(format!("{}.done.tmp", manifest.content_id()));
    std::fs::write(&stray, b"x").unwrap();
    let (partial, _) = Partial::open(dir.path(), &manifest, true, &cancel)
        .unwrap()
        .unwrap();
    assert!(!stray.exists());
    let mut done = vec![false; 20];
    for p in [0, 1, 2, 7] {
        let r = g.piece_bytes(p);
        partial
            .file
            .write_all_at(&bytes[r.start as usize..r.end as usize], r.start)
            .unwrap();
        done[p as usize] = true;
    }
    // Piece 9 was written but never verified: its space goes back too.
    partial.file.write_all_at(&[1; 4096], 9 * 65536).unwrap();
    let kept = partial.keep_verified(&done);
    assert_eq!(
        kept,
        Kept::Pieces {
            path: partial.path.clone(),
            pieces: 4,
            total: 20,
            bytes: 4 * 65536
        }
    );
    assert!(allocated(&partial.path) <= 4 * 65536 + 8192);
    drop(partial);
    let (_, resumed) = Partial::open(dir.path(), &manifest, true, &cancel)
        .unwrap()
        .unwrap();
    assert_eq!(resumed, done);
}

#[test]
fn nothing_verified_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = Manifest::of_bytes(&data(3 * 64 * 1024));
    let cancel = CancellationToken::new();
    let (partial, done) = Partial::open(dir.path(), &manifest, true, &cancel)
        .unwrap()
        .unwrap();
    assert_eq!(partial.keep_verified(&done), Kept::Nothing);
    let (scratch, done) = Partial::open(dir.path(), &manifest, false, &cancel)
        .unwrap()
        .unwrap();
    assert_eq!(scratch.keep_verified(&done), Kept::Scratch);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // An empty file needs no space.
    let empty = Manifest::of_bytes(b"");
    assert!(Partial::open(dir.path(), &empty, true, &cancel)
        .unwrap()
        .is_some());
}

#[test]
fn a_small_file_is_prepared_before_its_manifest_and_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(4096);
    let manifest = Manifest::of_bytes(&bytes);
    let id = manifest.content_id();
    let cancel = CancellationToken::new();
    // Larger than any piece can be small: not prepared.
    assert!(Early::prepare(dir.path(), id, u64::from(MIN_PIECE_SIZE) + 1).is_none());

    // Fresh: unnamed and reserved, nothing in the folder; taken over as it is.
    let early = Early::prepare(dir.path(), id, 4096).unwrap();
    assert!(early.is_fresh());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let (partial, done) = Partial::open_prepared(dir.path(), &manifest, true, &cancel, Some(early))
        .unwrap()
        .unwrap();
    assert_eq!(done, vec![false]);
    assert!(partial.is_unnamed());
    assert!(allocated(&partial.open_path()) >= 4096);
    partial.file.write_all_at(&bytes, 0).unwrap();
    assert!(matches!(
        partial.keep_verified(&[true]),
        Kept::Pieces { .. }
    ));
    drop(partial);

    // Kept by that attempt: opened early, its piece checked once the manifest is in.
    let early = Early::prepare(dir.path(), id, 4096).unwrap();
    assert!(!early.is_fresh());
    let (partial, done) = Partial::open_prepared(dir.path(), &manifest, true, &cancel, Some(early))
        .unwrap()
        .unwrap();
    assert_eq!(done, vec![true]);
    assert!(!partial.is_unnamed());
    partial.remove();

    // Prepared for another size (the tracker's word, which the manifest contradicts): dropped.
    let early = Early::prepare(dir.path(), id, 100).unwrap();
    let (partial, done) = Partial::open_prepared(dir.path(), &manifest, true, &cancel, Some(early))
        .unwrap()
        .unwrap();
    assert_eq!(done, vec![false]);
    assert_eq!(std::fs::metadata(partial.open_path()).unwrap().len(), 4096);
}
