//! Progress reports for COPY transfers, e.g. to draw a progress bar.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Which way the data goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `copy_from`: to the server.
    Upload,
    /// `copy_to`: from the server.
    Download,
}

/// How far a transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressUpdate {
    /// Upload or download.
    pub direction: Direction,
    /// Data bytes so far, uncompressed: read from the source (upload) or handed to the
    /// caller (download).
    pub bytes: u64,
    /// Bytes on the wire so far (compressed when gzip is on).
    pub wire_bytes: u64,
    /// Rows, when known: rows encoded by `copy_from_rows`, or the server's count once an
    /// upload is done.
    pub rows: Option<u64>,
    /// True for the last report of a transfer that succeeded.
    pub finished: bool,
}

/// A callback told about a transfer's progress, at most once per chunk sent or received.
///
/// It runs on the task moving the data, so it should be quick (update a counter or a bar).
#[derive(Clone)]
pub struct Progress {
    callback: Arc<dyn Fn(&ProgressUpdate) + Send + Sync>,
}

impl Progress {
    /// A callback.
    pub fn new(callback: impl Fn(&ProgressUpdate) + Send + Sync + 'static) -> Self {
        Progress {
            callback: Arc::new(callback),
        }
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Progress(..)")
    }
}

/// The counters of one transfer, shared by the stages that see its bytes.
#[derive(Debug)]
pub(crate) struct Tracker {
    direction: Direction,
    progress: Option<Progress>,
    bytes: AtomicU64,
    wire_bytes: AtomicU64,
    rows: AtomicU64,
    rows_known: std::sync::atomic::AtomicBool,
}

impl Tracker {
    pub(crate) fn new(direction: Direction, progress: Option<Progress>) -> Arc<Self> {
        Arc::new(Tracker {
            direction,
            progress,
            bytes: AtomicU64::new(0),
            wire_bytes: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            rows_known: Default::default(),
        })
    }

    /// Starts the counts again, for a retried upload that sends its file again.
    pub(crate) fn restart(&self) {
        self.bytes.store(0, Ordering::Relaxed);
        self.wire_bytes.store(0, Ordering::Relaxed);
    }

    pub(crate) fn add_bytes(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_rows(&self, n: u64) {
        self.rows_known.store(true, Ordering::Relaxed);
        self.rows.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts bytes on the wire (compressed, when gzip is on).
    pub(crate) fn add_wire_bytes(&self, n: usize) {
        self.wire_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Tells the callback the counts so far: an upload when a chunk leaves, a download when
    /// it hands data out (not when it arrives: the last chunk is held back).
    pub(crate) fn tick(&self) {
        self.report(false, None);
    }

    pub(crate) fn finish(&self, rows: Option<u64>) {
        self.report(true, rows);
    }

    fn report(&self, finished: bool, rows: Option<u64>) {
        if let Some(progress) = &self.progress {
            let rows = rows.or_else(|| {
                self.rows_known
                    .load(Ordering::Relaxed)
                    .then(|| self.rows.load(Ordering::Relaxed))
            });
            (progress.callback)(&ProgressUpdate {
                direction: self.direction,
                bytes: self.bytes.load(Ordering::Relaxed),
                wire_bytes: self.wire_bytes.load(Ordering::Relaxed),
                rows,
                finished,
            });
        }
    }
}
