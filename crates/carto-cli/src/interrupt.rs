//! Ctrl-C and SIGTERM. `main` races the command against the signal; when the signal wins,
//! the command's future is dropped (which aborts an upload, so the server commits nothing,
//! and removes a half-written download), then what the command registered here is undone
//! (e.g. the staging table of an import) and its note is printed, with the exit status shells
//! give a process killed by that signal (130 for SIGINT, 143 for SIGTERM).

use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::signal::unix::{signal, SignalKind};

/// Work that undoes what an interrupted command left on the server.
pub type Undo = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// What to say and do if the run is interrupted now.
struct OnInterrupt {
    note: String,
    undo: Option<Undo>,
}

static ON_INTERRUPT: Mutex<Option<OnInterrupt>> = Mutex::new(None);

/// Longest wait for the undo work once interrupted: a person pressed Ctrl-C.
const UNDO_TIMEOUT: Duration = Duration::from_secs(10);

/// Sets what an interruption from now on reports (`interrupted — {note}`) and undoes.
pub fn on_interrupt(note: impl Into<String>, undo: Option<Undo>) {
    let state = OnInterrupt {
        note: note.into(),
        undo,
    };
    *ON_INTERRUPT.lock().unwrap_or_else(|e| e.into_inner()) = Some(state);
}

/// Undo work that runs one SQL statement with `client`.
pub fn run_sql(client: carto::Client, sql: String) -> Undo {
    Box::new(move || {
        Box::pin(async move {
            let _ = client.sql().send(&sql).await;
        })
    })
}

/// Waits for SIGINT or SIGTERM; the exit status to end with. Never returns when the handlers
/// cannot be installed (the signals then end the process as they do by default).
pub async fn signalled() -> u8 {
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => 130,
        _ = terminate.recv() => 143,
    }
}

/// Runs the registered undo work (bounded by a timeout); the line to print.
pub async fn finish() -> String {
    let state = ON_INTERRUPT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let Some(state) = state else {
        return "interrupted".into();
    };
    if let Some(undo) = state.undo {
        let _ = tokio::time::timeout(UNDO_TIMEOUT, undo()).await;
    }
    format!("interrupted — {}", state.note)
}
