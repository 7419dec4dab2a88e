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
            if self
                .lock()
                .get(&name)
                .is_some_and(|f| f.size == size && f.mtime_ns == mtime)
            {
                continue;
            }
            let manifest = match self.cache.lookup(&name, size, mtime) {
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
                        continue;
                    }
                },
            };
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

    /// Moves a complete, verified, fsynced download from `partial` into `files/<name>` without
    /// ever replacing a different file, and starts sharing it. If `files/<name>` already holds the
    /// same content, the partial file is just removed.
    pub(crate) fn adopt(
        &self,
        partial: &Path,
        name: &str,
        manifest: Arc<Manifest>,
    ) -> Result<SharedFile, StoreError> {
        let dest = self.files_dir.join(name);
        // The lock orders concurrent adopts of the same name and keeps a rescan from hashing the
        // new file again.
        let mut shared = self.lock();
        match fs::hard_link(partial, &dest) {
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
        let _ = fs::remove_file(partial);
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
mod tests {
    use super::*;

    #[test]
    fn rescan_shares_regular_files_and_follows_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, created) = Store::open(dir.path()).unwrap();
        assert!(created);
        fs::write(store.files_dir().join("a.txt"), b"alpha").unwrap();
        fs::create_dir(store.files_dir().join("sub")).unwrap();
        let outside = dir.path().join("secret");
        fs::write(&outside, b"secret").unwrap();
        std::os::unix::fs::symlink(&outside, store.files_dir().join("link")).unwrap();
        std::os::unix::fs::symlink(
            store.files_dir().join("a.txt"),
            store.files_dir().join("inner"),
        )
        .unwrap();

        let changes = store.rescan().unwrap();
        let mut names: Vec<_> = changes.added.iter().map(|f| f.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["a.txt", "inner"]);
        assert!(changes.skipped.iter().any(|s| s.contains("link")));
        assert_eq!(
            store.get("a.txt").unwrap().content_id(),
            ContentId::of(b"alpha")
        );

        // Unchanged: nothing to do.
        let again = store.rescan().unwrap();
        assert!(again.added.is_empty() && again.removed.is_empty());

        fs::remove_file(store.files_dir().join("inner")).unwrap();
        fs::write(store.files_dir().join("b"), b"beta").unwrap();
        let changes = store.rescan().unwrap();
        assert_eq!(changes.removed, ["inner"]);
        assert_eq!(changes.added.len(), 1);
        assert_eq!(changes.added[0].name, "b");
    }

    #[test]
    fn files_still_being_written_are_left_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        fs::write(store.files_dir().join("a"), b"first").unwrap();
        store.rescan().unwrap();
        fs::write(store.files_dir().join("a"), b"second, longer").unwrap();
        fs::write(store.files_dir().join("b"), b"half").unwrap();
        fs::write(store.files_dir().join("c"), b"done").unwrap();

        let writing = |name: &str| ["a", "b"].contains(&name);
        let changes = store
            .rescan_except(writing, &CancellationToken::new())
            .unwrap();
        let added: Vec<_> = changes.added.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(added, ["c"]);
        assert!(changes.removed.is_empty(), "{changes:?}");
        assert_eq!(
            store.get("a").unwrap().content_id(),
            ContentId::of(b"first")
        );
        assert!(store.get("b").is_none());

        // Closed: the next rescan takes them.
        let changes = store.rescan().unwrap();
        let mut added: Vec<_> = changes.added.iter().map(|f| f.name.as_str()).collect();
        added.sort();
        assert_eq!(added, ["a", "b"]);
        assert_eq!(
            store.get("a").unwrap().content_id(),
            ContentId::of(b"second, longer")
        );
    }

    #[test]
    fn a_stopped_rescan_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        fs::write(store.files_dir().join("a"), b"alpha").unwrap();
        store.rescan().unwrap();
        fs::remove_file(store.files_dir().join("a")).unwrap();
        fs::write(store.files_dir().join("b"), b"beta").unwrap();
        let stop = CancellationToken::new();
        stop.cancel();
        let changes = store.rescan_except(|_| false, &stop).unwrap();
        assert!(changes.added.is_empty() && changes.removed.is_empty());
        assert!(store.get("a").is_some() && store.get("b").is_none());
        // Hashing itself hears the token.
        let err = hash_file(&store.files_dir().join("b"), 4, 0, &stop).unwrap_err();
        assert_eq!(err.to_string(), "stopped");
    }

    #[test]
    fn a_restart_uses_the_cache_and_a_corrupt_cache_costs_only_a_rehash() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            fs::write(store.files_dir().join("a"), b"alpha").unwrap();
            store.rescan().unwrap();
        }
        let cache = dir.path().join(".p2pshare/hash-cache.json");
        let text = fs::read_to_string(&cache).unwrap();
        assert!(text.contains(&ContentId::of(b"alpha").to_hex()));
        // Poison the cached id: the store must notice and rehash, never trust it.
        let poisoned = text.replace(
            &format!("\"content_id\":\"{}\"", ContentId::of(b"alpha")),
            &format!("\"content_id\":\"{}\"", ContentId::of(b"x")),
        );
        assert_ne!(poisoned, text);
        fs::write(&cache, poisoned).unwrap();
        let (store, created) = Store::open(dir.path()).unwrap();
        assert!(!created);
        store.rescan().unwrap();
        assert_eq!(
            store.get("a").unwrap().content_id(),
            ContentId::of(b"alpha")
        );
    }

    #[test]
    fn adopt_never_replaces_different_content() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        fs::write(store.files_dir().join("f"), b"mine").unwrap();
        store.rescan().unwrap();
        let part = store.partial_dir().join("x.part");
        fs::write(&part, b"theirs").unwrap();
        let err = store
            .adopt(&part, "f", Arc::new(Manifest::of_bytes(b"theirs")))
            .unwrap_err();
        assert!(matches!(err, StoreError::NameTaken(_)));
        assert_eq!(fs::read(store.files_dir().join("f")).unwrap(), b"mine");

        fs::write(&part, b"mine").unwrap();
        store
            .adopt(&part, "f", Arc::new(Manifest::of_bytes(b"mine")))
            .unwrap();
        assert!(!part.exists());

        fs::write(&part, b"new").unwrap();
        let adopted = store
            .adopt(&part, "g", Arc::new(Manifest::of_bytes(b"new")))
            .unwrap();
        assert_eq!(fs::read(&adopted.path).unwrap(), b"new");
        assert!(store.get("g").is_some());
    }
}
