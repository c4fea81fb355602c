//! Progress bars for transfers, fed by the SDK's progress callbacks. Sizes in decimal units
//! (kB, MB), as the summaries print them.

use indicatif::{ProgressBar, ProgressFinish, ProgressStyle};

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
    // Dropped unfinished (an interrupted command), the bar is erased, not left on screen.
    let bar = bar.with_finish(ProgressFinish::AndClear);
    let moved = bar.clone();
    let callback = carto::Progress::new(move |update| {
        moved.set_position(update.bytes);
        if update.finished {
            moved.finish_and_clear();
        }
    });
    (Some(bar), Some(callback))
}
