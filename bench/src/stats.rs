//! Summary statistics of repeated measurements: median and spread.

/// Median of `samples` (mean of the two middle values for an even count).
/// `None` when there are no samples.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    })
}

/// The `q`th percentile (0-100) of `sorted` (ascending), nearest rank:
/// the smallest sample with at least `q` % of the samples at or below
/// it. `None` when there are no samples.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let rank = (q / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// Spread as a percentage of the median: (max - min) / median * 100.
/// Says how much to trust a ratio: a 3 % difference inside a 20 % spread
/// is noise.
pub fn spread_percent(samples: &[f64]) -> Option<f64> {
    let median = median(samples)?;
    if median == 0.0 {
        return None;
    }
    let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((max - min) / median * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), Some(100.0));
        assert_eq!(percentile(&sorted, 99.0), Some(198.0));
        assert_eq!(percentile(&sorted, 100.0), Some(200.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn spread_is_relative_to_the_median() {
        assert_eq!(spread_percent(&[90.0, 100.0, 110.0]), Some(20.0));
        assert_eq!(spread_percent(&[0.0, 0.0]), None);
    }
}
