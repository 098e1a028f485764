//! Pure arithmetic over what the agents recorded: percentiles, rates per
//! tenth of a run, time until a share of the fleet got somewhere.

use std::time::Duration;

/// The nearest-rank percentile (`p` in 0–100) of unsorted samples; `None`
/// for no samples.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(percentile_sorted(&sorted, p))
}

/// As [`percentile`], on samples sorted ascending (not empty).
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    let p = p.clamp(0.0, 100.0);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Events per second in each tenth of a run, the run cut by event count:
/// `done_at` are the instants (seconds from the start) at which each event
/// completed. The first tenth is measured from the start, each later one
/// from the end of the one before, so a rate that falls as the fleet grows
/// shows as falling figures. Fewer than ten events give one figure.
pub fn rates_per_tenth(done_at: &[f64]) -> Vec<f64> {
    let mut sorted = done_at.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return Vec::new();
    }
    let parts = n.min(10);
    let mut out = Vec::with_capacity(parts);
    let mut prev_end = 0.0_f64;
    let mut prev_idx = 0usize;
    for k in 1..=parts {
        let idx = k * n / parts;
        let end = sorted[idx - 1];
        let count = (idx - prev_idx) as f64;
        let span = (end - prev_end).max(1e-6);
        out.push(count / span);
        prev_end = end;
        prev_idx = idx;
    }
    out
}

/// When `share` (0–1) of `total` agents had reached a point, given the
/// instants (from the start) at which those that did reached it; `None`
/// when too few did.
pub fn time_to_share(reached_at: &[f64], total: usize, share: f64) -> Option<f64> {
    if total == 0 {
        return Some(0.0);
    }
    let needed = ((share * total as f64).ceil() as usize).clamp(1, total);
    if reached_at.len() < needed {
        return None;
    }
    let mut sorted = reached_at.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(sorted[needed - 1])
}

pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), Some(50.0));
        assert_eq!(percentile(&s, 99.0), Some(99.0));
        assert_eq!(percentile(&s, 100.0), Some(100.0));
        assert_eq!(percentile(&s, 0.0), Some(1.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn rates_per_tenth_follow_the_run() {
        // 100 events, one every 10 ms: 100/s in every tenth.
        let at: Vec<f64> = (1..=100).map(|i| f64::from(i) * 0.01).collect();
        let r = rates_per_tenth(&at);
        assert_eq!(r.len(), 10);
        for x in &r {
            assert!((x - 100.0).abs() < 1e-6, "{r:?}");
        }
        // The second half twice as slow.
        let mut at: Vec<f64> = (1..=50).map(|i| f64::from(i) * 0.01).collect();
        at.extend((1..=50).map(|i| 0.5 + f64::from(i) * 0.02));
        let r = rates_per_tenth(&at);
        assert!(
            (r[0] - 100.0).abs() < 1e-6 && (r[9] - 50.0).abs() < 1e-6,
            "{r:?}"
        );
        assert_eq!(rates_per_tenth(&[0.5, 1.0]).len(), 2);
        assert!(rates_per_tenth(&[]).is_empty());
    }

    #[test]
    fn time_to_a_share_of_the_fleet() {
        let at = [0.3, 0.1, 0.2, 0.4];
        assert_eq!(time_to_share(&at, 4, 0.5), Some(0.2));
        assert_eq!(time_to_share(&at, 4, 0.99), Some(0.4));
        assert_eq!(time_to_share(&at, 4, 1.0), Some(0.4));
        assert_eq!(time_to_share(&at, 5, 1.0), None, "one never got it");
        assert_eq!(time_to_share(&at, 5, 0.5), Some(0.3));
    }
}
