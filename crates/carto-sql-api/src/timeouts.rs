//! Statement timeouts: parsed once, where they enter (flags), into [`Duration`]; rendered as
//! PostgreSQL milliseconds only where SQL or a startup option needs them. A timeout PostgreSQL
//! would refuse can then never reach it, so no request fails on a bad setting.

use std::time::Duration;

/// The longest `statement_timeout` PostgreSQL accepts: its milliseconds are an `int4`.
pub const MAX_STATEMENT_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// A timeout flag that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid timeout '{text}': use a number of milliseconds or a duration such as 300ms, 30s, \
     5min or 5h, at most 24 days ({reason})"
)]
pub struct InvalidTimeout {
    text: String,
    reason: String,
}

/// Parses a timeout as the flags write it: a bare number is milliseconds (PostgreSQL's unit for
/// `statement_timeout`), anything else a duration with units (`300ms`, `30s`, `5min`, `5h`,
/// `1h 30min`). `0` is zero, which callers read as "none".
pub fn parse(text: &str) -> Result<Duration, InvalidTimeout> {
    let trimmed = text.trim();
    let invalid = |reason: String| InvalidTimeout {
        text: text.to_string(),
        reason,
    };
    let duration = if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let millis: u64 = trimmed.parse().map_err(|e| invalid(format!("{e}")))?;
        Duration::from_millis(millis)
    } else {
        humantime::parse_duration(trimmed).map_err(|e| invalid(e.to_string()))?
    };
    if duration > MAX_STATEMENT_TIMEOUT {
        return Err(invalid("longer than PostgreSQL allows".into()));
    }
    Ok(duration)
}

/// `timeout` as PostgreSQL milliseconds (`statement_timeout`'s unit): rounded up, so that a
/// sub-millisecond timeout is not 0 (which PostgreSQL reads as "none"), and capped at
/// [`MAX_STATEMENT_TIMEOUT`] so that PostgreSQL never refuses it.
pub(crate) fn postgres_millis(timeout: Duration) -> i64 {
    let millis = timeout.as_micros().div_ceil(1000);
    millis.min(MAX_STATEMENT_TIMEOUT.as_millis()) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_forms_parse() {
        let cases = [
            ("5min", Duration::from_secs(300)),
            ("5h", Duration::from_secs(5 * 3600)),
            ("30s", Duration::from_secs(30)),
            ("15s", Duration::from_secs(15)),
            ("300ms", Duration::from_millis(300)),
            ("1h 30min", Duration::from_secs(5400)),
            ("250", Duration::from_millis(250)),
            (" 0 ", Duration::ZERO),
            ("0s", Duration::ZERO),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn bad_timeouts_are_refused_with_the_text() {
        for bad in ["", "soon", "5 parsecs", "-1", "1.5.2s", "30d"] {
            let error = parse(bad).expect_err(bad);
            assert!(
                error
                    .to_string()
                    .contains(&format!("invalid timeout '{bad}'")),
                "{error}"
            );
        }
    }

    #[test]
    fn postgres_gets_whole_milliseconds_it_accepts() {
        assert_eq!(postgres_millis(Duration::ZERO), 0);
        assert_eq!(postgres_millis(Duration::from_micros(1)), 1);
        assert_eq!(postgres_millis(Duration::from_millis(300)), 300);
        assert_eq!(postgres_millis(Duration::from_secs(5 * 3600)), 18_000_000);
        assert_eq!(
            postgres_millis(Duration::from_secs(u64::MAX)),
            i32::MAX as i64
        );
    }
}
