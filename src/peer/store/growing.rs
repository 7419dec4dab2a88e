//! Files this peer is still downloading and already serves: the partial-holder half of a swarm.
//!
//! A resumable download registers its partial file here as soon as it knows the manifest; each
//! piece is marked once it has been verified *and* written, so the Peer service never serves a
//! byte that was not checked against the content id. The download unregisters it when the file
//! has moved into `files/` (from then on it is served from there) or when it stops.

use crate::chunking::{Bitfield, ContentId, Manifest, PieceIndex};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A file being downloaded, served piece by verified piece.
#[derive(Debug)]
pub(crate) struct GrowingFile {
    /// The name it will have in `files/`.
    pub(crate) name: String,
    /// Its verified manifest.
    pub(crate) manifest: Arc<Manifest>,
    /// The partial file under `.p2pshare/partial/`.
    pub(crate) path: PathBuf,
    have: Mutex<Bitfield>,
}

impl GrowingFile {
    /// A growing file that has the pieces set in `have`.
    pub(crate) fn new(
        name: String,
        manifest: Arc<Manifest>,
        path: PathBuf,
        have: Bitfield,
    ) -> Self {
        GrowingFile {
            name,
            manifest,
            path,
            have: Mutex::new(have),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bitfield> {
        self.have.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Its content id.
    pub(crate) fn content_id(&self) -> ContentId {
        self.manifest.content_id()
    }

    /// Records a piece verified and written.
    pub(crate) fn mark(&self, piece: PieceIndex) {
        self.lock().set(piece);
    }

    /// The pieces it has now.
    pub(crate) fn have(&self) -> Bitfield {
        self.lock().clone()
    }

    /// True if every piece in `pieces` is verified.
    pub(crate) fn has_all(&self, pieces: std::ops::Range<PieceIndex>) -> bool {
        let have = self.lock();
        pieces.into_iter().all(|p| have.has(p))
    }
}

/// The growing files of a peer, by content id.
#[derive(Debug, Default)]
pub(crate) struct GrowingFiles(Mutex<HashMap<ContentId, Arc<GrowingFile>>>);

impl GrowingFiles {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ContentId, Arc<GrowingFile>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves `file` (replacing another growing file of the same content, whose download ended).
    pub(crate) fn insert(&self, file: Arc<GrowingFile>) {
        self.lock().insert(file.content_id(), file);
    }

    /// Stops serving `file` (only that one: a newer download of the same content stays).
    pub(crate) fn remove(&self, file: &Arc<GrowingFile>) {
        let mut files = self.lock();
        if files
            .get(&file.content_id())
            .is_some_and(|f| Arc::ptr_eq(f, file))
        {
            files.remove(&file.content_id());
        }
    }

    /// The growing file with this content, if any.
    pub(crate) fn get(&self, content_id: &ContentId) -> Option<Arc<GrowingFile>> {
        self.lock().get(content_id).cloned()
    }

    /// The growing file called `name`, if any.
    pub(crate) fn named(&self, name: &str) -> Option<Arc<GrowingFile>> {
        self.lock().values().find(|f| f.name == name).cloned()
    }

    /// Every growing file.
    pub(crate) fn list(&self) -> Vec<Arc<GrowingFile>> {
        self.lock().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_verified_pieces_count_and_removal_is_by_identity() {
        let data = vec![7u8; 3 * 64 * 1024];
        let manifest = Arc::new(Manifest::of_bytes(&data));
        let pieces = manifest.geometry().piece_count();
        let file = Arc::new(GrowingFile::new(
            "f".into(),
            manifest.clone(),
            "p".into(),
            Bitfield::empty(pieces),
        ));
        assert!(!file.has_all(0..1));
        file.mark(0);
        assert!(file.has_all(0..1));
        assert!(!file.has_all(0..pieces));
        let files = GrowingFiles::default();
        files.insert(file.clone());
        assert!(files.named("f").is_some());
        let newer = Arc::new(GrowingFile::new(
            "f".into(),
            manifest.clone(),
            "q".into(),
            Bitfield::empty(pieces),
        ));
        files.insert(newer.clone());
        files.remove(&file);
        assert!(files.get(&manifest.content_id()).is_some(), "newer stays");
        files.remove(&newer);
        assert!(files.get(&manifest.content_id()).is_none());
    }
}
