//! `carto profile add|list|remove`.

use anyhow::{anyhow, bail, Result};
use serde_json::json;

use crate::args::{Global, ProfileCommand};
use crate::output::Output;
use crate::profiles::{Profile, Profiles};

pub fn run(global: &Global, output: Output, command: ProfileCommand) -> Result<()> {
    let mut profiles = Profiles::load()?;
    match command {
        ProfileCommand::Add { name } => {
            let (Some(base_url), Some(api_key)) = (&global.base_url, &global.api_key) else {
                bail!("`carto profile add {name}` needs --base-url URL and --api-key KEY");
            };
            // Check the URL now rather than at first use.
            crate::profiles::credentials(base_url, api_key.clone())?;
            profiles.insert(
                &name,
                Profile {
                    base_url: base_url.clone(),
                    api_key: api_key.clone(),
                },
            );
            profiles.save()?;
            output.result(
                &format!(
                    "saved profile '{name}' in {}",
                    crate::profiles::path()?.display()
                ),
                json!({ "profile": name, "base_url": base_url }),
                false,
            );
        }
        ProfileCommand::List => {
            for (name, base_url) in profiles.list() {
                output.result(
                    &format!("{name}\t{base_url}"),
                    json!({ "profile": name, "base_url": base_url }),
                    false,
                );
            }
        }
        ProfileCommand::Remove { name } => {
            if !profiles.remove(&name) {
                return Err(anyhow!("no profile named '{name}'"));
            }
            profiles.save()?;
            output.result(
                &format!("removed profile '{name}'"),
                json!({ "removed": name }),
                false,
            );
        }
    }
    Ok(())
}
