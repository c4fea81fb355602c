//! `carto`: one command for each bulk-data job against CARTO's SQL API. A thin binary over the
//! `carto` SDK: parse, resolve credentials, hand the work to the SDK, report.
// Slicing client text at a byte offset panics inside a multi-byte character: use `get(..)`
// or char-aware code. Tests may slice text they wrote themselves.
#![cfg_attr(not(test), deny(clippy::string_slice))]

mod args;
mod commands;
mod ewkb;
mod geojson;
mod gpkg;
mod infer;
mod interrupt;
mod output;
mod profiles;
mod progress;
mod rows;

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            output::error(&format!("carto: {error}"));
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(async {
        // The command's future is dropped at the end of this statement when the signal wins:
        // what it was doing stops where it was (its bar erased, an upload aborted) before
        // anything is undone or said.
        let finished = tokio::select! {
            result = commands::run(cli) => Ok(result),
            status = interrupt::signalled() => Err(status),
        };
        match finished {
            Ok(Ok(())) => ExitCode::SUCCESS,
            // `carto copy to - | head` is a success, as for any Unix filter.
            Ok(Err(error)) if is_broken_pipe(&error) => ExitCode::SUCCESS,
            Ok(Err(error)) => {
                output::error(&format!("carto: {error:#}"));
                if let Some(hint) = commands::hint(&error) {
                    output::error(&format!("carto: {hint}"));
                }
                ExitCode::FAILURE
            }
            Err(status) => {
                progress::erase();
                output::error(&format!("carto: {}", interrupt::finish().await));
                ExitCode::from(status)
            }
        }
    });
    // A read of stdin may still block a thread of the runtime: do not wait for it.
    runtime.shutdown_background();
    code
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
