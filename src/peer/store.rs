//! A peer's directory: the shared folder `files/`, the hash cache and partial downloads.
//!
//! Layout under the peer's root (`<PEER_ID>/`):
//! ```text
//! files/                     shared: every regular file here is offered to the swarm
//! .p2pshare/hash-cache.json  manifests keyed by name, size and mtime: restarts do not rehash
//! .p2pshare/partial/         downloads in progress (<content id>.part + .done); never in files/
//! download_times.csv         rows appended by `bench`
//! ```

mod cache;
mod growing;

pub(crate) use growing::{GrowingFile, GrowingFiles};

use crate::chunking::{ContentId, Manifest};
use crate::names::validate_file_name;
use cache::HashCache;
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The folder cannot be created or read.
    #[error("cannot use shared folder {path}: {source}")]
    Folder {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file in the folder cannot be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A different file of the same name is already shared: it is never overwritten.
    #[error("files/{0} already exists with different content; it was not overwritten (remove or rename it, then retry)")]
    NameTaken(String),
}

/// A file this peer shares.
#[derive(Clone, Debug)]
pub struct SharedFile {
    /// Name inside `files/`.
    pub name: String,
    /// Full path.
    pub path: PathBuf,
    /// Size when hashed.
    pub size: u64,
    /// Modification time when hashed (nanoseconds since the epoch).
    pub mtime_ns: u128,
    /// Verified description of its content.
    pub manifest: Arc<Manifest>,
}

impl SharedFile {
    /// Its content id.
    pub fn content_id(&self) -> ContentId {
        self.manifest.content_id()
    }
}

/// What a rescan found.
#[derive(Debug, Default)]
pub struct ScanChanges {
    /// Files new or changed since the last scan (now shared with their new content).
    pub added: Vec<SharedFile>,
    /// Names that disappeared.
    pub removed: Vec<String>,
    /// Entries skipped, with why (unsafe names, symlinks out of the folder, unreadable files).
    pub skipped: Vec<String>,
    /// Bytes read and hashed (0 when every file was known or in the hash cache).
    pub hashed_bytes: u64,
}

/// The peer's directory.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    files_dir: PathBuf,
    partial_dir: PathBuf,
    shared: Mutex<BTreeMap<String, SharedFile>>,
    cache: HashCache,
    /// Downloads in progress whose verified pieces are served (partial holder).
    growing: GrowingFiles,
    /// Shared files found not to match their manifest when served (changed in place, even with
    /// size and mtime put back): the next rescan hashes them again, whatever their size and mtime
    /// say. At most one entry per shared file.
    suspects: Mutex<HashSet<String>>,
    /// Woken when a file becomes a suspect, so the watcher rescans now rather than at its next
    /// full pass.
    suspected: tokio::sync::Notify,
}

fn mtime_ns(meta: &fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

impl Store {
    /// Opens (creating what is missing) the directory of a peer rooted at `root`. Returns the
    /// store and whether `files/` had to be created.
    pub fn open(root: &Path) -> Result<(Store, bool), StoreError> {
        let files_dir = root.join("files");
        let created = !files_dir.is_dir();
        let state_dir = root.join(".p2pshare");
        let partial_dir = state_dir.join("partial");
        for dir in [&files_dir, &partial_dir] {
            fs::create_dir_all(dir).map_err(|source| StoreError::Folder {
                path: dir.clone(),
                source,
            })?;
        }
        fs::read_dir(&files_dir).map_err(|source| StoreError::Folder {
            path: files_dir.clone(),
            source,
        })?;
        Ok((
            Store {
                root: root.to_path_buf(),
                files_dir,
                cache: HashCache::new(state_dir.join("hash-cache.json"), partial_dir.clone()),
                partial_dir,
                shared: Mutex::new(BTreeMap::new()),
                growing: GrowingFiles::default(),
                suspects: Mutex::default(),
                suspected: tokio::sync::Notify::new(),
            },
            created,
        ))
    }

    /// Files being downloaded whose verified pieces this peer serves.
    pub(crate) fn growing(&self) -> &GrowingFiles {
        &self.growing
    }

    /// The peer's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The shared folder.
    pub fn files_dir(&self) -> &Path {
        &self.files_dir
    }

    /// Where partial downloads live.
    pub fn partial_dir(&self) -> &Path {
        &self.partial_dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SharedFile>> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every shared file, by name.
    pub fn list(&self) -> Vec<SharedFile> {
        self.lock().values().cloned().collect()
    }

    /// A shared file by name.
    pub fn get(&self, name: &str) -> Option<SharedFile> {
        self.lock().get(name).cloned()
    }

    /// The Peer service read `name` and found it no longer holds `content_id`: unless the name is
    /// shared with other content by now (or not at all), the next rescan hashes it again, and
    /// [`Store::suspected`] wakes whoever runs rescans.
    pub(crate) fn content_changed(&self, name: &str, content_id: ContentId) {
        if self.get(name).is_none_or(|f| f.content_id() != content_id) {
            return;
        }
        let new = self.lock_suspects().insert(name.to_string());
        if new {
            self.suspected.notify_one();
        }
    }

    /// Woken when a shared file is found changed (see [`Store::content_changed`]).
    pub(crate) fn suspected(&self) -> &tokio::sync::Notify {
        &self.suspected
    }

    /// True if some shared file waits to be hashed again.
    pub(crate) fn has_suspects(&self) -> bool {
        !self.lock_suspects().is_empty()
    }

    fn lock_suspects(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.suspects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A shared file with this content (any name).
    pub fn by_content(&self, content_id: &ContentId) -> Option<SharedFile> {
        self.lock()
            .values()
            .find(|f| f.content_id() == *content_id)
            .cloned()
    }

    /// Brings the shared set in line with `files/`: hashes new or changed files (or takes their
    /// manifest from the cache when name, size and mtime match), drops vanished ones. Blocking.
    pub fn rescan(&self) -> Result<ScanChanges, StoreError> {
        self.rescan_except(|_| false, &CancellationToken::new())
    }

    /// [`Store::rescan`], leaving the files for which `unsettled` holds as they are, shared or
    /// not: they are still being written, and hashing them now could share a half-written file.
    /// Once `stop` is cancelled it returns what it has done so far (and removes nothing), so a
    /// rescan hashing a large file does not hold up the node's shutdown.
    ///
    /// Files found changed when served are hashed again (not taken from the table or the cache):
    /// new content is reported as added (to be announced again), and a file that cannot be hashed
    /// is no longer shared (reported removed). One that still matches is left as it was.
    pub(crate) fn rescan_except(
        &self,
        unsettled: impl Fn(&str) -> bool,
        stop: &CancellationToken,
    ) -> Result<ScanChanges, StoreError> {
        let mut changes = ScanChanges::default();
        let entries = fs::read_dir(&self.files_dir).map_err(|source| StoreError::Folder {
            path: self.files_dir.clone(),
            source,
        })?;
        let files_dir_real = fs::canonicalize(&self.files_dir).unwrap_or(self.files_dir.clone());
        // A set, not a list: the removal pass below asks it once per shared file.
        let mut seen = HashSet::new();
        let suspects = self.lock_suspects().clone();
        for entry in entries.flatten() {
            if stop.is_cancelled() {
                return Ok(changes);
            }
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                changes
                    .skipped
                    .push(format!("{:?}: name is not UTF-8", entry.file_name()));
                continue;
            };
            if let Err(e) = validate_file_name(&name) {
                changes.skipped.push(format!("{name:?}: {e}"));
                continue;
            }
            if unsettled(&name) {
                seen.insert(name);
                continue;
            }
            let path = entry.path();
            let Some(meta) = self.shareable_metadata(&path, &files_dir_real, &name, &mut changes)
            else {
                continue;
            };
            seen.insert(name.clone());
            let (size, mtime) = (meta.len(), mtime_ns(&meta));
            let suspect = suspects.contains(&name);
            let known = self.lock().get(&name).cloned();
            if !suspect
                && known
                    .as_ref()
                    .is_some_and(|f| f.size == size && f.mtime_ns == mtime)
            {
                continue;
            }
            let cached = (!suspect)
                .then(|| self.cache.lookup(&name, size, mtime))
                .flatten();
            let manifest = match cached {
                Some(m) => m,
                None => match hash_file(&path, size, mtime, stop) {
                    Ok(m) => {
                        changes.hashed_bytes += size;
                        m
                    }
                    Err(_) if stop.is_cancelled() => return Ok(changes),
                    Err(e) => {
                        // Changing under us or unreadable: try again at the next scan.
                        changes.skipped.push(format!("{name:?}: {e}"));
                        seen.remove(&name);
                        self.lock_suspects().remove(&name);
                        continue;
                    }
                },
            };
            if suspect {
                self.lock_suspects().remove(&name);
                let same = known
                    .is_some_and(|f| f.content_id() == manifest.content_id() && f.size == size);
                if same {
                    // It matches what was announced after all (a read raced a write that was
                    // undone): nothing to tell anyone.
                    continue;
                }
                tracing::warn!(file = %name, "changed in place since it was shared: announcing its new content");
            }
            let file = SharedFile {
                name: name.clone(),
                path,
                size,
                mtime_ns: mtime,
                manifest: Arc::new(manifest),
            };
            self.cache.remember(&file);
            self.lock().insert(name, file.clone());
            changes.added.push(file);
        }
        {
            let mut shared = self.lock();
            let gone: Vec<String> = shared
                .keys()
                .filter(|n| !seen.contains(*n))
                .cloned()
                .collect();
            for name in gone {
                shared.remove(&name);
                changes.removed.push(name);
            }
        }
        // Suspects that vanished need no second look.
        self.lock_suspects().retain(|name| seen.contains(name));
        if !changes.removed.is_empty() {
            self.cache.retain(|name| seen.contains(name));
        }
        self.cache.flush();
        Ok(changes)
    }

    /// Metadata of a directory entry if it is a regular file that may be shared: symlinks are
    /// followed only when they resolve inside the shared folder.
    fn shareable_metadata(
        &self,
        path: &Path,
        files_dir_real: &Path,
        name: &str,
        changes: &mut ScanChanges,
    ) -> Option<fs::Metadata> {
        let link_meta = fs::symlink_metadata(path).ok()?;
        if link_meta.file_type().is_symlink() {
            let inside = fs::canonicalize(path)
                .map(|target| target.starts_with(files_dir_real))
                .unwrap_or(false);
            if !inside {
                changes.skipped.push(format!(
                    "{name:?}: symlink pointing outside files/ is not shared"
                ));
                return None;
            }
        }
        let meta = fs::metadata(path).ok()?;
        meta.is_file().then_some(meta)
    }

    /// Saves the hash cache if it changed since the last save.
    pub(crate) fn flush_cache(&self) {
        self.cache.flush();
    }

    /// Moves a complete, verified, fsynced download from `partial` into `files/<name>` (see
    /// [`Store::adopt_linked`]), then removes `partial`.
    #[cfg(test)]
    pub(crate) fn adopt(
        &self,
        partial: &Path,
        name: &str,
        manifest: Arc<Manifest>,
    ) -> Result<SharedFile, StoreError> {
        let adopted = self.adopt_linked(name, manifest, |dest| fs::hard_link(partial, dest))?;
        let _ = fs::remove_file(partial);
        Ok(adopted)
    }

    /// Puts a complete, verified, fsynced download into `files/<name>` with `link` (which makes
    /// its argument a new name of the download's file), without ever replacing a different file,
    /// and starts sharing it. If `files/<name>` already holds the same content, nothing is linked
    /// and that file is shared. The download's own name, if it has one, is the caller's to remove.
    pub(crate) fn adopt_linked(
        &self,
        name: &str,
        manifest: Arc<Manifest>,
        link: impl FnOnce(&Path) -> io::Result<()>,
    ) -> Result<SharedFile, StoreError> {
        let dest = self.files_dir.join(name);
        // The lock orders concurrent adopts of the same name and keeps a rescan from hashing the
        // new file again.
        let mut shared = self.lock();
        match link(&dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let same = shared
                    .get(name)
                    .is_some_and(|f| f.content_id() == manifest.content_id())
                    || fs::metadata(&dest).is_ok_and(|m| m.len() == manifest.geometry().size())
                        && hash_file(
                            &dest,
                            manifest.geometry().size(),
                            0,
                            &CancellationToken::new(),
                        )
                        .is_ok_and(|m| m.content_id() == manifest.content_id());
                if !same {
                    return Err(StoreError::NameTaken(name.to_string()));
                }
            }
            Err(source) => return Err(StoreError::File { path: dest, source }),
        }
        let meta = fs::metadata(&dest).map_err(|source| StoreError::File {
            path: dest.clone(),
            source,
        })?;
        let file = SharedFile {
            name: name.to_string(),
            path: dest,
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
            manifest,
        };
        shared.insert(name.to_string(), file.clone());
        drop(shared);
        self.cache.remember(&file);
        Ok(file)
    }
}

/// Hashes a file into a manifest, failing if it changes (size or mtime) while being read, or
/// once `stop` is cancelled. `expected_mtime` 0 skips the mtime check.
fn hash_file(
    path: &Path,
    size: u64,
    expected_mtime: u128,
    stop: &CancellationToken,
) -> io::Result<Manifest> {
    let file = StopAware {
        inner: fs::File::open(path)?,
        stop,
    };
    let reader = io::BufReader::with_capacity(1 << 20, file.take(size + 1));
    let manifest = Manifest::from_reader(reader, size)?;
    let meta = fs::metadata(path)?;
    if meta.len() != size || (expected_mtime != 0 && mtime_ns(&meta) != expected_mtime) {
        return Err(io::Error::other("file changed while being hashed"));
    }
    Ok(manifest)
}

/// A reader that fails once `stop` is cancelled (checked once per read, i.e. per MiB when
/// buffered), so hashing a large file ends with the node.
struct StopAware<'a, R> {
    inner: R,
    stop: &'a CancellationToken,
}

impl<R: Read> Read for StopAware<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.is_cancelled() {
            // Not `Interrupted`: `read_exact` would retry that forever.
            return Err(io::Error::other("stopped"));
        }
        self.inner.read(buf)
    }
}

/// Seconds since the epoch, for CSV rows and logs.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests;
