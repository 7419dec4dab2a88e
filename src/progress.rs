//! Live counters of a transfer, written by the downloader and read by whatever shows progress (the
//! shell's bars and lines, benchmarks). A module of its own so the display code does not depend on
//! the downloader, nor the downloader on the display.

use std::sync::atomic::AtomicU64;

/// Live counters of one download.
#[derive(Debug, Default)]
pub struct Progress {
    /// Total bytes of the file (0 until known).
    pub total: AtomicU64,
    /// Bytes verified so far (including resumed ones).
    pub done: AtomicU64,
}
