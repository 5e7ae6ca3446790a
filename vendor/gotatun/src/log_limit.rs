// wireguard4netns: this module is ours, not upstream gotatun's (see WIREGUARD4NETNS.md).

//! Rate limits for complaints that can come once per packet (a peer without an
//! endpoint, a TUN that refuses writes): the first is logged, then at most one
//! per [`LogLimit`]'s interval, saying how many were left out in between, so
//! that a flood of packets cannot flood the log (or the terminal of a program
//! that shows it).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The interval of every limit here: a problem that persists is said again
/// every 10 s, with its count.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One call site's limit. Meant as a `static`: the limit is per process.
pub(crate) struct LogLimit {
    interval: Duration,
    /// When the last report was let through, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimit {
    /// At most one report per `interval`.
    pub(crate) const fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed)` if this occurrence is to be logged (`suppressed` were
    /// left out since the last one), `None` if it is to be left out.
    pub(crate) fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, suppressed) = &mut *state;
        match last {
            Some(at) if now.saturating_duration_since(*at) < self.interval => {
                *suppressed += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(suppressed))
            }
        }
    }
}

/// `""`, or `" (N more since the last report)"`, for the end of a report.
pub(crate) fn suppressed_note(suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!(" ({suppressed} more since the last report)")
    }
}

/// Log at `$level` through `$limit` (a `static LogLimit`), with the count of
/// left-out reports appended to the message.
macro_rules! log_limited {
    ($level:ident, $limit:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limit.check() {
            tracing::$level!(
                "{}{}",
                format_args!($($arg)+),
                $crate::log_limit::suppressed_note(suppressed)
            );
        }
    };
}
pub(crate) use log_limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_then_one_per_interval_with_the_count() {
        let limit = LogLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limit.check_at(t0), Some(0));
        for i in 1..50 {
            assert_eq!(limit.check_at(t0 + Duration::from_millis(i * 10)), None);
        }
        assert_eq!(limit.check_at(t0 + Duration::from_secs(10)), Some(49));
        assert_eq!(limit.check_at(t0 + Duration::from_secs(11)), None);
        assert_eq!(limit.check_at(t0 + Duration::from_secs(25)), Some(1));
    }

    #[test]
    fn note_only_when_something_was_left_out() {
        assert_eq!(suppressed_note(0), "");
        assert_eq!(suppressed_note(3), " (3 more since the last report)");
    }
}
