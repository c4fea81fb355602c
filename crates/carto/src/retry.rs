//! When to send a request again.
//!
//! Only two answers are retried: 429 from the rate limiter (it carries `Retry-After`; the
//! other 429, the statement-timeout limit, would fail the same way again) and 503 (server
//! busy or restarting). Both mean the server did not run the statement. Only requests that
//! can be replayed are retried: queries, batch calls, `copy_to` before the caller saw a
//! byte, and `copy_from` of a file, which is read again from its start. An upload fed from a
//! stream, a reader or a sink is never retried, since its bytes are gone.

use std::time::Duration;

/// Bounds on automatic retries. Retrying is on by default: 3 retries within 60 s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    max_retries: u32,
    max_elapsed: Duration,
    max_wait: Duration,
    initial_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            max_elapsed: Duration::from_secs(60),
            max_wait: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(500),
        }
    }
}

impl RetryPolicy {
    /// Never retry.
    pub fn never() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..Default::default()
        }
    }

    /// At most `n` retries after the first attempt. Default 3.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Give up when the next attempt would start later than this after the first. Default 60 s.
    pub fn max_elapsed(mut self, total: Duration) -> Self {
        self.max_elapsed = total;
        self
    }

    /// Give up rather than wait longer than this before one retry. Default 30 s.
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// The wait before the first retry of an answer without `Retry-After`, doubled on each
    /// following retry. Default 500 ms.
    pub fn initial_backoff(mut self, wait: Duration) -> Self {
        self.initial_backoff = wait;
        self
    }

    /// How long to wait before retrying, or `None` to give up.
    ///
    /// `retries_done` counts the retries already made, `elapsed` the time since the first
    /// attempt began, `retryable` whether the answer is one of the two retried ones, and
    /// `retry_after` the server's `Retry-After`.
    pub(crate) fn next_wait(
        &self,
        retries_done: u32,
        elapsed: Duration,
        retryable: bool,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        if !retryable || retries_done >= self.max_retries {
            return None;
        }
        let wait = match retry_after {
            Some(wait) => wait,
            None => self
                .initial_backoff
                .saturating_mul(1u32.checked_shl(retries_done).unwrap_or(u32::MAX)),
        };
        if wait > self.max_wait || elapsed.saturating_add(wait) > self.max_elapsed {
            return None;
        }
        Some(wait)
    }
}

/// Whether an answer with `status` is worth retrying: the rate limiter's 429 (told apart by
/// its `Retry-After`) and 503.
pub(crate) fn is_retryable(status: u16, has_retry_after: bool) -> bool {
    status == 503 || (status == 429 && has_retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn honours_retry_after_until_the_count_runs_out() {
        let p = RetryPolicy::default();
        assert_eq!(p.next_wait(0, S(0), true, Some(S(2))), Some(S(2)));
        assert_eq!(p.next_wait(2, S(4), true, Some(S(1))), Some(S(1)));
        assert_eq!(p.next_wait(3, S(5), true, Some(S(1))), None);
    }

    #[test]
    fn bounded_by_total_time_and_single_wait() {
        let p = RetryPolicy::default().max_elapsed(S(10)).max_wait(S(5));
        assert_eq!(p.next_wait(0, S(8), true, Some(S(2))), Some(S(2)));
        assert_eq!(p.next_wait(0, S(9), true, Some(S(2))), None);
        assert_eq!(p.next_wait(0, S(0), true, Some(S(6))), None);
    }

    #[test]
    fn backs_off_exponentially_without_retry_after() {
        let p = RetryPolicy::default().max_retries(10).max_elapsed(S(3600));
        let waits: Vec<_> = (0..4)
            .map(|n| p.next_wait(n, S(0), true, None).unwrap())
            .collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000].map(Duration::from_millis).to_vec()
        );
        // Doubling stops at the single-wait bound instead of overflowing.
        assert_eq!(p.next_wait(9, S(0), true, None), None);
    }

    #[test]
    fn only_rate_limits_and_unavailable_are_retried() {
        assert!(is_retryable(429, true));
        assert!(
            !is_retryable(429, false),
            "the timeout 429 has no Retry-After"
        );
        assert!(is_retryable(503, false));
        for status in [400, 401, 403, 404, 500, 502] {
            assert!(!is_retryable(status, true));
        }
        assert_eq!(
            RetryPolicy::never().next_wait(0, S(0), true, Some(S(1))),
            None
        );
    }
}
