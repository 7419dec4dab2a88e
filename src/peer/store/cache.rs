//! The hash cache, `.p2pshare/hash-cache.json`: manifests keyed by name, size and mtime, so that
//! a restart over unchanged files does not rehash them. Every entry is re-verified when used: a
//! corrupt or forged cache costs a rehash, never a wrong answer.

use super::SharedFile;
use crate::chunking::{Geometry, Manifest};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

/// The cache file and its entries in memory.
pub(super) struct HashCache {
    path: PathBuf,
    /// Where the new file is written before it is renamed over the old (same filesystem).
    scratch_dir: PathBuf,
    /// The entries (loaded on first use) and whether they differ from disk. Saved by
    /// [`HashCache::flush`] (each rescan, shutdown), not per download: rewriting the whole JSON
    /// on every small file made per-file costs grow with the folder.
    state: Mutex<(Option<Entries>, bool)>,
}

#[derive(Serialize, Deserialize, Default)]
struct Entries {
    entries: BTreeMap<String, CacheEntry>,
}

#[derive(Serialize, Deserialize, Clone)]
struct CacheEntry {
    size: u64,
    mtime_ns: u128,
    content_id: String,
    piece_size: u64,
    /// Piece hashes, hex, concatenated.
    pieces: String,
}

impl CacheEntry {
    fn of(file: &SharedFile) -> Self {
        CacheEntry {
            size: file.size,
            mtime_ns: file.mtime_ns,
            content_id: file.content_id().to_hex(),
            piece_size: file.manifest.geometry().piece_size() as u64,
            pieces: hex::encode(file.manifest.piece_hashes().concat()),
        }
    }

    /// The manifest, re-verified.
    fn manifest(&self) -> Option<Manifest> {
        let geometry = Geometry::new(self.size, self.piece_size).ok()?;
        let bytes = hex::decode(&self.pieces).ok()?;
        let hashes = bytes.chunks(32).map(<[u8]>::to_vec).collect();
        Manifest::from_parts(self.content_id.parse().ok()?, geometry, hashes).ok()
    }
}

impl std::fmt::Debug for HashCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never waits: a Debug print must not deadlock against a holder of the lock.
        match self.state.try_lock().as_deref() {
            Ok((Some(e), _)) => write!(f, "HashCache({} entries)", e.entries.len()),
            Ok((None, _)) => write!(f, "HashCache(not loaded)"),
            Err(_) => write!(f, "HashCache(busy)"),
        }
    }
}

impl HashCache {
    /// The cache at `path`, loaded when first asked; new versions are written in `scratch_dir`.
    pub(super) fn new(path: PathBuf, scratch_dir: PathBuf) -> Self {
        HashCache {
            path,
            scratch_dir,
            state: Mutex::new((None, false)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<Entries>, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<T>(&self, f: impl FnOnce(&mut Entries, &mut bool) -> T) -> T {
        let mut guard = self.lock();
        let (entries, changed) = &mut *guard;
        f(entries.get_or_insert_with(|| self.load()), changed)
    }

    /// The manifest cached for `name` at this size and mtime, if any and if it verifies.
    pub(super) fn lookup(&self, name: &str, size: u64, mtime_ns: u128) -> Option<Manifest> {
        let entry = self.with(|cache, _| {
            cache
                .entries
                .get(name)
                .filter(|c| c.size == size && c.mtime_ns == mtime_ns)
                .cloned()
        });
        entry.as_ref().and_then(CacheEntry::manifest)
    }

    /// Records a file's manifest (saved at the next flush).
    pub(super) fn remember(&self, file: &SharedFile) {
        self.with(|cache, changed| {
            cache
                .entries
                .insert(file.name.clone(), CacheEntry::of(file));
            *changed = true;
        });
    }

    /// Forgets every name for which `keep` fails.
    pub(super) fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.with(|cache, changed| {
            let before = cache.entries.len();
            cache.entries.retain(|name, _| keep(name));
            *changed |= cache.entries.len() != before;
        });
    }

    /// Saves the cache if it changed since the last save.
    pub(super) fn flush(&self) {
        let mut guard = self.lock();
        if let (Some(cache), true) = (&guard.0, guard.1) {
            self.save(cache);
            guard.1 = false;
        }
    }

    fn load(&self) -> Entries {
        fs::read(&self.path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn save(&self, cache: &Entries) {
        let result = (|| -> io::Result<()> {
            let tmp = tempfile::NamedTempFile::new_in(&self.scratch_dir)?;
            let mut writer = io::BufWriter::with_capacity(1 << 16, tmp);
            serde_json::to_writer(&mut writer, cache)?;
            let tmp = writer.into_inner().map_err(|e| e.into_error())?;
            tmp.persist(&self.path).map_err(|e| e.error)?;
            Ok(())
        })();
        if let Err(e) = result {
            // Only a cost: the next start rehashes.
            tracing::warn!(error = %e, "could not save the hash cache");
        }
    }
}
