//! Where the account is and the key that opens it.

use std::fmt;

use url::Url;

use crate::error::{Error, Result};

/// An account's base URL and API key.
///
/// The base URL is the account's root, in either of CARTO's styles:
/// cloud `https://{user}.carto.com/` or on-premise `https://host/user/{user}/` (a trailing
/// slash is optional). The user name is derived from it as carto-python does (the
/// `/user/{name}/` path segment, else the first label of the host without a leading `www.`)
/// and can be overridden with [`Credentials::with_username`].
///
/// The key is sent as carto-python sends it (the `api_key` parameter). It is never logged,
/// and `Debug` shows it redacted.
#[derive(Clone)]
pub struct Credentials {
    base_url: Url,
    api_key: String,
    username: String,
}

impl Credentials {
    /// Credentials for the account at `base_url` with `api_key`.
    ///
    /// Fails on a URL that is not http(s) or from which no user name can be derived (e.g.
    /// `https://wrongurl` or `http://127.0.0.1/` with no `/user/{name}/` segment). A plain
    /// `http` URL is accepted with a `tracing` warning, since the key would travel in clear.
    pub fn new(base_url: &str, api_key: impl Into<String>) -> Result<Self> {
        let mut url = Url::parse(base_url.trim())
            .map_err(|e| Error::config(format!("base URL '{base_url}' is not a URL: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" => tracing::warn!(
                host = url.host_str().unwrap_or(""),
                "the base URL is plain http: the API key will travel unencrypted"
            ),
            other => {
                return Err(Error::config(format!(
                    "base URL '{base_url}' has scheme '{other}'; use https (or http)"
                )))
            }
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        url.set_query(None);
        url.set_fragment(None);
        let username = username_from_url(&url).ok_or_else(|| {
            Error::config(format!(
                "could not find a user name in the base URL '{base_url}': use \
                 https://{{user}}.carto.com/ or https://host/user/{{user}}/"
            ))
        })?;
        Ok(Credentials {
            base_url: url,
            api_key: api_key.into(),
            username,
        })
    }

    /// Credentials from the environment: `CARTO_API_URL` (the base URL) and `CARTO_API_KEY`.
    pub fn from_env() -> Result<Self> {
        let url = std::env::var("CARTO_API_URL")
            .map_err(|_| Error::config("CARTO_API_URL is not set (the account's base URL)"))?;
        let key = std::env::var("CARTO_API_KEY")
            .map_err(|_| Error::config("CARTO_API_KEY is not set"))?;
        Credentials::new(&url, key)
    }

    /// Uses `username` instead of the one derived from the URL.
    pub fn with_username(mut self, username: impl Into<String>) -> Self {
        self.username = username.into();
        self
    }

    /// The user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The base URL, always ending with `/`.
    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

    pub(crate) fn api_key(&self) -> &str {
        &self.api_key
    }

    /// `api/v2/{path}` under the base URL.
    pub(crate) fn endpoint(&self, path: &str) -> Result<Url> {
        self.base_url
            .join(&format!("api/v2/{path}"))
            .map_err(|e| Error::config(format!("cannot build the URL of {path}: {e}")))
    }
}

/// The `/user/{name}/` path segment, else the host's first label (without `www.`) if the host
/// is a name with at least two labels.
fn username_from_url(url: &Url) -> Option<String> {
    let mut segments = url.path_segments()?;
    if segments.next() == Some("user") {
        if let Some(name) = segments.next().filter(|s| !s.is_empty()) {
            // The segment may be percent-encoded.
            return Some(
                percent_encoding::percent_decode_str(name)
                    .decode_utf8_lossy()
                    .into_owned(),
            );
        }
    }
    match url.host()? {
        url::Host::Domain(host) => {
            let host = host.strip_prefix("www.").unwrap_or(host);
            let (first, rest) = host.split_once('.')?;
            (!first.is_empty() && !rest.is_empty()).then(|| first.to_string())
        }
        _ => None,
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("base_url", &self.base_url.as_str())
            .field("username", &self.username)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_of(url: &str) -> Result<String> {
        Credentials::new(url, "k").map(|c| c.username().to_string())
    }

    #[test]
    fn both_url_styles_with_or_without_slash() {
        assert_eq!(user_of("https://alice.carto.com/").unwrap(), "alice");
        assert_eq!(user_of("https://alice.carto.com").unwrap(), "alice");
        assert_eq!(user_of("https://www.alice.carto.com/").unwrap(), "alice");
        assert_eq!(user_of("https://org.carto.com/user/bob/").unwrap(), "bob");
        assert_eq!(user_of("http://127.0.0.1:8080/user/bob").unwrap(), "bob");
        assert_eq!(user_of("https://h.example/user/b%C3%B8b/").unwrap(), "bøb");
        let c = Credentials::new("https://h.example/user/bob", "k").unwrap();
        assert_eq!(c.base_url().as_str(), "https://h.example/user/bob/");
        assert_eq!(
            c.endpoint("sql/copyfrom").unwrap().as_str(),
            "https://h.example/user/bob/api/v2/sql/copyfrom"
        );
    }

    #[test]
    fn urls_without_a_user_are_refused_clearly() {
        for url in [
            "https://wrongurl",
            "http://127.0.0.1:8080/",
            "ftp://a.b/",
            "not a url",
        ] {
            let error = user_of(url).unwrap_err();
            assert!(error.is_config(), "{url}: {error}");
        }
        assert!(user_of("https://wrongurl")
            .unwrap_err()
            .to_string()
            .contains("could not find a user name"));
    }

    #[test]
    fn username_can_be_overridden() {
        let c = Credentials::new("https://alice.carto.com/", "k")
            .unwrap()
            .with_username("carol");
        assert_eq!(c.username(), "carol");
    }

    #[test]
    fn debug_hides_the_key() {
        let c = Credentials::new("https://alice.carto.com/", "s3cr3t-key").unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr3t-key"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}

#[cfg(test)]
mod warning_tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_http_warns_without_showing_the_key() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            Credentials::new("https://alice.carto.com/", "key-one").unwrap();
            assert!(captured.0.lock().unwrap().is_empty(), "https is quiet");
            Credentials::new("http://alice.example.com/", "key-two").unwrap();
        });
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains("WARN") && log.contains("unencrypted"), "{log}");
        assert!(!log.contains("key-two"), "{log}");
    }

    #[test]
    fn from_env_reads_url_and_key() {
        // The only test touching these variables.
        std::env::set_var("CARTO_API_URL", "https://org.example.com/user/envuser");
        std::env::set_var("CARTO_API_KEY", "env-key");
        let c = Credentials::from_env().unwrap();
        assert_eq!(c.username(), "envuser");
        assert_eq!(c.api_key(), "env-key");
        std::env::remove_var("CARTO_API_KEY");
        assert!(Credentials::from_env().unwrap_err().is_config());
    }
}
