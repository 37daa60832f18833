//! Medians and ratios of the samples every variant collected.

use super::Variant;

/// One variant in the table and in the JSON file.
pub(super) struct Row {
    pub(super) name: &'static str,
    pub(super) samples: Vec<f64>,
    pub(super) stats: Option<Stats>,
    pub(super) skipped: Option<String>,
    /// Ratio of this row's median to each baseline's median (same order as the baselines).
    pub(super) ratios: Vec<Option<f64>>,
    /// This row's sample over the first baseline's sample of the same round, round by round
    /// (variants alternate within a round, so these pairs saw the same machine load); empty
    /// when the two do not have a sample in every round.
    pub(super) round_ratios: Vec<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Stats {
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
}

pub(super) fn stats(samples: &[f64]) -> Option<Stats> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let mid = s.len() / 2;
    let median = if s.len() % 2 == 1 {
        s[mid]
    } else {
        (s[mid - 1] + s[mid]) / 2.0
    };
    Some(Stats {
        median,
        min: s[0],
        max: s[s.len() - 1],
    })
}

/// `value / base`, when both exist and the base is a positive, finite number.
pub(super) fn ratio(value: Option<f64>, base: Option<f64>) -> Option<f64> {
    let (v, b) = value.zip(base)?;
    (b > 0.0 && b.is_finite() && v.is_finite()).then(|| v / b)
}

/// `samples[i] / base[i]` for every round, when both have one sample per round.
pub(super) fn round_ratios(samples: &[f64], base: &[f64]) -> Vec<f64> {
    if samples.len() != base.len() {
        return Vec::new();
    }
    samples
        .iter()
        .zip(base)
        .filter_map(|(s, b)| ratio(Some(*s), Some(*b)))
        .collect()
}

pub(super) fn summarize(variants: &[Variant], baselines: &[&str]) -> Vec<Row> {
    let median_of = |name: &str| {
        variants
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| stats(&v.samples))
            .map(|s| s.median)
    };
    let bases: Vec<Option<f64>> = baselines.iter().map(|b| median_of(b)).collect();
    let first_base = baselines
        .first()
        .and_then(|b| variants.iter().find(|v| v.name == *b));
    variants
        .iter()
        .map(|v| {
            let st = stats(&v.samples);
            let m = st.map(|s| s.median);
            Row {
                name: v.name,
                samples: v.samples.clone(),
                stats: st,
                skipped: v.skipped.clone(),
                ratios: bases.iter().map(|b| ratio(m, *b)).collect(),
                round_ratios: first_base
                    .map_or_else(Vec::new, |base| round_ratios(&v.samples, &base.samples)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{variant, Kind, BPFTRACE, LEAKTRACE, MEMLEAK, UNTRACED};

    #[test]
    fn median_of_odd_and_even_sample_counts() {
        let s = stats(&[5.0, 1.0, 3.0]).expect("samples");
        assert_eq!(
            s,
            Stats {
                median: 3.0,
                min: 1.0,
                max: 5.0
            }
        );
        assert_eq!(stats(&[4.0, 1.0, 2.0, 10.0]).map(|s| s.median), Some(3.0));
        assert_eq!(stats(&[]), None);
    }

    #[test]
    fn ratios_need_a_positive_base() {
        assert_eq!(ratio(Some(30.0), Some(10.0)), Some(3.0));
        assert_eq!(ratio(Some(30.0), Some(0.0)), None);
        assert_eq!(ratio(Some(30.0), None), None);
        assert_eq!(ratio(None, Some(10.0)), None);
    }

    #[test]
    fn summary_compares_medians_with_each_baseline() {
        let variants = [
            variant(UNTRACED, Kind::Untraced, &[10.0, 12.0, 11.0]),
            variant(LEAKTRACE, Kind::Leaktrace, &[4400.0, 4000.0, 4200.0]),
            variant(MEMLEAK, Kind::Memleak, &[14000.0]),
            {
                let mut v = variant(BPFTRACE, Kind::Bpftrace, &[]);
                v.skip("not installed".into());
                v
            },
        ];
        let rows = summarize(&variants, &[UNTRACED, BPFTRACE, MEMLEAK]);
        let lt = &rows[1];
        assert_eq!(lt.stats.map(|s| s.median), Some(4200.0));
        assert_eq!(lt.ratios[0], Some(4200.0 / 11.0));
        assert_eq!(lt.ratios[1], None, "bpftrace has no samples");
        assert_eq!(lt.ratios[2], Some(0.3));
        assert_eq!(rows[0].ratios[0], Some(1.0));
        assert_eq!(rows[3].skipped.as_deref(), Some("not installed"));
        // Round by round: 4400/10, 4000/12, 4200/11; none for a variant with fewer rounds.
        assert_eq!(lt.round_ratios, [440.0, 4000.0 / 12.0, 4200.0 / 11.0]);
        assert!(rows[2].round_ratios.is_empty());
        assert_eq!(rows[0].round_ratios, [1.0, 1.0, 1.0]);
    }
}
