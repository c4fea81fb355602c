//! Saved credentials (`profiles.toml` in the user's config dir, owner-only permissions) and
//! the rule that picks the credentials of a run.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::args::Global;

/// One saved account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    /// Account base URL.
    pub base_url: String,
    /// API key.
    pub api_key: String,
}

/// The profiles file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Profiles {
    #[serde(default)]
    profiles: BTreeMap<String, Profile>,
}

/// Where profiles live: `$CARTO_CONFIG_DIR/profiles.toml`, else `<config dir>/carto/`.
pub fn path() -> Result<PathBuf> {
    let dir = match std::env::var_os("CARTO_CONFIG_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => dirs::config_dir()
            .ok_or_else(|| anyhow!("cannot find your config directory; set CARTO_CONFIG_DIR"))?
            .join("carto"),
    };
    Ok(dir.join("profiles.toml"))
}

impl Profiles {
    /// Reads the profiles file (empty if there is none).
    pub fn load() -> Result<Self> {
        let path = path()?;
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                toml::from_str(&text).with_context(|| format!("reading {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Profiles::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the file with mode 600 (it holds keys), replacing it atomically.
    pub fn save(&self) -> Result<()> {
        let path = path()?;
        let dir = path.parent().unwrap_or_else(|| std::path::Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let temp = path.with_extension("toml.tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .with_context(|| format!("writing {}", temp.display()))?;
        // A pre-existing temp file keeps its mode; make sure.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(toml::to_string(self)?.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The profile called `name`.
    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    /// Adds or replaces a profile.
    pub fn insert(&mut self, name: &str, profile: Profile) {
        self.profiles.insert(name.to_string(), profile);
    }

    /// Removes a profile; false if there was none.
    pub fn remove(&mut self, name: &str) -> bool {
        self.profiles.remove(name).is_some()
    }

    /// Profile names and base URLs.
    pub fn list(&self) -> impl Iterator<Item = (&str, &str)> {
        self.profiles
            .iter()
            .map(|(name, p)| (name.as_str(), p.base_url.as_str()))
    }
}

const HOW_TO: &str = "pass --base-url and --api-key, set CARTO_API_URL and CARTO_API_KEY, or \
                      use --profile NAME (save one with `carto profile add NAME --base-url URL \
                      --api-key KEY`)";

/// The credentials of this run: flags, else `--profile`, else the environment, else the
/// profile named `default`.
pub fn resolve(global: &Global) -> Result<carto::Credentials> {
    let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (url, key) = match (&global.base_url, &global.api_key, &global.profile) {
        (Some(url), Some(key), _) => (url.clone(), key.clone()),
        // A URL alone could send a key saved for one account to another host.
        (Some(_), None, _) => bail!("--base-url needs --api-key: {HOW_TO}"),
        // A key alone goes to the URL configured for this run.
        (None, Some(key), None) => match from_env("CARTO_API_URL") {
            Some(url) => (url, key.clone()),
            None => match Profiles::load()?.get("default") {
                Some(profile) => (profile.base_url.clone(), key.clone()),
                None => bail!(
                    "--api-key without a URL: give --base-url, set CARTO_API_URL or save a \
                     profile named 'default'"
                ),
            },
        },
        (None, key, Some(name)) => {
            let profile = Profiles::load()?
                .get(name)
                .cloned()
                .ok_or_else(|| anyhow!("no profile named '{name}' (see `carto profile list`)"))?;
            (profile.base_url, key.clone().unwrap_or(profile.api_key))
        }
        (None, None, None) => match (from_env("CARTO_API_URL"), from_env("CARTO_API_KEY")) {
            (Some(url), Some(key)) => (url, key),
            (None, None) => match Profiles::load()?.get("default") {
                Some(profile) => (profile.base_url.clone(), profile.api_key.clone()),
                None => bail!("no credentials: {HOW_TO}"),
            },
            _ => bail!("CARTO_API_URL and CARTO_API_KEY go together: {HOW_TO}"),
        },
    };
    credentials(&url, key)
}

/// Credentials, refusing a base URL that names the API rather than the account (the API's
/// paths are added to it, so the server would answer a bare 404).
pub fn credentials(url: &str, key: impl Into<String>) -> Result<carto::Credentials> {
    if let Some(account) = account_url(url) {
        bail!(
            "the base URL {url} points at the API: give the account's URL, without /api/v2 \
             (try {account})"
        );
    }
    Ok(carto::Credentials::new(url, key)?)
}

/// For a URL that goes as far as `/api/v1` or `/api/v2`, the account URL before it.
fn account_url(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url.trim()).ok()?;
    let path = parsed.path();
    let at = ["/api/v1", "/api/v2"].iter().find_map(|api| {
        path.match_indices(api)
            .map(|(i, _)| i)
            .find(|&i| matches!(path.as_bytes().get(i + api.len()), None | Some(b'/')))
    })?;
    let mut account = parsed.clone();
    account.set_path(&format!("{}/", path.get(..at)?));
    account.set_query(None);
    Some(account.to_string())
}

/// Credentials for `--from`/`--to` of a transfer: a profile name, or a URL with its key.
pub fn account(name_or_url: &str, key: Option<&str>) -> Result<carto::Credentials> {
    if name_or_url.contains("://") {
        let key = key.ok_or_else(|| {
            anyhow!("{name_or_url} is a URL: give its key with --from-api-key/--to-api-key")
        })?;
        return credentials(name_or_url, key);
    }
    let profiles = Profiles::load()?;
    let profile = profiles
        .get(name_or_url)
        .ok_or_else(|| anyhow!("no profile named '{name_or_url}' (see `carto profile list`)"))?;
    credentials(&profile.base_url, key.unwrap_or(&profile.api_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_are_pointed_to_their_account() {
        for (given, account) in [
            (
                "http://127.0.0.1:8080/user/alice/api/v2",
                Some("http://127.0.0.1:8080/user/alice/"),
            ),
            (
                "https://alice.carto.com/api/v2/sql?q=1",
                Some("https://alice.carto.com/"),
            ),
            ("http://h/user/a/api/v1/", Some("http://h/user/a/")),
            ("https://alice.carto.com/", None),
            ("http://h/user/api/v2x/", None),
        ] {
            assert_eq!(account_url(given).as_deref(), account, "{given}");
        }
    }
}
