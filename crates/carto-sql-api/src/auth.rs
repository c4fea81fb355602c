//! Who is asking: the user (from the `/user/{name}/` path segment or the `Host` header) and the
//! API key (Basic auth, `api_key`/`map_key` in the query string, or the same in a form body),
//! resolved to the PostgreSQL role the request's statements run as.
//!
//! One identity path for every endpoint: the [`identify`] layer resolves the user once, before
//! the rate limit and the handler; the handler's [`Caller`] extractor (or [`CallerWith`], for
//! keys sent in a form body) adds the key. The answer says itself whether a key was accepted
//! ([`KeyAccepted`]), so the identity headers come from the handler's outcome, not from state
//! shared with it.

use std::collections::HashMap;

use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{header, request::Parts, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine;
use percent_encoding::{percent_decode, percent_decode_str};

use crate::accounts::{ApiKey, KeyKind, User, DEFAULT_PUBLIC};
use crate::error::ApiError;
use crate::AppState;

/// Layer on the routes that address a user: resolves the user from the `/user/{name}/` path
/// segment or the `Host` header (unknown: 404; no name: 400), hands it to the layers and
/// handler inside as a request extension, and adds `Carto-User`, `Carto-User-Id` (spec §1) and,
/// when the answer carries [`KeyAccepted`], `Vary: Authorization` (spec §2) to whatever they
/// answer, errors and rate-limit refusals included.
pub(crate) async fn identify(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let user = match addressed_user(&mut parts, &state).await {
        Ok(user) => user,
        Err(error) => return error.into_response(),
    };
    parts.extensions.insert(user.clone());
    let mut response = next.run(Request::from_parts(parts, body)).await;
    let key_accepted = response.extensions().get::<KeyAccepted>().is_some();
    let headers = response.headers_mut();
    if let Ok(name) = HeaderValue::from_str(&user.username) {
        headers.insert("carto-user", name);
    }
    headers.insert("carto-user-id", HeaderValue::from(user.id));
    if key_accepted {
        headers.append(header::VARY, HeaderValue::from_static("Authorization"));
    }
    response
}

/// The user named by the path segment or the `Host` header, looked up in the accounts.
async fn addressed_user(parts: &mut Parts, state: &AppState) -> Result<User, ApiError> {
    let params = Path::<HashMap<String, String>>::from_request_parts(parts, state)
        .await
        .map(|Path(p)| p)
        .unwrap_or_default();
    let username = match params.get("user") {
        // A name no user can have is answered without asking the database.
        Some(user) if !could_be_username(user) => return Err(ApiError::unknown_user(user)),
        Some(user) => user.clone(),
        None => username_from_host(parts)?,
    };
    state
        .accounts
        .user(&username)
        .await?
        .ok_or_else(|| ApiError::unknown_user(&username))
}

/// Marks an answer given after the request's key was accepted: [`identify`] then adds
/// `Vary: Authorization`. Handlers add it with [`Caller::answer`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyAccepted;

/// Who a request runs as: the user it is addressed to and its key, resolved to the key's kind
/// and PostgreSQL role. As an extractor it takes the key from Basic auth or the query string
/// (`api_key`, then `map_key`); no key means the public role. Only routes behind [`identify`]
/// can extract it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user.
    pub user: User,
    /// The key, resolved to its kind and role.
    pub key: ApiKey,
}

impl Caller {
    /// True for the user's master key.
    pub fn is_master(&self) -> bool {
        self.key.kind == KeyKind::Master
    }

    /// The handler's `outcome`, marked as answered to an authenticated caller.
    pub(crate) fn answer(&self, outcome: impl IntoResponse) -> Response {
        (Extension(KeyAccepted), outcome).into_response()
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Credentials::of(parts)?.authenticate(state, None).await
    }
}

/// A part of a request read from its body that may carry the key (`api_key`, then `map_key`,
/// in a form or JSON body: spec §2's third source).
pub(crate) trait BodyKey {
    /// The key the body names, if any.
    fn body_key(&self) -> Option<&str>;
}

/// The body-aware [`Caller`]: reads `B` from the body first, then authenticates with the key
/// of the headers or query string, else `B`'s.
pub(crate) struct CallerWith<B>(pub Caller, pub B);

impl<B> FromRequest<AppState> for CallerWith<B>
where
    B: FromRequest<AppState, Rejection = ApiError> + BodyKey + Send,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let credentials = Credentials::of(&parts)?;
        let read = B::from_request(Request::from_parts(parts, body), state).await?;
        let caller = credentials.authenticate(state, read.body_key()).await?;
        Ok(CallerWith(caller, read))
    }
}

/// The user [`identify`] resolved and the key material found outside the body.
struct Credentials {
    user: User,
    basic: Option<(String, String)>,
    query_key: Option<String>,
}

impl Credentials {
    fn of(parts: &Parts) -> Result<Self, ApiError> {
        let user = parts
            .extensions
            .get::<User>()
            .cloned()
            .ok_or_else(|| ApiError::internal("a route that names a user lacks `identify`"))?;
        let query = parts.uri.query().unwrap_or("");
        Ok(Credentials {
            user,
            basic: basic_credentials(parts),
            query_key: query_param(query, "api_key").or_else(|| query_param(query, "map_key")),
        })
    }

    /// Authenticates with the key found in the headers, the query string, or `body_key`, in
    /// that order (spec §2). No key means the public role.
    async fn authenticate(
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
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        if !key.grants_sql {
            return Err(ApiError::forbidden("forbidden"));
        }
        Ok(Caller {
            user: self.user,
            key,
        })
    }
}

/// The first label of the `Host` header (port included in what is matched), as upstream's
/// default `^([^\.]+)\.` does. A label no user can have is the unknown-user 404 at once.
fn username_from_host(parts: &Parts) -> Result<String, ApiError> {
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.host())
        .unwrap_or("");
    match host.split_once('.') {
        Some((label, _)) if could_be_username(label) => Ok(label.to_string()),
        Some((label, _)) if !label.is_empty() => Err(ApiError::unknown_user(label)),
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

/// True when `name` is one a user can have (the rule `Accounts::create_user` enforces: 1 to 40
/// lowercase ASCII letters, digits, `-` or `_`, starting with a letter or digit). Anything else
/// is unknown without a database lookup, and never reaches PostgreSQL.
pub fn could_be_username(name: &str) -> bool {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_';
    name.len() <= 40
        && name.bytes().all(allowed)
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

/// The user segment of a path-style URL (`/user/{name}/...`), percent-decoded (invalid UTF-8
/// shown as U+FFFD), or `None` for other paths.
pub fn user_in_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/user/")?;
    let segment = rest.split('/').next().unwrap_or(rest);
    Some(percent_decode_str(segment).decode_utf8_lossy().into_owned())
}

/// Decodes `application/x-www-form-urlencoded` bytes strictly: text that is not UTF-8 once
/// decoded, or a NUL byte anywhere (PostgreSQL refuses it in text, and it must never cut a
/// statement short), is a 400 naming the parameter, where [`form_urlencoded_pairs`] would
/// silently replace or keep it.
pub fn decode_form(bytes: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    let decode = |part: &[u8]| -> Option<String> {
        // `+` is a space in forms; an escaped plus (`%2B`) stays a plus.
        let spaced: Vec<u8> = part
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        String::from_utf8(percent_decode(&spaced).collect()).ok()
    };
    let mut pairs = Vec::new();
    for pair in bytes.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (raw_name, raw_value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => pair.split_at(at),
            None => (pair, &b""[..]),
        };
        let raw_value = raw_value.get(1..).unwrap_or_default();
        let name = decode(raw_name).ok_or_else(|| {
            ApiError::bad_request("Invalid request: a parameter name is not valid UTF-8")
        })?;
        let value = decode(raw_value).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid request: parameter '{name}' is not valid UTF-8"
            ))
        })?;
        refuse_nul(&name, &value)?;
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// 400 when a parameter's name or value holds a NUL byte.
pub fn refuse_nul(name: &str, value: &str) -> Result<(), ApiError> {
    if name.contains('\0') || value.contains('\0') {
        return Err(ApiError::bad_request(format!(
            "Invalid request: parameter '{}' contains a NUL byte",
            name.escape_default()
        )));
    }
    Ok(())
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

    #[test]
    fn strict_form_decoding() {
        assert_eq!(
            decode_form(b"q=COPY+t+TO+STDOUT&k=a%2Bb&flag&=v&&").unwrap(),
            vec![
                ("q".into(), "COPY t TO STDOUT".into()),
                ("k".into(), "a+b".into()),
                ("flag".into(), "".into()),
                ("".into(), "v".into()),
            ]
        );
        let error = decode_form(b"q=%FF").unwrap_err();
        assert_eq!(
            error.message(),
            "Invalid request: parameter 'q' is not valid UTF-8"
        );
        let error = decode_form(b"q=select%00").unwrap_err();
        assert_eq!(
            error.message(),
            "Invalid request: parameter 'q' contains a NUL byte"
        );
        assert!(decode_form(b"a%00=1").is_err());
        assert!(decode_form(b"%C3=1").is_err());
    }

    #[test]
    fn user_names_and_paths() {
        for ok in ["alice", "a", "team-1", "x_y", "0a"] {
            assert!(could_be_username(ok), "{ok}");
        }
        for bad in [
            "",
            "Alice",
            "-a",
            "_a",
            "a.b",
            "a b",
            "b\u{0}",
            "bé",
            &"a".repeat(41),
        ] {
            assert!(!could_be_username(bad), "{bad}");
        }
        assert_eq!(
            user_in_path("/user/bob%00/api/v2/sql").as_deref(),
            Some("bob\u{0}")
        );
        assert_eq!(user_in_path("/user/%FF/api").as_deref(), Some("\u{FFFD}"));
        assert_eq!(user_in_path("/user/"), Some(String::new()));
        assert_eq!(user_in_path("/api/v2/sql"), None);
    }

    mod properties {
        use axum::http::{HeaderValue, Request};
        use proptest::prelude::*;

        use super::super::*;

        fn host_parts(host: &[u8]) -> Option<Parts> {
            let value = HeaderValue::from_bytes(host).ok()?;
            let (parts, ()) = Request::builder()
                .header(header::HOST, value)
                .body(())
                .ok()?
                .into_parts();
            Some(parts)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn host_names_give_possible_users_or_errors(host in any::<Vec<u8>>()) {
                if let Some(parts) = host_parts(&host) {
                    match username_from_host(&parts) {
                        Ok(user) => prop_assert!(could_be_username(&user)),
                        Err(error) => prop_assert!(error.status().is_client_error()),
                    }
                }
            }

            #[test]
            fn a_path_names_its_user(
                user in "[a-z0-9][a-z0-9_-]{0,39}",
                rest in "(/[a-zA-Z0-9%._~-]{0,10}){0,4}",
            ) {
                prop_assert!(could_be_username(&user));
                let path = format!("/user/{user}{rest}");
                prop_assert_eq!(user_in_path(&path), Some(user));
            }

            #[test]
            fn any_path_is_read_without_panic(path in any::<String>()) {
                let _ = user_in_path(&path);
                let _ = user_in_path(&format!("/user/{path}"));
            }

            #[test]
            fn forms_decode_to_what_was_encoded(
                pairs in proptest::collection::vec(("[^\\x00]{0,12}", "[^\\x00]{0,12}"), 0..6),
            ) {
                let encoded = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(&pairs)
                    .finish();
                prop_assert_eq!(decode_form(encoded.as_bytes()).unwrap(), pairs);
            }

            #[test]
            fn any_bytes_decode_or_get_a_400(bytes in any::<Vec<u8>>()) {
                match decode_form(&bytes) {
                    Ok(pairs) => {
                        for (name, value) in pairs {
                            prop_assert!(!name.contains('\0') && !value.contains('\0'));
                        }
                    }
                    Err(error) => prop_assert_eq!(error.status(), StatusCode::BAD_REQUEST),
                }
            }
        }
    }
}
