//! `carto server ...`: runs `carto-sql-api`, found beside this binary or on the PATH.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use anyhow::{bail, Result};

const SERVER: &str = "carto-sql-api";

pub fn run(args: Vec<String>) -> Result<()> {
    let Some(server) = find() else {
        bail!(
            "{SERVER} is not installed. Build it from the carto-rs repository with \
             `cargo build --release -p {SERVER}` (then run target/release/{SERVER}, or put it \
             on your PATH) or install it with `cargo install --path crates/{SERVER}`"
        );
    };
    // exec only returns on failure.
    let error = std::process::Command::new(&server).args(args).exec();
    bail!("running {}: {error}", server.display())
}

fn find() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(SERVER)));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(SERVER));
    beside
        .into_iter()
        .chain(on_path)
        .find(|candidate| candidate.is_file())
}
