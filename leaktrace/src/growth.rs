//! Does an allocation site leak? Growth analysis of its outstanding bytes over time.
//!
//! Every sampling interval leaktrace records, per allocation site, how long the process
//! has been traced, how many bytes it has processed so far (read, written or both, per
//! `--processed`, from `/proc/PID/io`), the site's outstanding bytes, and the part of those
//! older than `--min-age`. From that series this module computes least-squares slopes (bytes per
//! MiB processed and bytes per minute, over the whole run and over a recent window), a
//! [`GrowthClass`] verdict, and a score to rank sites by how likely they leak.
//!
//! Nothing here invents numbers: whatever the data cannot support (too few samples, no
//! work processed, a flat series) comes out as `None`, and no result is ever NaN or
//! infinite. [`SeriesBuffer`] keeps the series bounded for arbitrarily long runs.

use std::f64::consts::SQRT_2;

use crate::schema::{Growth, GrowthClass};

/// Samples a [`SeriesBuffer`] keeps by default: enough for stable fits, small enough that
/// thousands of sites cost little memory.
pub const DEFAULT_CAPACITY: usize = 512;

/// The smallest capacity a [`SeriesBuffer`] accepts: downsampling halves the buffer and
/// must still leave room for the first and the newest sample.
pub const MIN_CAPACITY: usize = 4;

/// Newest samples in the "recent" fit when the caller has no better idea.
pub const DEFAULT_RECENT_WINDOW: usize = 30;

/// Fewest points a line is fitted through: two points always fit perfectly, so a fit
/// quality (R²) only starts to mean something at three.
pub const MIN_FIT_SAMPLES: usize = 3;

/// Fewest samples before a site gets a class other than [`GrowthClass::Unknown`]: the
/// plateau test compares the last third of the series with the first, and each third
/// needs at least two samples to show a trend rather than a single reading.
pub const MIN_CLASSIFY_SAMPLES: usize = 6;

/// Whole-run R² a leak must reach: growth must be steady, not a few jumps. Uniform noise
/// of ±10% of the total rise still gives R² ≈ 0.97, so real leaks clear this easily.
pub const LEAK_MIN_R2: f64 = 0.8;

/// A leak must still be growing: the recent window's slope must be at least this share of
/// the whole-run slope. A quarter leaves room for a noisy recent estimate (a 30-sample
/// window's slope wobbles by tens of percent on noisy data) and for leaks that grow a
/// little sublinearly, while a site that has clearly slowed down is not called a leak.
pub const LEAK_RECENT_MIN_SHARE: f64 = 0.25;

/// Growth has stopped (a plateau) when the recent window's slope is below this share of
/// the whole-run slope, i.e. "about zero relative to how the site grew".
pub const PLATEAU_RECENT_MAX_SHARE: f64 = 0.10;

/// Growth has also stopped when the rise fitted over the last third of the samples is at
/// most this share of the site's net growth: the last third is flat. Over a third of the
/// run the fitted rise averages noise out far better than the short recent window does.
pub const PLATEAU_TAIL_MAX_SHARE: f64 = 0.10;

/// Old allocations must keep surviving for a leak: the `--min-age` outstanding bytes must
/// grow by at least this share of the outstanding growth. Not 1, because aged bytes lag
/// the outstanding ones by `--min-age`; above 0, because growth made only of young
/// allocations may still be freed (a queue that is backing up, not a leak, yet).
pub const AGED_MIN_SHARE: f64 = 0.25;

/// Net growth below this many bytes is never material: a page is the granularity at which
/// the process's footprint changes at all, and a few stray allocations stay under it.
pub const MIN_MATERIAL_GROWTH_BYTES: f64 = 4096.0;

/// Net growth must exceed this many standard deviations of the sample-to-sample noise to
/// be material (the usual three-sigma rule: noise alone rarely gets there).
pub const NOISE_MULTIPLE: f64 = 3.0;

/// Net growth must also be at least this share of the outstanding range (max − min): when
/// the site swings far more than it grows, what looks like growth is where the swing
/// happened to be at the ends of the run. Steady growth scores about 0.67 here.
pub const GROWTH_MIN_SHARE_OF_SWING: f64 = 0.25;

/// Churn: the site allocated at least this many times its peak outstanding bytes, so at
/// least three quarters of everything it allocated was freed again.
pub const CHURN_MIN_TURNOVER: f64 = 4.0;

/// Bytes per minute (weighted by R²) that map to the middle of a class's score band in
/// [`Growth::rank_key`]; around this size, ranking resolution is best.
pub const RANK_STRENGTH_SCALE: f64 = 1_048_576.0;

/// x of the work axis is in MiB, so its slope reads as bytes per MiB processed.
const BYTES_PER_MIB: f64 = 1_048_576.0;
/// Bytes a process must have read and written in all for a slope per MiB of that work to mean
/// anything (below: null, shown `n/a`).
pub const MIN_PROCESSED_BYTES: f64 = BYTES_PER_MIB;
/// x of the time axis is in minutes, so its slope reads as bytes per minute.
const SECONDS_PER_MINUTE: f64 = 60.0;
/// Turns a median absolute deviation into a standard deviation for normal noise.
const MAD_TO_SIGMA: f64 = 1.4826;
/// Keeps a score strictly inside its class's band so that no strength, however large,
/// ties with the next class up.
const RANK_MAX_BAND_FRACTION: f64 = 0.999_999;

/// One reading of one allocation site, taken every sampling interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Seconds since tracing started.
    pub t_s: f64,
    /// Bytes the process has processed so far, per `--processed` (cumulative, never decreasing).
    pub processed_bytes: u64,
    /// Bytes allocated at this site and not yet freed.
    pub outstanding_bytes: u64,
    /// The part of `outstanding_bytes` allocated longer than `--min-age` ago.
    pub aged_outstanding_bytes: u64,
}

/// A site's series of samples, kept to at most `capacity` samples however long the run.
///
/// The buffer keeps every `stride`-th sample pushed (the first one included) plus the
/// newest one. When it overflows it drops every other kept sample and doubles the
/// stride, so the whole run stays covered with even spacing at half the density. The
/// first and the newest sample are always kept.
#[derive(Clone, Debug)]
pub struct SeriesBuffer {
    /// Kept samples, oldest first.
    samples: Vec<Sample>,
    /// Most samples kept.
    capacity: usize,
    /// Keep the pushed samples whose index is a multiple of this ("on the grid").
    stride: u64,
    /// Samples pushed so far; the index of the next one.
    pushed: u64,
    /// The last kept sample is the newest one but not on the grid: the next push
    /// replaces it, so the grid stays evenly spaced.
    newest_off_grid: bool,
}

impl SeriesBuffer {
    /// An empty buffer holding at most `capacity` samples (at least [`MIN_CAPACITY`]).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(MIN_CAPACITY);
        Self {
            samples: Vec::with_capacity(capacity.saturating_add(1)),
            capacity,
            stride: 1,
            pushed: 0,
            newest_off_grid: false,
        }
    }

    /// Adds the newest sample; samples are expected in time order.
    pub fn push(&mut self, sample: Sample) {
        let index = self.pushed;
        self.pushed = self.pushed.saturating_add(1);
        if self.newest_off_grid {
            // It was only kept for being the newest, which it no longer is.
            self.samples.pop();
        }
        // The stride starts at 1 and only ever doubles, so it is never zero.
        self.newest_off_grid = !index.is_multiple_of(self.stride);
        self.samples.push(sample);
        if self.samples.len() > self.capacity {
            self.halve();
        }
    }

    /// Drops every other grid sample and doubles the stride, keeping the newest sample.
    fn halve(&mut self) {
        let off_grid_newest = if self.newest_off_grid {
            self.samples.pop()
        } else {
            None
        };
        let grid_len = self.samples.len();
        let last_on_grid = self.samples.last().copied();
        let mut position = 0_usize;
        self.samples.retain(|_| {
            let keep = position.is_multiple_of(2);
            position += 1;
            keep
        });
        self.stride = self.stride.saturating_mul(2);
        self.newest_off_grid = false;
        // An even grid length means its last sample sat at an odd position and was just
        // dropped; if it was the newest, it comes back as the off-grid newest sample.
        let newest = off_grid_newest.or(if grid_len.is_multiple_of(2) {
            last_on_grid
        } else {
            None
        });
        if let Some(newest) = newest {
            self.samples.push(newest);
            self.newest_off_grid = true;
        }
    }

    /// The kept samples, oldest first; the last one is the newest pushed.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }
}

/// Introspection for the tests of the downsampling.
#[cfg(test)]
impl SeriesBuffer {
    /// How many samples are kept (at most [`SeriesBuffer::capacity`]).
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no sample was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The most samples the buffer keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many pushed samples each kept sample currently stands for.
    pub fn stride(&self) -> u64 {
        self.stride
    }

    /// How many samples were pushed in total, kept or not.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }
}

impl Default for SeriesBuffer {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

/// A least-squares line `y = slope * x + intercept` through `n` points.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fit {
    /// Change of y per unit of x.
    pub slope: f64,
    /// Fitted y at x = 0.
    pub intercept: f64,
    /// Share of y's variance the line explains, in [0, 1]; `None` when y does not vary
    /// at all (a flat series is fitted exactly by slope 0, but there is no variance for
    /// R² to be a share of, and 0/0 is not a number worth reporting).
    pub r2: Option<f64>,
    /// Points the line was fitted through.
    pub n: usize,
}

/// Fits a least-squares line through the points `(xs[i], ys[i])`.
///
/// `None` when the slices differ in length, hold fewer than [`MIN_FIT_SAMPLES`] points,
/// contain a non-finite value, or when x does not vary (no slope can be told). A flat y
/// gives slope exactly 0 and `r2: None`.
pub fn least_squares(xs: &[f64], ys: &[f64]) -> Option<Fit> {
    let n = xs.len();
    if n != ys.len() || n < MIN_FIT_SAMPLES {
        return None;
    }
    if xs.iter().chain(ys).any(|value| !value.is_finite()) {
        return None;
    }
    if all_equal(xs) {
        return None;
    }
    if let Some(&level) = ys.first().filter(|_| all_equal(ys)) {
        // Exactly flat: say so exactly, without rounding noise in the slope.
        return Some(Fit {
            slope: 0.0,
            intercept: level,
            r2: None,
            n,
        });
    }
    let count = n as f64; // n >= MIN_FIT_SAMPLES, so never zero
    let mean_x = xs.iter().sum::<f64>() / count;
    let mean_y = ys.iter().sum::<f64>() / count;
    // Centered sums: far less cancellation than the textbook one-pass formula when x is
    // large (processed MiB, minutes into a long run) and varies comparatively little.
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for (&x, &y) in xs.iter().zip(ys) {
        let (dx, dy) = (x - mean_x, y - mean_y);
        sxx += dx * dx;
        sxy += dx * dy;
        syy += dy * dy;
    }
    if sxx <= 0.0 || !sxx.is_finite() {
        return None;
    }
    let slope = sxy / sxx;
    let intercept = mean_y - slope * mean_x;
    if !slope.is_finite() || !intercept.is_finite() {
        return None;
    }
    // R² = sxy² / (sxx · syy), written as two quotients so the product cannot overflow.
    let r2 = if syy > 0.0 {
        Some(slope * (sxy / syy))
            .filter(|r2| r2.is_finite())
            .map(|r2| r2.clamp(0.0, 1.0))
    } else {
        None
    };
    Some(Fit {
        slope,
        intercept,
        r2,
        n,
    })
}

impl GrowthClass {
    /// Rank band of the class, higher = more likely a leak. Unknown sits above churn
    /// because it may still hide a leak, while churn is understood and bounded.
    fn rank_band(self) -> f64 {
        match self {
            GrowthClass::LeakSuspect => 3.0,
            GrowthClass::Plateau => 2.0,
            GrowthClass::Unknown | GrowthClass::HeapGrowth => 1.0,
            GrowthClass::Churn => 0.0,
        }
    }
}

impl Growth {
    /// Leak-likelihood score for ranking sites: higher = more likely a leak.
    ///
    /// The class decides the band (leak suspects in [3, 4), plateaus in [2, 3), unknown
    /// in [1, 2), churn in [0, 1)), so any leak suspect outranks any plateau. Within a
    /// band, sites rank by `bytes_per_min * r2_time` (fast, steady growth first), squashed
    /// into the band; missing, negative or non-finite values count as no growth.
    pub fn rank_key(&self) -> f64 {
        let rate = self
            .bytes_per_min
            .filter(|rate| rate.is_finite() && *rate > 0.0);
        let fit = self
            .r2_time
            .filter(|r2| r2.is_finite())
            .map(|r2| r2.clamp(0.0, 1.0));
        let strength = match (rate, fit) {
            (Some(rate), Some(r2)) => rate * r2,
            _ => 0.0,
        };
        // RANK_STRENGTH_SCALE > 0 and strength >= 0, so the denominator is never zero.
        let fraction = (strength / (strength + RANK_STRENGTH_SCALE)).min(RANK_MAX_BAND_FRACTION);
        self.class.rank_band() + fraction
    }
}

/// Sorts site ids from most to least likely to leak, by [`Growth::rank_key`].
///
/// `growth_of` looks up a site's growth; sites without one go last. Ties keep their
/// input order.
pub fn sort_by_leak_likelihood<'g, Id>(
    ids: &mut [Id],
    mut growth_of: impl FnMut(&Id) -> Option<&'g Growth>,
) {
    ids.sort_by(|a, b| {
        let key_a = growth_of(a).map_or(f64::NEG_INFINITY, Growth::rank_key);
        let key_b = growth_of(b).map_or(f64::NEG_INFINITY, Growth::rank_key);
        key_b.total_cmp(&key_a)
    });
}

/// Analyzes one site's series (oldest first).
///
/// `total_allocated_bytes` is everything the site allocated during the run (needed to
/// recognise churn). `window` is how many of the newest samples make the recent fits;
/// it is raised to [`MIN_FIT_SAMPLES`], and a window covering the whole series makes
/// the recent fits equal the whole-run ones.
pub fn analyze(series: &[Sample], total_allocated_bytes: u64, window: usize) -> Growth {
    let processed_mib: Vec<f64> = series
        .iter()
        .map(|sample| sample.processed_bytes as f64 / BYTES_PER_MIB)
        .collect();
    let minutes: Vec<f64> = series
        .iter()
        .map(|sample| sample.t_s / SECONDS_PER_MINUTE)
        .collect();
    let outstanding: Vec<f64> = series
        .iter()
        .map(|sample| sample.outstanding_bytes as f64)
        .collect();
    let aged: Vec<f64> = series
        .iter()
        .map(|sample| sample.aged_outstanding_bytes as f64)
        .collect();

    let recent_start = series.len() - window.max(MIN_FIT_SAMPLES).min(series.len());
    // Below 1 MiB of work a slope per MiB divides by almost nothing (a program that read a few
    // KiB would "grow" by TiB per MiB): the work axis is then unavailable, not a number.
    let processed_enough = series
        .last()
        .is_some_and(|sample| sample.processed_bytes as f64 >= MIN_PROCESSED_BYTES);
    let by_work = if processed_enough {
        AxisFits::new(&processed_mib, &outstanding, recent_start)
    } else {
        AxisFits::unavailable()
    };
    let by_time = AxisFits::new(&minutes, &outstanding, recent_start);

    let class = classify(
        &[&by_work, &by_time],
        &outstanding,
        &aged,
        total_allocated_bytes,
    );
    Growth {
        bytes_per_mib_processed: by_work.whole.map(|fit| fit.slope),
        bytes_per_min: by_time.whole.map(|fit| fit.slope),
        r2_processed: by_work.whole.and_then(|fit| fit.r2),
        r2_time: by_time.whole.and_then(|fit| fit.r2),
        recent_bytes_per_min: by_time.recent.map(|fit| fit.slope),
        recent_bytes_per_mib_processed: by_work.recent.map(|fit| fit.slope),
        class,
        samples: series.len(),
    }
}

/// Fits of outstanding bytes against one x axis (MiB processed, or minutes).
struct AxisFits {
    /// Fit over the whole series.
    whole: Option<Fit>,
    /// Fit over the recent window.
    recent: Option<Fit>,
    /// Fit over the last third of the samples.
    tail: Option<Fit>,
    /// x covered by the last third of the samples.
    tail_span: f64,
}

impl AxisFits {
    /// No fits: the axis has no say.
    fn unavailable() -> Self {
        Self {
            whole: None,
            recent: None,
            tail: None,
            tail_span: 0.0,
        }
    }

    /// Fits `ys` against `xs`, the recent window starting at index `recent_start`.
    fn new(xs: &[f64], ys: &[f64], recent_start: usize) -> Self {
        let tail_start = xs.len() - (xs.len() / 3).max(MIN_FIT_SAMPLES).min(xs.len());
        let tail_xs = &xs[tail_start..];
        let tail_span = match (tail_xs.first(), tail_xs.last()) {
            (Some(first), Some(last)) => last - first,
            _ => 0.0,
        };
        Self {
            whole: least_squares(xs, ys),
            recent: least_squares(&xs[recent_start..], &ys[recent_start..]),
            tail: least_squares(tail_xs, &ys[tail_start..]),
            tail_span,
        }
    }

    /// How growth along this axis looks, given the site's (positive) net growth.
    fn trend(&self, net_growth: f64) -> Trend {
        let Some(whole) = self.whole.filter(|fit| fit.slope > 0.0) else {
            return Trend::default();
        };
        let tail_flat = self
            .tail
            .is_some_and(|tail| tail.slope * self.tail_span <= PLATEAU_TAIL_MAX_SHARE * net_growth);
        let recent_slope = self.recent.map(|fit| fit.slope);
        // Slopes are compared by multiplying, not dividing: whole.slope > 0 here, but
        // this way no ratio has to be guarded at all.
        let recent_stalled =
            recent_slope.is_some_and(|slope| slope < PLATEAU_RECENT_MAX_SHARE * whole.slope);
        let recent_growing =
            recent_slope.is_some_and(|slope| slope >= LEAK_RECENT_MIN_SHARE * whole.slope);
        Trend {
            steady: whole.r2.is_some_and(|r2| r2 >= LEAK_MIN_R2),
            still_growing: recent_growing && !tail_flat,
            stopped: recent_stalled || tail_flat,
        }
    }
}

/// Growth along one axis. With no recent work (the recent fit per MiB is `None`), the
/// work axis is neither growing nor stopped: it simply has no say.
#[derive(Default)]
struct Trend {
    /// Positive whole-run slope with a good fit.
    steady: bool,
    /// The recent window and the last third both still grow.
    still_growing: bool,
    /// The recent window or the last third is flat compared with the whole run.
    stopped: bool,
}

/// The verdict for one site; see [`GrowthClass`] and the thresholds above.
fn classify(
    axes: &[&AxisFits],
    outstanding: &[f64],
    aged: &[f64],
    total_allocated_bytes: u64,
) -> GrowthClass {
    if outstanding.len() < MIN_CLASSIFY_SAMPLES {
        return GrowthClass::Unknown;
    }
    let Some(grown) = net_growth(outstanding) else {
        return GrowthClass::Unknown;
    };
    if is_material(grown, outstanding) {
        let trends: Vec<Trend> = axes.iter().map(|axis| axis.trend(grown)).collect();
        let old_allocations_survive =
            net_growth(aged).is_some_and(|aged_grown| aged_grown >= AGED_MIN_SHARE * grown);
        if old_allocations_survive
            && trends
                .iter()
                .any(|trend| trend.steady && trend.still_growing)
        {
            return GrowthClass::LeakSuspect;
        }
        if trends.iter().any(|trend| trend.still_growing) {
            // Growing, but irregularly or with young allocations only: can't say yet.
            return GrowthClass::Unknown;
        }
        if trends.iter().any(|trend| trend.stopped) {
            return GrowthClass::Plateau;
        }
        return GrowthClass::Unknown;
    }
    let peak = outstanding.iter().copied().fold(0.0, f64::max);
    // Compared in f64 so that no product can overflow.
    let allocated = total_allocated_bytes as f64;
    if total_allocated_bytes > 0 && allocated >= CHURN_MIN_TURNOVER * peak {
        return GrowthClass::Churn;
    }
    GrowthClass::Unknown
}

/// Mean of the last third of the series minus the mean of its first third: how much the
/// site grew, with the averaging taking out most of the noise.
fn net_growth(series: &[f64]) -> Option<f64> {
    let third = series.len() / 3;
    let first = mean(&series[..third])?;
    let last = mean(&series[series.len() - third..])?;
    Some(last - first)
}

/// Whether a net growth stands out of the floor, the noise and the swings of the series.
fn is_material(net_growth: f64, series: &[f64]) -> bool {
    let (low, high) = series
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), &value| {
            (low.min(value), high.max(value))
        });
    let swing = if high >= low { high - low } else { 0.0 };
    net_growth >= MIN_MATERIAL_GROWTH_BYTES
        && net_growth >= NOISE_MULTIPLE * difference_noise(series)
        && net_growth >= GROWTH_MIN_SHARE_OF_SWING * swing
}

/// Standard deviation of the noise on a series, estimated from the spread of its
/// sample-to-sample differences around their median. A steady trend shifts all the
/// differences alike and so does not count as noise; the median keeps a few jumps from
/// counting either.
fn difference_noise(series: &[f64]) -> f64 {
    let mut differences: Vec<f64> = series.windows(2).map(|pair| pair[1] - pair[0]).collect();
    let Some(center) = median(&mut differences) else {
        return 0.0;
    };
    let mut deviations: Vec<f64> = differences
        .iter()
        .map(|difference| (difference - center).abs())
        .collect();
    // A difference of two samples carries the noise of both: divide by √2.
    median(&mut deviations).map_or(0.0, |mad| MAD_TO_SIGMA * mad / SQRT_2)
}

/// Arithmetic mean; `None` for no values.
fn mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    Some(values.iter().sum::<f64>() / values.len() as f64)
}

/// Median (sorts `values` in place); `None` for no values.
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => None,
        len if len % 2 == 1 => values.get(middle).copied(),
        _ => Some((values.get(middle - 1)? + values.get(middle)?) / 2.0),
    }
}

/// Whether all values are exactly equal: a zero variance, without rounding doubts.
fn all_equal(values: &[f64]) -> bool {
    values.windows(2).all(|pair| pair[0] == pair[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const KIB: u64 = 1 << 10;

    /// Relative closeness, for values whose exact answer is known.
    fn close(actual: f64, expected: f64, relative: f64) -> bool {
        (actual - expected).abs() <= relative * expected.abs().max(f64::MIN_POSITIVE)
    }

    /// Deterministic pseudo-noise in [-1, 1) (xorshift64), so tests need no rand crate.
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1_u64 << 52) as f64 - 1.0
        }
    }

    /// A sample every 10 s, `processed` MiB of work per sample, outstanding from `level`.
    fn series(n: u64, mib_per_sample: u64, mut level: impl FnMut(u64) -> u64) -> Vec<Sample> {
        (0..n)
            .map(|i| {
                let outstanding = level(i);
                Sample {
                    t_s: i as f64 * 10.0,
                    processed_bytes: i * mib_per_sample * MIB,
                    outstanding_bytes: outstanding,
                    aged_outstanding_bytes: outstanding,
                }
            })
            .collect()
    }

    fn assert_no_nan(growth: &Growth) {
        for value in [
            growth.bytes_per_mib_processed,
            growth.bytes_per_min,
            growth.r2_processed,
            growth.r2_time,
            growth.recent_bytes_per_min,
            growth.recent_bytes_per_mib_processed,
        ]
        .into_iter()
        .flatten()
        {
            assert!(value.is_finite(), "{growth:?}");
        }
        assert!(growth.rank_key().is_finite());
    }

    #[test]
    fn least_squares_fits_a_perfect_line_exactly() {
        let xs: Vec<f64> = (0..10).map(f64::from).collect();
        let ys: Vec<f64> = xs.iter().map(|x| 3.0 * x + 2.0).collect();
        let fit = least_squares(&xs, &ys).expect("a line fits");
        assert!(close(fit.slope, 3.0, 1e-12));
        assert!(close(fit.intercept, 2.0, 1e-12));
        assert!(close(fit.r2.expect("y varies"), 1.0, 1e-12));
        assert_eq!(fit.n, 10);
    }

    #[test]
    fn least_squares_refuses_degenerate_input() {
        assert_eq!(least_squares(&[0.0, 1.0], &[0.0, 1.0]), None, "two points");
        assert_eq!(
            least_squares(&[0.0, 1.0, 2.0], &[0.0, 1.0]),
            None,
            "lengths"
        );
        assert_eq!(
            least_squares(&[0.0, 1.0, f64::NAN], &[0.0, 1.0, 2.0]),
            None,
            "NaN"
        );
        assert_eq!(
            least_squares(&[0.0, 1.0, 2.0], &[0.0, f64::INFINITY, 2.0]),
            None,
            "infinity"
        );
        assert_eq!(
            least_squares(&[5.0; 4], &[0.0, 1.0, 2.0, 3.0]),
            None,
            "x constant"
        );
        let flat = least_squares(&[0.0, 1.0, 2.0, 3.0], &[7.0; 4]).expect("flat fits");
        assert_eq!(flat.slope, 0.0);
        assert_eq!(flat.intercept, 7.0);
        assert_eq!(flat.r2, None);
    }

    #[test]
    fn perfect_line_gives_exact_slopes_and_r2_one() {
        // 4 MiB processed per 10 s, a quarter of it retained: 262144 bytes per MiB
        // processed and 1 MiB per 10 s = 6 MiB per minute.
        let line = series(120, 4, |i| i * MIB);
        let growth = analyze(&line, 1 << 40, DEFAULT_RECENT_WINDOW);
        let per_mib = growth.bytes_per_mib_processed.expect("work was processed");
        let per_min = growth.bytes_per_min.expect("time passed");
        assert!(close(per_mib, 262_144.0, 1e-9), "{per_mib}");
        assert!(close(per_min, 6.0 * MIB as f64, 1e-9), "{per_min}");
        assert!(close(growth.r2_processed.expect("varies"), 1.0, 1e-9));
        assert!(close(growth.r2_time.expect("varies"), 1.0, 1e-9));
        let recent_per_min = growth.recent_bytes_per_min.expect("recent fit");
        let recent_per_mib = growth.recent_bytes_per_mib_processed.expect("recent fit");
        assert!(close(recent_per_min, 6.0 * MIB as f64, 1e-9));
        assert!(close(recent_per_mib, 262_144.0, 1e-9));
        assert_eq!(growth.class, GrowthClass::LeakSuspect);
        assert_eq!(growth.samples, 120);
    }

    #[test]
    fn noisy_line_is_a_leak_suspect_with_close_slope() {
        // 4 KiB per sample (24 KiB/min) under uniform noise of ±64 KiB.
        let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
        let noisy = series(300, 1, |i| {
            let clean = (MIB + 4 * KIB * i) as f64;
            (clean + 64.0 * KIB as f64 * noise.next()) as u64
        });
        let growth = analyze(&noisy, 1 << 40, DEFAULT_RECENT_WINDOW);
        let per_min = growth.bytes_per_min.expect("time passed");
        let per_mib = growth.bytes_per_mib_processed.expect("work was processed");
        assert!(close(per_min, 24.0 * KIB as f64, 0.02), "{per_min}");
        assert!(close(per_mib, 4.0 * KIB as f64, 0.02), "{per_mib}");
        assert!(growth.r2_time.expect("varies") > 0.95, "{growth:?}");
        assert_eq!(growth.class, GrowthClass::LeakSuspect, "{growth:?}");
    }

    #[test]
    fn recent_window_fits_only_the_newest_samples() {
        // 1 KiB per sample for 100 samples, then 3 KiB per sample.
        let bent = series(150, 1, |i| {
            if i < 100 {
                i * KIB
            } else {
                100 * KIB + (i - 100) * 3 * KIB
            }
        });
        let growth = analyze(&bent, 1 << 40, 30);
        let recent = growth.recent_bytes_per_min.expect("recent fit");
        assert!(close(recent, 18.0 * KIB as f64, 1e-9), "{recent}");
        let whole = growth.bytes_per_min.expect("whole fit");
        assert!(whole < recent * 0.9, "{whole} vs {recent}");
        // A window below three samples is raised to three; one longer than the series
        // is the whole series.
        let tiny = analyze(&bent, 1 << 40, 0);
        assert!(close(
            tiny.recent_bytes_per_min.expect("three samples"),
            18.0 * KIB as f64,
            1e-9
        ));
        let huge = analyze(&bent, 1 << 40, 10_000);
        assert_eq!(huge.recent_bytes_per_min, huge.bytes_per_min);
    }

    #[test]
    fn growth_then_flat_last_half_is_a_plateau() {
        let clean = series(200, 1, |i| MIB + i.min(100) * 16 * KIB);
        let growth = analyze(&clean, 1 << 40, DEFAULT_RECENT_WINDOW);
        assert_eq!(growth.class, GrowthClass::Plateau, "{growth:?}");
        assert!(growth.bytes_per_min.expect("whole fit") > 0.0);
        assert_eq!(growth.recent_bytes_per_min, Some(0.0));

        let mut noise = Noise(42);
        let noisy = series(200, 1, |i| {
            let clean = (MIB + i.min(100) * 16 * KIB) as f64;
            (clean + 8.0 * KIB as f64 * noise.next()) as u64
        });
        let growth = analyze(&noisy, 1 << 40, DEFAULT_RECENT_WINDOW);
        assert_eq!(growth.class, GrowthClass::Plateau, "{growth:?}");
    }

    #[test]
    fn verdicts_hold_across_noise_seeds() {
        // Rise of 1.6 MiB, then flat, under ±64 KiB of noise: a 30-sample recent slope
        // is then often above a tenth of the whole-run slope by chance, and the flat
        // last third must still recognise the plateau.
        let mut recent_alone_would_miss = 0;
        for seed in 1..=40 {
            let mut noise = Noise(seed);
            let plateau = series(200, 1, |i| {
                let clean = (MIB + i.min(100) * 16 * KIB) as f64;
                (clean + 64.0 * KIB as f64 * noise.next()) as u64
            });
            let growth = analyze(&plateau, 1 << 40, DEFAULT_RECENT_WINDOW);
            assert_eq!(
                growth.class,
                GrowthClass::Plateau,
                "seed {seed}: {growth:?}"
            );
            let recent = growth.recent_bytes_per_min.expect("recent fit");
            let whole = growth.bytes_per_min.expect("whole fit");
            if recent >= PLATEAU_RECENT_MAX_SHARE * whole {
                recent_alone_would_miss += 1;
            }

            let mut noise = Noise(seed);
            let leak = series(300, 1, |i| {
                let clean = (MIB + 4 * KIB * i) as f64;
                (clean + 64.0 * KIB as f64 * noise.next()) as u64
            });
            let growth = analyze(&leak, 1 << 40, DEFAULT_RECENT_WINDOW);
            assert_eq!(
                growth.class,
                GrowthClass::LeakSuspect,
                "seed {seed}: {growth:?}"
            );
        }
        assert!(recent_alone_would_miss > 0, "the tail rule is exercised");
    }

    #[test]
    fn growth_buried_in_noise_is_not_material() {
        // 120 KiB of trend over the run under ±100 KiB of noise, with a large turnover.
        for seed in 1..=20 {
            let mut noise = Noise(seed);
            let buried = series(200, 1, |i| {
                let clean = (MIB + i * 600) as f64;
                (clean + 100.0 * KIB as f64 * noise.next()) as u64
            });
            let growth = analyze(&buried, 1 << 40, DEFAULT_RECENT_WINDOW);
            assert_eq!(growth.class, GrowthClass::Churn, "seed {seed}: {growth:?}");
        }
    }

    #[test]
    fn growth_stopping_within_the_recent_window_is_a_plateau() {
        // Flat only for the last 30 samples: the last third still grew, but the recent
        // window did not.
        let late_stop = series(200, 1, |i| MIB + i.min(170) * 16 * KIB);
        let growth = analyze(&late_stop, 1 << 40, 30);
        assert_eq!(growth.class, GrowthClass::Plateau, "{growth:?}");
    }

    #[test]
    fn bounded_oscillation_with_large_turnover_is_churn() {
        let mut noise = Noise(7);
        let churn = series(200, 1, |_| {
            (256.0 * KIB as f64 + 48.0 * KIB as f64 * noise.next().abs()) as u64
        });
        let growth = analyze(&churn, 100 * MIB, DEFAULT_RECENT_WINDOW);
        assert_eq!(growth.class, GrowthClass::Churn, "{growth:?}");
        assert_no_nan(&growth);
        // A sawtooth (filled then freed in bulk) is churn too.
        let sawtooth = series(200, 1, |i| (i % 20) * 32 * KIB);
        let growth = analyze(&sawtooth, 100 * MIB, DEFAULT_RECENT_WINDOW);
        assert_eq!(growth.class, GrowthClass::Churn, "{growth:?}");
        // Little allocated beyond what is held: not churn, and nothing else either.
        let growth = analyze(&churn, 320 * KIB, DEFAULT_RECENT_WINDOW);
        assert_eq!(growth.class, GrowthClass::Unknown, "{growth:?}");
    }

    #[test]
    fn one_or_two_samples_are_unknown_without_slopes() {
        for n in 0..3 {
            let short = series(n, 1, |i| i * MIB);
            let growth = analyze(&short, 1 << 40, DEFAULT_RECENT_WINDOW);
            assert_eq!(growth.class, GrowthClass::Unknown);
            assert_eq!(growth.samples, n as usize);
            assert_eq!(growth.bytes_per_mib_processed, None);
            assert_eq!(growth.bytes_per_min, None);
            assert_eq!(growth.r2_processed, None);
            assert_eq!(growth.r2_time, None);
            assert_eq!(growth.recent_bytes_per_min, None);
            assert_eq!(growth.recent_bytes_per_mib_processed, None);
        }
        // Three samples fit, but are too few for a verdict.
        let three = analyze(&series(3, 1, |i| i * MIB), 1 << 40, 30);
        assert!(three.bytes_per_min.is_some());
        assert_eq!(three.class, GrowthClass::Unknown);
    }

    #[test]
    fn under_one_mib_processed_has_no_slope_per_mib() {
        // 60 samples, 10 KiB read in all (the "+21.0 TiB per MiB"): no per-MiB slope.
        let little: Vec<Sample> = series(60, 0, |i| i * 64 * KIB)
            .into_iter()
            .enumerate()
            .map(|(i, sample)| Sample {
                processed_bytes: i as u64 * 10 * KIB / 60,
                ..sample
            })
            .collect();
        let growth = analyze(&little, 1 << 40, DEFAULT_RECENT_WINDOW);
        assert_eq!(growth.bytes_per_mib_processed, None);
        assert_eq!(growth.r2_processed, None);
        assert_eq!(growth.recent_bytes_per_mib_processed, None);
        assert!(growth.bytes_per_min.is_some_and(|s| s > 0.0));
        // From 1 MiB on, the slope is a number again.
        let enough = series(60, 1, |i| i * 64 * KIB);
        let per_mib = analyze(&enough, 1 << 40, DEFAULT_RECENT_WINDOW).bytes_per_mib_processed;
        assert!(
            per_mib.is_some_and(|s| (s - 64.0 * KIB as f64).abs() < 1.0),
            "{per_mib:?}"
        );
    }

    #[test]
    fn no_work_processed_leaves_only_the_time_slope() {
        let idle: Vec<Sample> = series(60, 0, |i| i * 64 * KIB)
            .into_iter()
            .map(|sample| Sample {
                processed_bytes: 123_456,
                ..sample
            })
            .collect();
        let growth = analyze(&idle, 1 << 40, DEFAULT_RECENT_WINDOW);
        assert_eq!(growth.bytes_per_mib_processed, None);
        assert_eq!(growth.r2_processed, None);
        assert_eq!(growth.recent_bytes_per_mib_processed, None);
        let per_min = growth.bytes_per_min.expect("time passed");
        assert!(close(per_min, 6.0 * 64.0 * KIB as f64, 1e-9), "{per_min}");
        assert_eq!(growth.class, GrowthClass::LeakSuspect, "{growth:?}");
    }

    #[test]
    fn flat_zero_series_has_no_nan() {
        let zero = series(50, 1, |_| 0);
        let growth = analyze(&zero, 0, DEFAULT_RECENT_WINDOW);
        assert_no_nan(&growth);
        assert_eq!(growth.bytes_per_min, Some(0.0));
        assert_eq!(growth.bytes_per_mib_processed, Some(0.0));
        assert_eq!(growth.r2_time, None);
        assert_eq!(growth.r2_processed, None);
        assert_eq!(growth.class, GrowthClass::Unknown);
        // Allocated and freed everything: churn.
        assert_eq!(analyze(&zero, MIB, 30).class, GrowthClass::Churn);
        // Not even time passing: nothing to fit against.
        let frozen = vec![Sample::default(); 10];
        let growth = analyze(&frozen, 0, DEFAULT_RECENT_WINDOW);
        assert_no_nan(&growth);
        assert_eq!(growth.bytes_per_min, None);
        assert_eq!(growth.class, GrowthClass::Unknown);
    }

    #[test]
    fn growth_of_young_allocations_only_is_not_a_leak() {
        let young: Vec<Sample> = series(100, 1, |i| i * MIB)
            .into_iter()
            .map(|sample| Sample {
                aged_outstanding_bytes: 0,
                ..sample
            })
            .collect();
        let growth = analyze(&young, 1 << 40, DEFAULT_RECENT_WINDOW);
        assert_eq!(growth.class, GrowthClass::Unknown, "{growth:?}");
    }

    #[test]
    fn irregular_growth_is_not_a_leak() {
        // Grows in two jumps, long apart: a poor line, whatever its slope.
        let jumpy = series(90, 1, |i| match i {
            0..=9 => 0,
            10..=79 => 10 * MIB,
            _ => 12 * MIB,
        });
        let growth = analyze(&jumpy, 1 << 40, 30);
        assert!(growth.r2_time.expect("varies") < LEAK_MIN_R2, "{growth:?}");
        assert_ne!(growth.class, GrowthClass::LeakSuspect, "{growth:?}");
    }

    #[test]
    fn buffer_never_exceeds_capacity_and_keeps_first_and_newest() {
        for capacity in [0, 1, 4, 5, 7, 16, 100, 512] {
            let mut buffer = SeriesBuffer::new(capacity);
            assert!(buffer.is_empty());
            for i in 0..5_000_u64 {
                buffer.push(Sample {
                    t_s: i as f64,
                    ..Sample::default()
                });
                let kept = buffer.samples();
                assert!(buffer.len() <= capacity.max(MIN_CAPACITY), "{capacity} {i}");
                assert_eq!(kept.first().map(|s| s.t_s), Some(0.0));
                assert_eq!(kept.last().map(|s| s.t_s), Some(i as f64));
                assert!(kept.windows(2).all(|pair| pair[0].t_s < pair[1].t_s));
            }
            assert_eq!(buffer.pushed(), 5_000);
            assert!(buffer.len() >= buffer.capacity() / 2, "{capacity}");
        }
    }

    #[test]
    fn buffer_keeps_samples_evenly_spaced() {
        let mut buffer = SeriesBuffer::new(64);
        for i in 0..10_007_u64 {
            buffer.push(Sample {
                t_s: i as f64,
                ..Sample::default()
            });
        }
        let stride = buffer.stride() as f64;
        let gaps: Vec<f64> = buffer
            .samples()
            .windows(2)
            .map(|pair| pair[1].t_s - pair[0].t_s)
            .collect();
        let (last, grid) = gaps.split_last().expect("many samples");
        assert!(grid.iter().all(|&gap| gap == stride), "{gaps:?}");
        assert!(*last > 0.0 && *last <= stride, "{gaps:?}");
    }

    #[test]
    fn long_perfect_line_keeps_its_exact_slope_after_downsampling() {
        let mut buffer = SeriesBuffer::new(DEFAULT_CAPACITY);
        for sample in series(100_000, 4, |i| i * MIB) {
            buffer.push(sample);
        }
        assert!(buffer.len() <= DEFAULT_CAPACITY);
        assert!(buffer.len() >= DEFAULT_CAPACITY / 2);
        assert_eq!(buffer.samples().first().map(|s| s.t_s), Some(0.0));
        assert_eq!(
            buffer.samples().last().map(|s| s.t_s),
            Some(99_999.0 * 10.0)
        );
        let growth = analyze(buffer.samples(), 1 << 50, DEFAULT_RECENT_WINDOW);
        let per_mib = growth.bytes_per_mib_processed.expect("work was processed");
        let per_min = growth.bytes_per_min.expect("time passed");
        assert!(close(per_mib, 262_144.0, 1e-9), "{per_mib}");
        assert!(close(per_min, 6.0 * MIB as f64, 1e-9), "{per_min}");
        assert!(close(growth.r2_time.expect("varies"), 1.0, 1e-9));
        assert_eq!(growth.class, GrowthClass::LeakSuspect);
    }

    #[test]
    fn ranking_puts_the_leak_before_the_plateau_and_the_churn() {
        let mut noise = Noise(3);
        let leak = analyze(&series(200, 1, |i| i * 4 * KIB), 1 << 40, 30);
        // The plateau grows much faster than the leak before stopping: class still wins.
        let plateau = analyze(&series(200, 1, |i| i.min(100) * MIB), 1 << 40, 30);
        let churn = analyze(
            &series(200, 1, |_| {
                (512.0 * KIB as f64 * (1.5 + noise.next())) as u64
            }),
            1 << 40,
            30,
        );
        assert_eq!(leak.class, GrowthClass::LeakSuspect);
        assert_eq!(plateau.class, GrowthClass::Plateau);
        assert_eq!(churn.class, GrowthClass::Churn);
        assert!(plateau.bytes_per_min > leak.bytes_per_min);

        let growths = [("churn", churn), ("plateau", plateau), ("leak", leak)];
        let mut ids = ["missing", "churn", "plateau", "leak"];
        sort_by_leak_likelihood(&mut ids, |id| {
            growths
                .iter()
                .find(|(name, _)| name == id)
                .map(|(_, growth)| growth)
        });
        assert_eq!(ids, ["leak", "plateau", "churn", "missing"]);
    }

    #[test]
    fn rank_key_orders_faster_steadier_growth_first_within_a_class() {
        let leak = |rate: f64, r2: f64| Growth {
            bytes_per_mib_processed: None,
            bytes_per_min: Some(rate),
            r2_processed: None,
            r2_time: Some(r2),
            recent_bytes_per_min: Some(rate),
            recent_bytes_per_mib_processed: None,
            class: GrowthClass::LeakSuspect,
            samples: 100,
        };
        assert!(leak(2e6, 0.99).rank_key() > leak(1e6, 0.99).rank_key());
        assert!(leak(1e6, 0.99).rank_key() > leak(1e6, 0.85).rank_key());
        let enormous_plateau = Growth {
            class: GrowthClass::Plateau,
            ..leak(f64::MAX, 1.0)
        };
        assert!(enormous_plateau.rank_key() < leak(0.0, 0.0).rank_key());
        let broken = Growth {
            bytes_per_min: Some(f64::NAN),
            ..leak(1.0, 1.0)
        };
        assert_eq!(broken.rank_key(), 3.0);
    }

    #[test]
    fn growth_round_trips_through_json_with_snake_case_classes() {
        let growth = analyze(&series(120, 4, |i| i * MIB), 1 << 40, 30);
        let json = serde_json::to_string(&growth).expect("serializes");
        assert!(json.contains("\"class\":\"leak_suspect\""), "{json}");
        let back: Growth = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, growth);

        let short = analyze(&series(2, 1, |i| i), 0, 30);
        let json = serde_json::to_string(&short).expect("serializes");
        assert!(json.contains("\"bytes_per_min\":null"), "{json}");
        assert_eq!(
            serde_json::from_str::<Growth>(&json).expect("deserializes"),
            short
        );

        for (class, name) in [
            (GrowthClass::LeakSuspect, "\"leak_suspect\""),
            (GrowthClass::Plateau, "\"plateau\""),
            (GrowthClass::Churn, "\"churn\""),
            (GrowthClass::Unknown, "\"unknown\""),
        ] {
            assert_eq!(serde_json::to_string(&class).expect("serializes"), name);
            assert_eq!(
                serde_json::from_str::<GrowthClass>(name).expect("deserializes"),
                class
            );
        }
    }
}
