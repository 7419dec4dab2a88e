//! The folder watcher: keeps what the tracker hears in line with `files/` while the peer runs.
//!
//! Fast path: the kernel reports each change to `files/` (inotify, through `notify`). A file
//! closed after writing, renamed in or out, removed, or linked in wakes the loop; after a short
//! delay that gathers a burst of events, the store rescans and the new files are announced, the
//! vanished ones withdrawn.
//! Files with writes not yet closed are left out of those rescans, so a file is never announced
//! half-written.
//!
//! Safety net: a full rescan every `rescan_interval` catches what no event reports (changes made
//! on another host of a network filesystem, an overflowed event queue, a watcher that could not
//! be created because of the inotify limits). It also shares a file left open for writing but
//! untouched for a whole interval, as the plain periodic rescan always did.
//!
//! Content changed in place with its size and mtime put back raises no event a rescan could act
//! on; the Peer service finds it when a piece it reads no longer matches, and the store's
//! "suspect" signal wakes the loop, whose rescan hashes the file again and announces its new
//! content (or withdraws it), well within one rescan interval.
//!
//! Non-goal: reacting to each event by itself. Events only say "look again"; the store's rescan
//! (size and mtime against what is shared, the hash cache, hashing that fails if the file
//! changes meanwhile) stays the one place that decides what is shared.

use super::store::ScanChanges;
use super::PeerNode;
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long after the first event of a burst the rescan runs: a copy of many files is then
/// announced in a few rescans, not one per file, and the 1 s promise keeps room for hashing and
/// the tracker call.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Watches the node's `files/` until its shutdown token is cancelled, announcing and withdrawing
/// files as they come and go. The watch is in place when this returns: every change made after
/// it is seen.
pub(super) fn spawn(node: Arc<PeerNode>) -> JoinHandle<()> {
    let folder = node.store().files_dir().to_path_buf();
    let events = Arc::new(Events::default());
    let watcher = match start_watcher(&folder, &events) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                "cannot watch {} for changes ({}); rescanning it every {:?} instead",
                folder.display(),
                describe(&e),
                node.config().rescan_interval,
            );
            None
        }
    };
    tokio::spawn(watch_loop(node, folder, events, watcher))
}

async fn watch_loop(
    node: Arc<PeerNode>,
    folder: PathBuf,
    events: Arc<Events>,
    mut watcher: Option<RecommendedWatcher>,
) {
    let interval = node.config().rescan_interval;
    // A file completed between the start-up scan and the watch being in place has no event of
    // its own: look once more now.
    events.mark_dirty();
    let mut next_full = Instant::now() + interval;
    loop {
        let full = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next_full) => true,
            _ = events.wake.notified() => false,
            _ = node.store().suspected().notified() => false,
        };
        if full {
            next_full = Instant::now() + interval;
            if watcher.is_none() {
                // The limit may have been raised, or the folder recreated.
                if let Ok(w) = start_watcher(&folder, &events) {
                    tracing::info!("watching {} for changes again", folder.display());
                    watcher = Some(w);
                }
            }
        } else {
            // Later events of the burst only add to what this pass will find.
            tokio::select! {
                _ = node.shutdown.cancelled() => return,
                _ = tokio::time::sleep(DEBOUNCE) => {}
            }
        }
        let batch = events.take(Instant::now(), interval);
        if batch.folder_lost && watcher.take().is_some() {
            tracing::debug!("{} moved or removed: no longer watched", folder.display());
        }
        if !(full || batch.dirty || node.store().has_suspects()) {
            continue;
        }
        let (scanner, seen) = (node.clone(), events.clone());
        let stop = node.shutdown.clone();
        // Asked per file as the scan reaches it, not once before: a file created meanwhile is
        // seen as being written.
        let scan = tokio::task::spawn_blocking(move || {
            scanner
                .store()
                .rescan_except(|name| seen.is_writing(name), &stop)
        });
        let changes = tokio::select! {
            // The scan sees the token too and ends at its next read.
            _ = node.shutdown.cancelled() => return,
            scan = scan => match scan {
                Ok(Ok(changes)) => changes,
                Ok(Err(e)) => {
                    tracing::warn!("rescan failed: {e}");
                    continue;
                }
                Err(_) => continue,
            },
        };
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = publish(&node, &changes) => {}
        }
    }
}

/// Tells the tracker what a rescan found.
async fn publish(node: &PeerNode, changes: &ScanChanges) {
    for file in &changes.added {
        tracing::info!(file = %file.name, "now sharing");
        if let Err(e) = node.announce(file).await {
            tracing::debug!("announce of {} deferred: {e}", file.name);
        }
    }
    for name in &changes.removed {
        tracing::info!(file = %name, "no longer shared");
        if let Err(e) = node.tracker().withdraw(name).await {
            tracing::debug!("withdraw of {name} deferred: {e}");
        }
    }
}

/// Watches `folder` (not its subfolders: they are not shared), feeding `events`.
fn start_watcher(folder: &Path, events: &Arc<Events>) -> notify::Result<RecommendedWatcher> {
    let sink = events.clone();
    // Event paths are the watched path joined with a name, made absolute as notify does.
    let watched = std::path::absolute(folder)?;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let wake = match event {
            Ok(event) => sink.record(&event, &watched, arrived_complete),
            Err(e) => {
                tracing::warn!("watching {}: {e}; rescanning it", watched.display());
                sink.lose_track()
            }
        };
        if wake {
            sink.wake.notify_one();
        }
    })?;
    watcher.watch(folder, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// The watcher's error, with the way out when it is the inotify limits.
fn describe(e: &notify::Error) -> String {
    let limit = match &e.kind {
        notify::ErrorKind::MaxFilesWatch => true,
        // EMFILE: no inotify instance left (fs.inotify.max_user_instances).
        notify::ErrorKind::Io(io) => io.raw_os_error() == Some(24),
        _ => false,
    };
    if limit {
        format!("{e}: raise fs.inotify.max_user_instances or fs.inotify.max_user_watches")
    } else {
        e.to_string()
    }
}

/// Whether a just-created entry arrived complete, so that no write or close will follow: a
/// symlink, or a hard link (a finished download is linked into `files/`).
fn arrived_complete(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink() || m.nlink() > 1)
}

/// What the watcher has reported, shared between its thread and the loop.
#[derive(Default)]
struct Events {
    seen: Mutex<Seen>,
    /// Woken for events that call for a rescan (not for every write of a file being copied).
    wake: Notify,
}

/// The loop's view of the folder since it last looked.
#[derive(Default, Debug)]
struct Seen {
    /// Something changed that a rescan should pick up.
    dirty: bool,
    /// The watched folder itself was moved or removed: the watch is dead.
    folder_lost: bool,
    /// Files with writes not yet closed, and when the last write was seen.
    writing: HashMap<String, Instant>,
}

/// What one pass of the loop works from.
struct Batch {
    dirty: bool,
    folder_lost: bool,
}

impl Events {
    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mark_dirty(&self) {
        self.lock().dirty = true;
        self.wake.notify_one();
    }

    /// Events were lost (queue overflow, read error): rescan everything, and forget which
    /// files were being written, since their closes may be among the lost events.
    fn lose_track(&self) -> bool {
        let mut seen = self.lock();
        seen.writing.clear();
        seen.dirty = true;
        true
    }

    fn record(
        &self,
        event: &notify::Event,
        folder: &Path,
        arrived_complete: impl Fn(&Path) -> bool,
    ) -> bool {
        self.lock()
            .record(event, folder, Instant::now(), arrived_complete)
    }

    /// Whether `name` has writes not closed yet: the rescan leaves it as it is.
    fn is_writing(&self, name: &str) -> bool {
        self.lock().writing.contains_key(name)
    }

    fn take(&self, now: Instant, max_quiet: Duration) -> Batch {
        let mut seen = self.lock();
        // A file left open but untouched for a whole interval is shared after all, as the
        // periodic rescan always did.
        seen.writing
            .retain(|_, last| now.saturating_duration_since(*last) < max_quiet);
        Batch {
            dirty: std::mem::take(&mut seen.dirty),
            folder_lost: std::mem::take(&mut seen.folder_lost),
        }
    }
}

impl Seen {
    /// Folds one event in. Returns whether the loop should wake for it.
    fn record(
        &mut self,
        event: &notify::Event,
        folder: &Path,
        now: Instant,
        arrived_complete: impl Fn(&Path) -> bool,
    ) -> bool {
        if event.need_rescan() {
            self.writing.clear();
            self.dirty = true;
            return true;
        }
        let was_dirty = self.dirty;
        for path in &event.paths {
            if path.parent() != Some(folder) {
                // Only the folder itself has another path; a removal or rename of it kills the
                // watch (its other events, like attribute changes, do not matter).
                if matches!(
                    event.kind,
                    EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                ) {
                    self.folder_lost = true;
                    self.dirty = true;
                }
                continue;
            }
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                // Not shareable, but the rescan reports it.
                self.dirty = true;
                continue;
            };
            match event.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Name(_))
                | EventKind::Remove(_) => {
                    self.writing.remove(name);
                    self.dirty = true;
                }
                // Opens and reads, the store's hashing and the server's included.
                EventKind::Access(_) => {}
                // Subfolders are not shared.
                EventKind::Create(CreateKind::Folder) => {}
                EventKind::Create(_) if arrived_complete(path) => self.dirty = true,
                // Opened for writing: wait for the close.
                EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)) => {
                    self.writing.insert(name.to_string(), now);
                }
                // Metadata (permissions, times) can change what may be shared.
                EventKind::Modify(_) | EventKind::Any | EventKind::Other => self.dirty = true,
            }
        }
        (self.dirty && !was_dirty) || self.folder_lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{DataChange, MetadataKind, RemoveKind, RenameMode};
    use notify::Event;

    fn folder() -> PathBuf {
        PathBuf::from("/peer/files")
    }

    fn event(kind: EventKind, name: &str) -> Event {
        Event::new(kind).add_path(folder().join(name))
    }

    fn record(seen: &mut Seen, kind: EventKind, name: &str) -> bool {
        seen.record(&event(kind, name), &folder(), Instant::now(), |_| false)
    }

    const CLOSE_WRITE: EventKind = EventKind::Access(AccessKind::Close(AccessMode::Write));
    const WRITE: EventKind = EventKind::Modify(ModifyKind::Data(DataChange::Any));
    const CREATE: EventKind = EventKind::Create(CreateKind::File);

    #[test]
    fn a_file_being_written_waits_for_its_close() {
        let mut seen = Seen::default();
        assert!(!record(&mut seen, CREATE, "big"));
        assert!(!record(&mut seen, WRITE, "big"));
        assert!(!seen.dirty);
        assert!(seen.writing.contains_key("big"));
        assert!(record(&mut seen, CLOSE_WRITE, "big"));
        assert!(seen.dirty && seen.writing.is_empty());
        // Already dirty: a second close needs no second wake-up.
        assert!(!record(&mut seen, CLOSE_WRITE, "other"));
    }

    #[test]
    fn renames_removals_links_and_metadata_call_for_a_rescan() {
        for kind in [
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
        ] {
            let mut seen = Seen::default();
            seen.writing.insert("f".into(), Instant::now());
            assert!(record(&mut seen, kind, "f"), "{kind:?}");
            assert!(seen.dirty, "{kind:?}");
            if !matches!(kind, EventKind::Modify(ModifyKind::Metadata(_))) {
                assert!(seen.writing.is_empty(), "{kind:?}");
            }
        }
        // A link arrives complete: nothing to wait for.
        let mut seen = Seen::default();
        let linked = seen.record(&event(CREATE, "l"), &folder(), Instant::now(), |_| true);
        assert!(linked && seen.dirty && seen.writing.is_empty());
    }

    #[test]
    fn reads_and_subfolders_are_ignored() {
        let mut seen = Seen::default();
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Create(CreateKind::Folder),
        ] {
            assert!(!record(&mut seen, kind, "f"), "{kind:?}");
        }
        assert!(!seen.dirty && seen.writing.is_empty());
    }

    #[test]
    fn an_overflow_forgets_the_writers_and_rescans() {
        let mut seen = Seen::default();
        record(&mut seen, WRITE, "f");
        let overflow = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert!(seen.record(&overflow, &folder(), Instant::now(), |_| false));
        assert!(seen.dirty && seen.writing.is_empty());
    }

    #[test]
    fn the_folder_going_away_loses_the_watch() {
        let mut seen = Seen::default();
        let gone = Event::new(EventKind::Remove(RemoveKind::Folder)).add_path(folder());
        assert!(seen.record(&gone, &folder(), Instant::now(), |_| false));
        assert!(seen.folder_lost && seen.dirty);
        // Its attribute changes are not a loss.
        let mut seen = Seen::default();
        let touched = Event::new(EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)))
            .add_path(folder());
        assert!(!seen.record(&touched, &folder(), Instant::now(), |_| false));
        assert!(!seen.folder_lost);
    }

    #[test]
    fn a_writer_quiet_for_a_whole_interval_is_scanned_after_all() {
        let events = Events::default();
        let start = Instant::now();
        events
            .lock()
            .record(&event(WRITE, "open"), &folder(), start, |_| false);
        let batch = events.take(start + Duration::from_secs(1), Duration::from_secs(30));
        assert!(events.is_writing("open"));
        assert!(!batch.dirty);
        events.take(start + Duration::from_secs(30), Duration::from_secs(30));
        assert!(!events.is_writing("open"));
    }
}
