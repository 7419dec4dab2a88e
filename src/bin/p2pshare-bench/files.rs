//! The benchmark's files: random data written and flushed before it is measured, and page-cache
//! eviction for cold start-up runs.

use rand::RngCore;
use std::io::Write;
use std::path::Path;

/// Copy buffer of the baseline (both ends) and of writing test data.
pub(crate) const COPY_BUFFER: usize = 1 << 20;
/// Where a peer keeps its hash cache, relative to its directory (see `p2pshare::peer::store`).
pub(crate) const HASH_CACHE: &str = ".p2pshare/hash-cache.json";

/// Writes `size` random bytes to `path` and flushes them to disk.
pub(crate) fn write_random(path: &Path, size: u64) -> std::io::Result<()> {
    let mut file = std::io::BufWriter::with_capacity(COPY_BUFFER, std::fs::File::create(path)?);
    let mut rng = rand::rng();
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        file.write_all(&buf[..n])?;
        left -= n as u64;
    }
    let file = file.into_inner().map_err(|e| e.into_error())?;
    // Written back now, not during a measurement: writeback of a large file just written slows
    // whatever runs next (the first baseline copy ran 4x slower without this).
    if size >= COPY_BUFFER as u64 {
        file.sync_all()?;
    }
    Ok(())
}

/// Drops a file's pages from the page cache (after writing them back), so the next read comes
/// from disk.
pub(crate) fn evict_from_page_cache(path: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    file.sync_all()?;
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    {
        use std::os::fd::AsRawFd;
        extern "C" {
            fn posix_fadvise(fd: i32, offset: i64, len: i64, advice: i32) -> i32;
        }
        const POSIX_FADV_DONTNEED: i32 = 4;
        // SAFETY: a plain syscall wrapper from the C library std links; `file` keeps the
        // descriptor open for the call, and the call only drops clean cached pages.
        let rc = unsafe { posix_fadvise(file.as_raw_fd(), 0, 0, POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pshare::chunking::ContentId;

    #[test]
    fn random_files_have_their_size_and_hash_like_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        // Around the copy buffer, where the write loop and the final sync change behaviour.
        for size in [0, 1, 4095, COPY_BUFFER as u64 - 1, COPY_BUFFER as u64 + 1] {
            let path = dir.path().join(format!("r{size}"));
            write_random(&path, size).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes.len() as u64, size);
            assert_eq!(ContentId::of_file(&path).unwrap(), ContentId::of(&bytes));
        }
    }
}
