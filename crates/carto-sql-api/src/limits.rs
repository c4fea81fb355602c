//! Rate limits (spec §8): per user and endpoint group, the GCRA of redis-cell's `CL.THROTTLE`
//! with a (burst, count, period) triple, off unless configured.
//!
//! Limits come from the server's [`RateLimits`] (flags of `serve`) unless the user has an
//! override in the metadata table `rate_limits`. The GCRA state (one "theoretical arrival time"
//! per user and group) lives in the metadata database, not in the process: servers stay
//! stateless and any number of them behind a load balancer enforce one shared limit. One
//! statement reads the override, checks the user exists, decides and stores the new state, so a
//! check is one round trip to the metadata database (≈0.3 ms on the 2-core test machine, see
//! `docs/rate-limits.md`). The clock is the database's, so servers with skewed clocks agree.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{invalid, Answer, OrInvalid, Result};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::accounts::User;
use crate::error::ApiError;
use crate::AppState;

/// The message of a request refused by a rate limit.
pub const RATE_LIMIT_MESSAGE: &str =
    "You are over platform's limits. Please contact us to know more details";

/// An endpoint group: requests of one group share one limit per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    /// `/sql`.
    Query,
    /// `/sql/copyfrom`.
    CopyFrom,
    /// `/sql/copyto`.
    CopyTo,
    /// `POST /sql/job` (and `PUT /sql/job/{id}`, which submits a query too).
    JobCreate,
    /// `GET /sql/job/{id}`.
    JobGet,
    /// `DELETE /sql/job/{id}`.
    JobDelete,
}

impl Group {
    /// Every group.
    pub const ALL: [Group; 6] = [
        Group::Query,
        Group::CopyFrom,
        Group::CopyTo,
        Group::JobCreate,
        Group::JobGet,
        Group::JobDelete,
    ];

    /// The group's name as the spec and the CLI spell it.
    pub fn name(self) -> &'static str {
        match self {
            Group::Query => "query",
            Group::CopyFrom => "copy_from",
            Group::CopyTo => "copy_to",
            Group::JobCreate => "job_create",
            Group::JobGet => "job_get",
            Group::JobDelete => "job_delete",
        }
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Group {
    type Err = crate::error::ApiError;

    fn from_str(text: &str) -> Result<Self> {
        Group::ALL
            .into_iter()
            .find(|g| g.name() == text)
            .or_invalid(|| {
                format!(
                    "unknown endpoint group '{text}': use one of {}",
                    Group::ALL.map(Group::name).join(", ")
                )
            })
    }
}

/// A limit: `count` requests per `period`, plus up to `burst` more at once (redis-cell's
/// `max_burst, count_per_period, period`). Written `BURST/COUNT/PERIOD`, the period in seconds
/// (`1`, `0.5`) or with a unit (`500ms`, `1s`, `1m`, `1h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed at once beyond the steady rate; the `Carto-Rate-Limit-Limit` header is
    /// `burst + 1`.
    pub burst: u32,
    /// Requests per period (at least 1).
    pub count: u32,
    /// The period (at least 1 ms).
    pub period: Duration,
}

impl FromStr for Rate {
    type Err = crate::error::ApiError;

    fn from_str(text: &str) -> Result<Self> {
        let parts: Vec<&str> = text.split('/').collect();
        let [burst, count, period] = parts[..] else {
            invalid!("a rate limit is BURST/COUNT/PERIOD, e.g. 10/5/1s, not '{text}'");
        };
        let burst: u32 = burst
            .trim()
            .parse()
            .or_invalid(|| format!("burst '{burst}' is not a whole number"))?;
        let count: u32 = count
            .trim()
            .parse()
            .or_invalid(|| format!("count '{count}' is not a whole number"))?;
        let period = parse_period(period.trim())?;
        if count == 0 {
            invalid!("the count of a rate limit must be at least 1");
        }
        if period < Duration::from_millis(1) {
            invalid!("the period of a rate limit must be at least 1ms");
        }
        Ok(Rate {
            burst,
            count,
            period,
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.period.as_millis();
        if ms % 1000 == 0 {
            write!(f, "{}/{}/{}s", self.burst, self.count, ms / 1000)
        } else {
            write!(f, "{}/{}/{}ms", self.burst, self.count, ms)
        }
    }
}

fn parse_period(text: &str) -> Result<Duration> {
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        (text, 1000.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .or_invalid(|| format!("period '{text}' is not a duration such as 1, 0.5, 500ms, 1m"))?;
    let ms = value * unit_ms;
    if ms > 1e12 {
        invalid!("period '{text}' is too long");
    }
    Ok(Duration::from_millis(ms.round() as u64))
}

/// A limit for one group, as the `serve --rate-limit GROUP=BURST/COUNT/PERIOD` flag writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRate {
    /// The group.
    pub group: Group,
    /// Its limit.
    pub rate: Rate,
}

impl FromStr for GroupRate {
    type Err = crate::error::ApiError;

    fn from_str(text: &str) -> Result<Self> {
        let (group, rate) = text
            .split_once('=')
            .or_invalid(|| format!("expected GROUP=BURST/COUNT/PERIOD, got '{text}'"))?;
        Ok(GroupRate {
            group: group.trim().parse()?,
            rate: rate.parse()?,
        })
    }
}

/// Server-wide default limits, one optional [`Rate`] per group. Empty (no limits) by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimits(BTreeMap<Group, Rate>);

impl RateLimits {
    /// No limits.
    pub fn none() -> Self {
        RateLimits::default()
    }

    /// Limits `group` to `rate`.
    pub fn with(mut self, group: Group, rate: Rate) -> Self {
        self.0.insert(group, rate);
        self
    }

    /// The limit of `group`, if any.
    pub fn get(&self, group: Group) -> Option<Rate> {
        self.0.get(&group).copied()
    }
}

impl FromIterator<GroupRate> for RateLimits {
    fn from_iter<I: IntoIterator<Item = GroupRate>>(iter: I) -> Self {
        RateLimits(iter.into_iter().map(|g| (g.group, g.rate)).collect())
    }
}

/// The outcome of one check, with what the `Carto-Rate-Limit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// `burst + 1`.
    pub limit: i64,
    /// Requests left right now.
    pub remaining: i64,
    /// Whole seconds until the limit is full again (truncated, as redis-cell reports it).
    pub reset: i64,
    /// For a refused request, whole seconds until the next one is allowed (truncated).
    pub retry_after: Option<i64>,
}

impl Decision {
    /// The GCRA figures of redis-cell from the stored state: `tat_us` is the theoretical arrival
    /// time after the decision, `allowed` the decision itself, all times in microseconds.
    fn from_state(burst: i64, emission_us: i64, now_us: i64, tat_us: i64, allowed: bool) -> Self {
        let tolerance = emission_us * (burst + 1);
        let ttl = tat_us - now_us;
        let retry_after = (!allowed).then(|| (tat_us + emission_us - tolerance - now_us).max(0));
        let next = tolerance - ttl;
        let remaining = if next > -emission_us {
            (next / emission_us).max(0)
        } else {
            0
        };
        Decision {
            allowed,
            limit: burst + 1,
            remaining,
            reset: ttl.max(0) / 1_000_000,
            retry_after: retry_after.map(|us| us / 1_000_000),
        }
    }

    /// Adds the `Carto-Rate-Limit-*` headers, and `Retry-After` (seconds + 1, as upstream
    /// rounds) if the request was refused.
    pub fn add_headers(&self, headers: &mut HeaderMap) {
        headers.insert("carto-rate-limit-limit", HeaderValue::from(self.limit));
        headers.insert(
            "carto-rate-limit-remaining",
            HeaderValue::from(self.remaining),
        );
        headers.insert("carto-rate-limit-reset", HeaderValue::from(self.reset));
        if let Some(seconds) = self.retry_after {
            headers.insert("retry-after", HeaderValue::from(seconds + 1));
        }
    }

    /// The 429 answer of a refused request, with its headers.
    pub fn refusal(&self) -> Response {
        let mut response = Answer {
            context: Some("limit".into()),
            detail: Some("rate-limit".into()),
            ..Answer::new(StatusCode::TOO_MANY_REQUESTS, RATE_LIMIT_MESSAGE)
        }
        .into_response();
        self.add_headers(response.headers_mut());
        response
    }
}

/// Checks requests against the limits; shared by every handler through the app state.
#[derive(Clone)]
pub struct RateLimiter {
    meta: deadpool_postgres::Pool,
    defaults: RateLimits,
}

/// One statement: the user's override (or the server default passed as parameters), the
/// redis-cell GCRA decision, and the new state, atomically under the row lock the upsert takes.
/// No row comes back when no limit applies or the user does not exist.
const THROTTLE_SQL: &str = r#"
WITH cfg AS (
    SELECT u.username,
           coalesce(o.burst, $2::int4) AS burst,
           coalesce(o.count, $3::int4) AS count,
           coalesce(o.period_ms, $4::int8) AS period_ms,
           coalesce($5::int8, (extract(epoch FROM clock_timestamp()) * 1000000)::int8) AS now_us
    FROM users u
    LEFT JOIN rate_limits o ON o.username = u.username AND o.grp = $6
    WHERE u.username = $1
)
INSERT INTO rate_limit_state AS s (username, grp, burst, emission_us, now_us, tat_us, allowed)
SELECT username, $6, burst, greatest(period_ms * 1000 / count, 1), now_us,
       now_us + greatest(period_ms * 1000 / count, 1), true
FROM cfg
WHERE burst IS NOT NULL AND count > 0 AND period_ms > 0
ON CONFLICT (username, grp) DO UPDATE SET
    burst = EXCLUDED.burst,
    emission_us = EXCLUDED.emission_us,
    now_us = EXCLUDED.now_us,
    allowed = greatest(s.tat_us, EXCLUDED.now_us) + EXCLUDED.emission_us
              - EXCLUDED.emission_us * (EXCLUDED.burst + 1) <= EXCLUDED.now_us,
    tat_us = CASE
        WHEN greatest(s.tat_us, EXCLUDED.now_us) + EXCLUDED.emission_us
             - EXCLUDED.emission_us * (EXCLUDED.burst + 1) <= EXCLUDED.now_us
        THEN greatest(s.tat_us, EXCLUDED.now_us) + EXCLUDED.emission_us
        ELSE s.tat_us
    END
RETURNING burst, emission_us, now_us, tat_us, allowed
"#;

/// Whether [`SCHEMA`] was applied.
pub(crate) const SCHEMA_PRESENT: &str = "SELECT to_regclass('public.rate_limit_state') IS NOT NULL";

/// The metadata tables of rate limits; created if missing whenever a server opens.
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS rate_limits (
    username  text NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    grp       text NOT NULL,
    burst     int4 NOT NULL,
    count     int4 NOT NULL,
    period_ms int8 NOT NULL,
    PRIMARY KEY (username, grp)
);
-- Unlogged: the state is as volatile as redis-cell's; losing it in a crash only resets limits.
CREATE UNLOGGED TABLE IF NOT EXISTS rate_limit_state (
    username    text NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    grp         text NOT NULL,
    burst       int8 NOT NULL,
    emission_us int8 NOT NULL,
    now_us      int8 NOT NULL,
    tat_us      int8 NOT NULL,
    allowed     boolean NOT NULL,
    PRIMARY KEY (username, grp)
);
"#;

impl RateLimiter {
    pub(crate) fn new(meta: deadpool_postgres::Pool, defaults: RateLimits) -> Self {
        RateLimiter { meta, defaults }
    }

    /// Counts one request of `username` in `group`; `None` when no limit applies (or no such
    /// user, which the handler then reports).
    pub async fn check(&self, username: &str, group: Group) -> Result<Option<Decision>> {
        self.check_at(username, group, None).await
    }

    /// [`check`](Self::check) at an explicit time (microseconds since any fixed origin) instead
    /// of the database's clock: for tests and replays. Mixing both clocks for one user and
    /// group gives meaningless answers.
    pub async fn check_at(
        &self,
        username: &str,
        group: Group,
        now_us: Option<i64>,
    ) -> Result<Option<Decision>> {
        let default = self.defaults.get(group);
        let client = self.meta.get().await?;
        let statement = client.prepare_cached(THROTTLE_SQL).await?;
        let row = client
            .query_opt(
                &statement,
                &[
                    &username,
                    &default.map(|r| r.burst.min(i32::MAX as u32) as i32),
                    &default.map(|r| r.count.min(i32::MAX as u32) as i32),
                    &default.map(|r| r.period.as_millis().min(i64::MAX as u128) as i64),
                    &now_us,
                    &group.name(),
                ],
            )
            .await?;
        Ok(row.map(|row| {
            Decision::from_state(row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
        }))
    }

    /// Sets (`Some`) or removes (`None`) `username`'s own limit for `group`, which then wins over
    /// the server's default.
    pub async fn set_user_rate(
        &self,
        username: &str,
        group: Group,
        rate: Option<Rate>,
    ) -> Result<()> {
        let client = self.meta.get().await?;
        let exists = client
            .query_opt("SELECT 1 FROM users WHERE username = $1", &[&username])
            .await?
            .is_some();
        if !exists {
            invalid!("user '{username}' does not exist");
        }
        match rate {
            Some(rate) => {
                client
                    .execute(
                        "INSERT INTO rate_limits (username, grp, burst, count, period_ms) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (username, grp) DO UPDATE \
                         SET burst = EXCLUDED.burst, count = EXCLUDED.count, \
                             period_ms = EXCLUDED.period_ms",
                        &[
                            &username,
                            &group.name(),
                            &(rate.burst.min(i32::MAX as u32) as i32),
                            &(rate.count.min(i32::MAX as u32) as i32),
                            &(rate.period.as_millis().min(i64::MAX as u128) as i64),
                        ],
                    )
                    .await?;
            }
            None => {
                client
                    .execute(
                        "DELETE FROM rate_limits WHERE username = $1 AND grp = $2",
                        &[&username, &group.name()],
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// `username`'s own limits (overrides of the server's defaults).
    pub async fn user_rates(&self, username: &str) -> Result<Vec<GroupRate>> {
        let client = self.meta.get().await?;
        let rows = client
            .query(
                "SELECT grp, burst, count, period_ms FROM rate_limits WHERE username = $1 \
                 ORDER BY grp",
                &[&username],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let burst: i32 = row.get(1);
                let count: i32 = row.get(2);
                let period_ms: i64 = row.get(3);
                Ok(GroupRate {
                    group: row.get::<_, &str>(0).parse()?,
                    rate: Rate {
                        burst: burst.max(0) as u32,
                        count: count.max(1) as u32,
                        period: Duration::from_millis(period_ms.max(1) as u64),
                    },
                })
            })
            .collect()
    }
}

/// The one rate-limit layer, enforcing `group`'s limit on the routes it wraps, every endpoint
/// group alike. It runs inside [`auth::identify`](crate::auth::identify), which resolved the
/// user, and before the handler (so before auth); a refused request gets 429, and every answer
/// of a limited user carries the `Carto-Rate-Limit-*` headers.
///
/// The spec puts body parsing before the limit. Batch-job routes do so (their body layer sits
/// outside this one, see `jobs::http`); the others are limited before the body is read, which
/// only changes which error a malformed *and* over-limit request sees, and spares reading
/// bodies (up to 2 GB on copyfrom) that will be refused anyway.
pub(crate) async fn enforce(
    State((state, group)): State<(AppState, Group)>,
    request: Request,
    next: Next,
) -> Response {
    let Some(user) = request.extensions().get::<User>() else {
        return ApiError::internal("a rate-limited route lacks `identify`").into_response();
    };
    let decision = match state.limiter.check(&user.username, group).await {
        Ok(decision) => decision,
        Err(error) => return error.context("rate limit").into_response(),
    };
    match decision {
        None => next.run(request).await,
        Some(decision) if !decision.allowed => decision.refusal(),
        Some(decision) => {
            let mut response = next.run(request).await;
            decision.add_headers(response.headers_mut());
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        let rate: Rate = "1/1/1".parse().unwrap();
        assert_eq!(
            rate,
            Rate {
                burst: 1,
                count: 1,
                period: Duration::from_secs(1)
            }
        );
        assert_eq!(rate.to_string(), "1/1/1s");
        assert_eq!(
            "0/3/500ms".parse::<Rate>().unwrap().period,
            Duration::from_millis(500)
        );
        assert_eq!(
            "0/3/0.25".parse::<Rate>().unwrap().period,
            Duration::from_millis(250)
        );
        assert_eq!(
            "2/3/1m".parse::<Rate>().unwrap().period,
            Duration::from_secs(60)
        );
        for bad in [
            "", "1/1", "1/0/1", "-1/1/1", "1/1/x", "1/1/0", "1/1/1/1", "1/1/-1s",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        let g: GroupRate = "copy_from=0/1/60".parse().unwrap();
        assert_eq!(g.group, Group::CopyFrom);
        assert!("nope=1/1/1".parse::<GroupRate>().is_err());
        assert!("query".parse::<GroupRate>().is_err());
    }

    /// The GCRA arithmetic of spec §14.19 (burst 1, count 1, period 1 s) on a fake clock.
    #[test]
    fn gcra_figures_match_redis_cell() {
        let t = 1_000_000;
        // Request at 0: no state, so tat becomes now + T.
        assert_eq!(
            Decision::from_state(1, t, 0, t, true),
            Decision {
                allowed: true,
                limit: 2,
                remaining: 1,
                reset: 1,
                retry_after: None
            }
        );
        // At 250 ms: tat 1 s -> 2 s.
        assert_eq!(
            Decision::from_state(1, t, 250_000, 2 * t, true),
            Decision {
                allowed: true,
                limit: 2,
                remaining: 0,
                reset: 1,
                retry_after: None
            }
        );
        // At 500 ms: refused, tat stays 2 s, next slot at 1 s.
        assert_eq!(
            Decision::from_state(1, t, 500_000, 2 * t, false),
            Decision {
                allowed: false,
                limit: 2,
                remaining: 0,
                reset: 1,
                retry_after: Some(0)
            }
        );
    }
}
