//! Who is asking: the user (from the `/user/{name}/` path segment or the `Host` header) and the
//! API key (Basic auth, `api_key`/`map_key` in the query string, or the same in a form body),
//! resolved to the PostgreSQL role the request's statements run as.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequestParts, Path};
use axum::http::{header, request::Parts, StatusCode};
use base64::Engine;

use crate::accounts::{ApiKey, KeyKind, User, DEFAULT_PUBLIC};
use crate::error::ApiError;
use crate::AppState;

/// The user a request is addressed to, and the key material it carries outside its body.
#[derive(Debug, Clone)]
pub struct Addressed {
    /// The resolved user.
    pub user: User,
    basic: Option<(String, String)>,
    query_key: Option<String>,
    identified: Option<Identified>,
}

/// Who a request turned out to be for, filled in by [`Addressed`] as it resolves the user and
/// authenticates, so that a middleware can add `Carto-User`, `Carto-User-Id` and
/// `Vary: Authorization` to whatever answer the handler gives, errors included.
#[derive(Debug, Clone, Default)]
pub struct Identified(Arc<Mutex<Option<Identity>>>);

/// What [`Identified`] holds.
#[derive(Debug, Clone)]
pub struct Identity {
    /// User name.
    pub username: String,
    /// User id.
    pub id: i64,
    /// A key was accepted.
    pub authenticated: bool,
}

impl Identified {
    /// What was found so far.
    pub fn get(&self) -> Option<Identity> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, change: impl FnOnce(&mut Option<Identity>)) {
        change(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// The outcome of authentication: the user and the key (with its role) the request runs as.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user.
    pub user: User,
    /// The key, resolved to its role.
    pub key: ApiKey,
}

impl FromRequestParts<AppState> for Addressed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let params = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| p)
            .unwrap_or_default();
        let username = match params.get("user") {
            Some(user) => user.clone(),
            None => username_from_host(parts)?,
        };
        let user = state
            .accounts
            .user(&username)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::unknown_user(&username))?;
        let query = parts.uri.query().unwrap_or("");
        let query_key = query_param(query, "api_key").or_else(|| query_param(query, "map_key"));
        let identified = parts.extensions.get::<Identified>().cloned();
        if let Some(identified) = &identified {
            identified.update(|slot| {
                *slot = Some(Identity {
                    username: user.username.clone(),
                    id: user.id,
                    authenticated: false,
                })
            });
        }
        Ok(Addressed {
            user,
            basic: basic_credentials(parts),
            query_key,
            identified,
        })
    }
}

impl Addressed {
    /// Authenticates with the key found in the headers, the query string, or (for endpoints
    /// whose body is a form) `body_key`, in that order. No key means the public role.
    pub async fn authenticate(
        self,
        state: &AppState,
        body_key: Option<&str>,
    ) -> Result<Caller, ApiError> {
        let token = match &self.basic {
            Some((name, _)) if *name != self.user.username => {
                return Err(ApiError::forbidden("permission denied"))
            }
            Some((_, password)) => Some(password.as_str()),
            None => self.query_key.as_deref(),
        }
        .or(body_key)
        .filter(|t| !t.is_empty())
        .unwrap_or(DEFAULT_PUBLIC);
        let key = state
            .accounts
            .key(&self.user, token)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(ApiError::unauthorized)?;
        if !key.grants_sql {
            return Err(ApiError::forbidden("forbidden"));
        }
        if let Some(identified) = &self.identified {
            identified.update(|slot| {
                if let Some(identity) = slot {
                    identity.authenticated = true;
                }
            });
        }
        Ok(Caller {
            user: self.user,
            key,
        })
    }
}

impl Caller {
    /// True for the user's master key.
    pub fn is_master(&self) -> bool {
        self.key.kind == KeyKind::Master
    }
}

/// The first label of the `Host` header (port included in what is matched), as upstream's
/// default `^([^\.]+)\.` does.
pub(crate) fn username_from_host(parts: &Parts) -> Result<String, ApiError> {
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.host())
        .unwrap_or("");
    match host.split_once('.') {
        Some((label, _)) if !label.is_empty() => Ok(label.to_string()),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("No username found in hostname '{host}'"),
        )),
    }
}

fn basic_credentials(parts: &Parts) -> Option<(String, String)> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (name, password) = text.split_once(':')?;
    Some((name.to_string(), password.to_string()))
}

/// The first value of `name` in a URL-encoded query string.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded_pairs(query)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Decodes `application/x-www-form-urlencoded` text into pairs, in order.
pub fn form_urlencoded_pairs(text: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(text.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(
            form_urlencoded_pairs("q=COPY+t+TO+STDOUT&filename=%2Ftmp%2Fx&empty="),
            vec![
                ("q".into(), "COPY t TO STDOUT".into()),
                ("filename".into(), "/tmp/x".into()),
                ("empty".into(), "".into()),
            ]
        );
        assert_eq!(
            query_param("a=1&api_key=k%2B1", "api_key").as_deref(),
            Some("k+1")
        );
        assert_eq!(query_param("a=1", "api_key"), None);
    }
}
