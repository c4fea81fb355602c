//! `carto`: one command for each bulk-data job against CARTO's SQL API. A thin binary over the
//! `carto` SDK: parse, resolve credentials, hand the work to the SDK, report.
// Slicing client text at a byte offset panics inside a multi-byte character: use `get(..)`
// or char-aware code. Tests may slice text they wrote themselves.
#![cfg_attr(not(test), deny(clippy::string_slice))]

mod args;
mod commands;
mod infer;
mod output;
mod profiles;
mod progress;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("carto: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // `carto copy to - | head` is a success, as for any Unix filter.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("carto: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
