//! When a failed notification is tried again: about 5 s, 30 s, 2 min, 10 min and 1 h after
//! each failure, then hourly, and never later than a day after the job ended.

/// Waits after the first, second, … failure; the last one repeats.
const DELAYS_SECS: [u64; 5] = [5, 30, 120, 600, 3600];
/// How long after a job's end its notification is still tried.
pub const GIVE_UP_AFTER_MS: u64 = 24 * 3600 * 1000;

/// When to try again after the `failures`-th failed attempt, made at `now`, of the notification
/// of a job that ended at `ended_at` (Unix ms); `None`: that would be more than a day after the
/// job ended, so the notification is given up.
pub fn retry_at(ended_at: u64, failures: u32, now: u64) -> Option<u64> {
    let index = (failures.max(1) as usize - 1).min(DELAYS_SECS.len() - 1);
    let at = now + DELAYS_SECS[index] * 1000;
    (at <= ended_at.saturating_add(GIVE_UP_AFTER_MS)).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_then_repeat_hourly_and_stop_after_a_day() {
        let end = 1_000_000;
        let mut now = end;
        let mut waits = Vec::new();
        let mut failures = 0;
        while let Some(at) = {
            failures += 1;
            retry_at(end, failures, now)
        } {
            waits.push((at - now) / 1000);
            now = at;
        }
        assert_eq!(waits[..6], [5, 30, 120, 600, 3600, 3600]);
        assert!(waits[5..].iter().all(|&w| w == 3600));
        // The last attempt is within the day, and the one after it would not be.
        assert!(now <= end + GIVE_UP_AFTER_MS);
        assert!(now + 3_600_000 > end + GIVE_UP_AFTER_MS);
        assert_eq!(waits.len(), 27, "{waits:?}");
    }
}
