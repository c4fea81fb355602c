//! Progress bars for transfers, fed by the SDK's progress callbacks. Sizes in decimal units
//! (kB, MB), as the summaries print them.

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressFinish, ProgressStyle};

/// The bar on screen, to erase when the command is interrupted: the SDK's tasks that hold
/// its callback (and so the bar) may outlive the command's future.
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Erases the bar on screen, if there is one.
pub fn erase() {
    if let Some(bar) = SHOWN.lock().unwrap_or_else(|e| e.into_inner()).take() {
        bar.finish_and_clear();
    }
}

/// A bar (or spinner, when the size is unknown) on stderr, and the SDK callback that moves it.
/// Both are `None` when bars are off.
pub fn transfer_bar(
    enabled: bool,
    total: Option<u64>,
) -> (Option<ProgressBar>, Option<carto::Progress>) {
    if !enabled {
        return (None, None);
    }
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{bar:40} {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template(
                "{spinner} {decimal_bytes} {decimal_bytes_per_sec} {elapsed}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    // Dropped unfinished, the bar is erased, not left on screen.
    let bar = bar.with_finish(ProgressFinish::AndClear);
    *SHOWN.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
    let moved = bar.clone();
    let callback = carto::Progress::new(move |update| {
        moved.set_position(update.bytes);
        if update.finished {
            moved.finish_and_clear();
        }
    });
    (Some(bar), Some(callback))
}
