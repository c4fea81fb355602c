//! Downloads into files that never leave half an answer under the file's name: the bytes go
//! to a hidden temporary file next to it, renamed over it when complete, and removed when the
//! download fails or its future is dropped. Shared by `COPY TO` and `/sql` exports.

use std::path::{Path, PathBuf};

/// What leaves a file as it was before a download into it, done when the download does not
/// complete: on an error, and also when its future is dropped (a caller's timeout, Ctrl-C),
/// where no code after an `.await` runs.
pub(crate) struct Undo(pub(crate) Option<UndoAction>);

pub(crate) enum UndoAction {
    /// Remove the temporary file.
    Remove(PathBuf),
    /// Cut the appended-to file back to its length before the download.
    Truncate(PathBuf, u64),
}

impl Undo {
    /// The download completed: keep the file.
    pub(crate) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        match self.0.take() {
            Some(UndoAction::Remove(path)) => {
                let _ = std::fs::remove_file(path);
            }
            Some(UndoAction::Truncate(path, len)) => {
                if let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) {
                    let _ = file.set_len(len);
                }
            }
            None => {}
        }
    }
}

/// A fresh name next to `path` (same directory, so the rename cannot cross filesystems).
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "copyto".into());
    let unique = format!(
        ".{name}.{}.{}.part",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    path.with_file_name(unique)
}
