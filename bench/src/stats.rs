//! Latency samples and their percentiles.

use std::time::Duration;

/// Latencies of one measured run plus its wall time.
#[derive(Debug, Clone)]
pub struct Samples {
    sorted: Vec<Duration>,
    /// Wall time of the measured part.
    pub elapsed: Duration,
}

impl Samples {
    /// Sorts the samples once.
    pub fn new(mut samples: Vec<Duration>, elapsed: Duration) -> Self {
        samples.sort_unstable();
        Self {
            sorted: samples,
            elapsed,
        }
    }

    /// One set of samples from several runs: every latency, the summed
    /// wall time.
    pub fn combine(parts: Vec<Samples>) -> Self {
        let elapsed = parts.iter().map(|p| p.elapsed).sum();
        Self::new(parts.into_iter().flat_map(|p| p.sorted).collect(), elapsed)
    }

    /// The `p`-th percentile (0–100).
    pub fn percentile(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * (self.sorted.len() - 1) as f64).round() as usize;
        self.sorted[rank.min(self.sorted.len() - 1)]
    }

    /// How many operations were measured.
    pub fn count(&self) -> usize {
        self.sorted.len()
    }

    /// Operations per second.
    pub fn throughput(&self) -> f64 {
        self.sorted.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// `123 µs` / `1.23 ms` / `1.23 s`.
pub fn fmt_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// `a / b` as `1.23×`.
pub fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "-".into()
    } else {
        format!("{:.2}×", a / b)
    }
}

/// The median of a few measurements (the lower middle one for an even count).
pub fn median(mut values: Vec<Duration>) -> Duration {
    values.sort_unstable();
    values
        .get(values.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or_default()
}

/// Ratios of neighbouring slices (plays ÷ floor, say), shown as their
/// median and range: `0.55× (0.48–0.61)`.
pub struct PairedRatios(Vec<f64>);

impl PairedRatios {
    pub fn new(ratios: impl Iterator<Item = f64>) -> Self {
        let mut ratios: Vec<f64> = ratios.filter(|r| r.is_finite()).collect();
        ratios.sort_by(f64::total_cmp);
        Self(ratios)
    }

    /// Throughput of each of `a` over that of its neighbour in `b`.
    pub fn of_throughputs(a: &[Samples], b: &[Samples]) -> Self {
        Self::new(
            a.iter()
                .zip(b)
                .map(|(a, b)| a.throughput() / b.throughput()),
        )
    }
}

impl std::fmt::Display for PairedRatios {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.0;
        match (r.first(), r.last()) {
            (Some(low), Some(high)) => {
                let mid = if r.len() % 2 == 1 {
                    r[r.len() / 2]
                } else {
                    (r[r.len() / 2 - 1] + r[r.len() / 2]) / 2.0
                };
                write!(f, "{mid:.2}× ({low:.2}–{high:.2})")
            }
            _ => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_ratios_show_their_median_and_range() {
        let odd = PairedRatios::new([0.7, 0.5, 0.6].into_iter());
        assert_eq!(odd.to_string(), "0.60× (0.50–0.70)");
        let even = PairedRatios::new([0.4, 0.8, 0.5, 0.6].into_iter());
        assert_eq!(even.to_string(), "0.55× (0.40–0.80)");
        // A slice that measured nothing (0 ÷ 0) does not count.
        let with_empty = PairedRatios::new([f64::NAN, 0.5].into_iter());
        assert_eq!(with_empty.to_string(), "0.50× (0.50–0.50)");
        assert_eq!(PairedRatios::new(std::iter::empty()).to_string(), "-");
    }
}
