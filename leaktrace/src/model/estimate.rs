//! Growth mode's leak estimate, from short exact bursts (issue 13).
//!
//! Heap-growth events name the allocation that crossed the heap's top, nearly always a large
//! temporary: they say what grew the heap, not what leaks. So growth mode also attaches the
//! allocator probes for short bursts ([`BurstPlan`] says when and for how long) and follows the
//! blocks a burst saw allocated ([`SurvivalWatch`]) to see which ones survive:
//!
//! - **Samples**: only blocks allocated before the last quarter of a burst (at least 5 ms before
//!   its end) are sampled, and only those still outstanding when the burst ends, so each sample
//!   has lived that long with the free probe attached. A temporary freed within microseconds never becomes one; a block
//!   allocated just before the burst ended (still in use by its request) is not sampled at all.
//! - **Survival**: a sample is then followed by three kinds of evidence, all free of cost to the
//!   target: the free probe of every later burst (its free removes the block from the map), a
//!   later burst's allocator handing out the same address (the kernel settles the old block), or
//!   a later block overlapping it (an allocator never hands out live memory). A sample counts as
//!   surviving once a later burst ended with it still outstanding ("confirmed").
//!   Keeping the free probe attached between bursts was rejected: free's uprobe is the most
//!   expensive probe (about 4.2 us a hit at +0, EBPF-NOTES.md), paid on every free of the
//!   process, which alone breaks a 1% budget on any allocation-heavy service. Reading glibc's
//!   chunk headers (process_vm_readv) was not needed for the workloads measured and would tie
//!   the estimate to one allocator's layout.
//! - **Estimate**: per site, surviving sampled bytes divided by the sampled time give surviving
//!   bytes per second (the bursts sample time uniformly: every allocation of the sampled time is
//!   seen), and divided by the process's bytes processed per second, per MiB processed. The
//!   confidence interval comes from the number of surviving samples k (Poisson, 95%, through
//!   the square-root transform: (sqrt(k) -+ 0.98)^2 / k times the rate).
//! - **Class**: a site is a leak suspect only while its samples keep surviving in the newer
//!   half of the bursts; one whose survivors all date from earlier is a plateau (a cache that
//!   filled); one seen allocating with (almost) nothing surviving is churn.
use std::collections::{BTreeMap, HashMap};

use leaktrace_common::{AllocInfo, SiteKey};

use crate::schema::{EstimatedSite, Frame, GrowthClass, Interval};

/// Blocks followed per process: beyond this, the oldest confirmed survivors are settled (kept
/// as survivors in the per-site tallies, no longer followed), so a long run on a leaking
/// process keeps a bounded map.
const MAX_WATCHED: usize = 100_000;

/// Surviving samples (recent ones) a site needs before it is called a leak suspect, and the
/// bursts (over the run) they must come from: below that, one burst's long-lived requests could
/// make it.
const MIN_SURVIVORS: u64 = 4;
const MIN_SURVIVING_BURSTS: usize = 2;

/// A site whose recent surviving rate fell below this share of its whole-run rate stopped
/// leaking (a cache that filled up).
const STILL_GROWING_SHARE: f64 = 0.25;

/// Allocations seen before a site with no surviving samples is called churn.
const MIN_CHURN_ALLOCATIONS: u64 = 32;

/// The least a sample has lived, with the free probe attached, before its burst ends: a
/// temporary lives microseconds (a request's buffers), far below this.
const MIN_LIFETIME: std::time::Duration = std::time::Duration::from_millis(5);

/// 95% half-width of sqrt(k) for a Poisson count k (1.96 / 2).
const SQRT_HALF_WIDTH: f64 = 0.98;

/// One burst's time span: probes attached at `attached_ns`, detaching from `ended_ns`
/// (CLOCK_MONOTONIC, the kernel's `bpf_ktime_get_ns` base).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BurstWindow {
    pub attached_ns: u64,
    pub ended_ns: u64,
}

impl BurstWindow {
    /// Blocks allocated up to here are samples: they had at least [`MIN_LIFETIME`] (or a
    /// quarter of the burst, if longer) to be freed under the free probe.
    pub fn sample_end_ns(&self) -> u64 {
        let duration = self.ended_ns.saturating_sub(self.attached_ns);
        let lifetime = (duration / 4).max(MIN_LIFETIME.as_nanos() as u64);
        self.ended_ns.saturating_sub(lifetime).max(self.attached_ns)
    }

    fn sampled_s(&self) -> f64 {
        self.sample_end_ns().saturating_sub(self.attached_ns) as f64 / 1e9
    }

    fn samples(&self, timestamp_ns: u64) -> bool {
        (self.attached_ns..=self.sample_end_ns()).contains(&timestamp_ns)
    }
}

#[derive(Clone, Copy, Debug)]
struct Harvested {
    sampled_s: f64,
    /// When the burst ended (CLOCK_MONOTONIC ns): "recent" is by time, not by burst count.
    ended_ns: u64,
}

#[derive(Clone, Copy, Debug)]
struct Watched {
    site: SiteKey,
    size: u64,
    timestamp_ns: u64,
    burst: usize,
    /// A later burst ended with it still outstanding.
    confirmed: bool,
}

/// Survivors no longer followed (see [`MAX_WATCHED`]), per site.
#[derive(Clone, Copy, Debug, Default)]
struct Settled {
    blocks: u64,
    bytes: u64,
}

/// The sampled blocks of one process and what became of them.
#[derive(Debug, Default)]
pub struct SurvivalWatch {
    bursts: Vec<Harvested>,
    watched: BTreeMap<u64, Watched>,
    settled: HashMap<SiteKey, Settled>,
    /// Samples later seen freed, per site.
    freed: HashMap<SiteKey, u64>,
}

/// One site's estimate, before it is named (`frames`) and serialized.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteEstimate {
    pub key: SiteKey,
    pub class: GrowthClass,
    /// 1 = the site most likely to leak, by class then surviving bytes per second.
    pub rank: u32,
    /// Confirmed surviving samples behind the estimate.
    pub samples: u64,
    /// Samples later seen freed.
    pub freed_samples: u64,
    /// Allocations the bursts saw from this site (whole bursts, sampled or not).
    pub allocations_seen: u64,
    pub surviving_sampled_bytes: u64,
    pub surviving_bytes_per_s: f64,
    /// 95% interval of `surviving_bytes_per_s`.
    pub interval: (f64, f64),
    /// Over the bursts of the newer half of the time the bursts span.
    pub recent_surviving_bytes_per_s: f64,
    pub recent_samples: u64,
    /// `surviving_bytes_per_s` over the process's bytes processed per second, per MiB.
    pub surviving_bytes_per_mib: Option<f64>,
    /// `surviving_bytes_per_s` times the run's duration.
    pub estimated_surviving_bytes: u64,
}

impl SurvivalWatch {
    /// Take in what a burst left in the outstanding-allocation map: `blocks` are every block
    /// of the process there now (address, what the probe recorded). Returns the addresses to delete from the map: blocks that are no
    /// sample, and samples known freed.
    pub fn harvest(&mut self, window: BurstWindow, blocks: &[(u64, AllocInfo)]) -> Vec<u64> {
        let burst = self.bursts.len();
        let present: HashMap<u64, &AllocInfo> = blocks.iter().map(|(a, i)| (*a, i)).collect();
        let freed = &mut self.freed;
        let (mut gone, mut replaced) = (0u64, 0u64);
        // Gone from the map: freed while a burst's free probe watched, or its address handed
        // out again (the kernel settled it). Still there: it survived this burst too.
        self.watched.retain(|addr, w| match present.get(addr) {
            Some(info) if info.timestamp_ns == w.timestamp_ns => {
                w.confirmed |= w.burst < burst;
                true
            }
            found => {
                if found.is_some() {
                    replaced += 1;
                } else {
                    gone += 1;
                }
                *freed.entry(w.site).or_default() += 1;
                false
            }
        });
        let before_overlap: u64 = self.freed.values().sum();
        let mut forget = Vec::new();
        for &(addr, info) in blocks {
            if self
                .watched
                .get(&addr)
                .is_some_and(|w| w.timestamp_ns == info.timestamp_ns)
            {
                continue;
            }
            // A block allocated, while every probe was attached, over a sample allocated
            // before it: that sample was freed. (A block allocated while the probes were being
            // attached may have been freed unseen: it proves nothing.)
            if info.timestamp_ns >= window.attached_ns {
                self.forget_overlapping(addr, info.size.max(1), info.timestamp_ns, &mut forget);
            }
            if window.samples(info.timestamp_ns) {
                self.watched.insert(
                    addr,
                    Watched {
                        site: info.site,
                        size: info.size,
                        timestamp_ns: info.timestamp_ns,
                        burst,
                        confirmed: false,
                    },
                );
            } else {
                forget.push(addr);
            }
        }
        log::debug!(
            "burst {burst}: {} blocks in the map, samples freed: {gone} gone, {replaced} address reused, {} overlapped",
            blocks.len(),
            self.freed.values().sum::<u64>() - before_overlap
        );
        self.bursts.push(Harvested {
            sampled_s: window.sampled_s(),
            ended_ns: window.ended_ns,
        });
        self.settle_oldest(&mut forget);
        forget
    }

    /// Samples allocated before `timestamp_ns` that `[start, start + len)` overlaps were freed:
    /// drop them.
    fn forget_overlapping(
        &mut self,
        start: u64,
        len: u64,
        timestamp_ns: u64,
        forget: &mut Vec<u64>,
    ) {
        /// Samples starting below `start` looked at: samples do not overlap one another while
        /// they live, so the nearest few are the only candidates.
        const BELOW: usize = 8;
        let end = start.saturating_add(len);
        let inside = self.watched.range(start..end);
        let below = self
            .watched
            .range(..start)
            .rev()
            .take(BELOW)
            .filter(|(a, w)| a.saturating_add(w.size.max(1)) > start);
        let overlapping: Vec<u64> = inside
            .chain(below)
            .filter(|(_, w)| w.timestamp_ns < timestamp_ns)
            .map(|(a, _)| *a)
            .collect();
        for addr in overlapping {
            if let Some(w) = self.watched.remove(&addr) {
                *self.freed.entry(w.site).or_default() += 1;
                forget.push(addr);
            }
        }
    }

    /// Above [`MAX_WATCHED`], the oldest confirmed samples are settled as survivors.
    fn settle_oldest(&mut self, forget: &mut Vec<u64>) {
        let excess = self.watched.len().saturating_sub(MAX_WATCHED);
        if excess == 0 {
            return;
        }
        let mut oldest: Vec<(u64, u64)> = self
            .watched
            .iter()
            .filter(|(_, w)| w.confirmed)
            .map(|(a, w)| (w.timestamp_ns, *a))
            .collect();
        oldest.sort_unstable();
        for (_, addr) in oldest.into_iter().take(excess) {
            if let Some(w) = self.watched.remove(&addr) {
                let settled = self.settled.entry(w.site).or_default();
                settled.blocks += 1;
                settled.bytes += w.size;
                forget.push(addr);
            }
        }
    }

    /// Bursts harvested so far.
    pub fn bursts(&self) -> usize {
        self.bursts.len()
    }

    /// Seconds of allocations sampled so far (each burst but its last quarter).
    pub fn sampled_s(&self) -> f64 {
        self.bursts.iter().map(|b| b.sampled_s).sum()
    }

    /// Samples followed now.
    pub fn watched(&self) -> usize {
        self.watched.len()
    }

    /// The first of the recent bursts: those of the newer half of the time the confirmable
    /// bursts span (at least the newest one). By time, not by count: bursts come often while a
    /// heap grows and rarely once it stops, so the newer half of the bursts of a cache that
    /// filled early could all date from its filling, and call it a leak.
    fn recent_from(&self, confirmable: usize) -> usize {
        let Some(newest) = confirmable.checked_sub(1) else {
            return 0;
        };
        let first = self.bursts[0].ended_ns;
        let middle = first + self.bursts[newest].ended_ns.saturating_sub(first) / 2;
        self.bursts[..confirmable]
            .iter()
            .position(|b| b.ended_ns >= middle)
            .map_or(newest, |i| i.min(newest))
    }

    /// The estimate of every site seen, ranked. `now_s`: seconds into the run;
    /// `processed_per_s`: the process's bytes processed per second (None: unknown);
    /// `allocations_seen`: allocations the bursts saw per site (the per-site totals map).
    pub fn estimates(
        &self,
        now_s: f64,
        processed_per_s: Option<f64>,
        allocations_seen: &HashMap<SiteKey, u64>,
    ) -> Vec<SiteEstimate> {
        // A burst's samples can be confirmed only by a later burst: the latest one waits.
        let confirmable = self.bursts.len().saturating_sub(1);
        let sampled_s: f64 = self.bursts[..confirmable].iter().map(|b| b.sampled_s).sum();
        let recent_from = self.recent_from(confirmable);
        let recent_sampled_s: f64 = self.bursts[recent_from..confirmable]
            .iter()
            .map(|b| b.sampled_s)
            .sum();
        let mut tallies: HashMap<SiteKey, Tally> = HashMap::new();
        for w in self.watched.values().filter(|w| w.confirmed) {
            let tally = tallies.entry(w.site).or_default();
            tally.blocks += 1;
            tally.bytes += w.size;
            if !tally.bursts.contains(&w.burst) {
                tally.bursts.push(w.burst);
            }
            if (recent_from..confirmable).contains(&w.burst) {
                tally.recent_blocks += 1;
                tally.recent_bytes += w.size;
            }
        }
        for (site, settled) in &self.settled {
            let tally = tallies.entry(*site).or_default();
            tally.blocks += settled.blocks;
            tally.bytes += settled.bytes;
        }
        for site in allocations_seen.keys().chain(self.freed.keys()) {
            tallies.entry(*site).or_default();
        }

        let per_s = |bytes: u64, seconds: f64| {
            if seconds > 0.0 {
                bytes as f64 / seconds
            } else {
                0.0
            }
        };
        let mut estimates: Vec<SiteEstimate> = tallies
            .into_iter()
            .map(|(key, tally)| {
                let rate = per_s(tally.bytes, sampled_s);
                let recent_rate = per_s(tally.recent_bytes, recent_sampled_s);
                let seen = allocations_seen.get(&key).copied().unwrap_or(0);
                let class = classify(&tally_shape(&tally, rate, recent_rate, seen), confirmable);
                SiteEstimate {
                    key,
                    class,
                    rank: 0,
                    samples: tally.blocks,
                    freed_samples: self.freed.get(&key).copied().unwrap_or(0),
                    allocations_seen: seen,
                    surviving_sampled_bytes: tally.bytes,
                    surviving_bytes_per_s: rate,
                    interval: poisson_interval(tally.blocks, rate),
                    recent_surviving_bytes_per_s: recent_rate,
                    recent_samples: tally.recent_blocks,
                    // Below 1 MiB read and written in all, a rate per MiB divides by almost
                    // nothing: unavailable, as the sites' slopes per MiB (growth.rs).
                    surviving_bytes_per_mib: processed_per_s
                        .filter(|p| *p > 0.0 && p * now_s >= crate::growth::MIN_PROCESSED_BYTES)
                        .map(|p| rate / (p / 1_048_576.0)),
                    estimated_surviving_bytes: (rate * now_s.max(0.0)) as u64,
                }
            })
            .collect();
        estimates.sort_by(|a, b| {
            let suspect = |e: &SiteEstimate| e.class == GrowthClass::LeakSuspect;
            suspect(b)
                .cmp(&suspect(a))
                .then(
                    b.recent_surviving_bytes_per_s
                        .total_cmp(&a.recent_surviving_bytes_per_s),
                )
                .then(b.surviving_bytes_per_s.total_cmp(&a.surviving_bytes_per_s))
                .then(b.allocations_seen.cmp(&a.allocations_seen))
                .then(a.key.caller.cmp(&b.key.caller))
                .then(a.key.stack_id.cmp(&b.key.stack_id))
        });
        for (n, e) in estimates.iter_mut().enumerate() {
            e.rank = u32::try_from(n).map_or(u32::MAX, |n| n.saturating_add(1));
        }
        estimates
    }
}

/// A site's estimate as every view reads it, named by `frames`.
pub fn estimated_site(estimate: &SiteEstimate, frames: Vec<Frame>) -> EstimatedSite {
    let (low, high) = estimate.interval;
    let per_mib_interval = estimate.surviving_bytes_per_mib.and_then(|per_mib| {
        (estimate.surviving_bytes_per_s > 0.0).then(|| {
            let scale = per_mib / estimate.surviving_bytes_per_s;
            Interval {
                low: low * scale,
                high: high * scale,
            }
        })
    });
    EstimatedSite {
        id: format!("{:x}-{}-est", estimate.key.caller, estimate.key.stack_id),
        estimated: true,
        estimate_rank: estimate.rank,
        class: estimate.class,
        samples: estimate.samples,
        freed_samples: estimate.freed_samples,
        allocations_seen: estimate.allocations_seen,
        surviving_sampled_bytes: estimate.surviving_sampled_bytes,
        surviving_bytes_per_s: estimate.surviving_bytes_per_s,
        surviving_bytes_per_s_interval: Interval { low, high },
        recent_surviving_bytes_per_s: estimate.recent_surviving_bytes_per_s,
        recent_samples: estimate.recent_samples,
        surviving_bytes_per_mib_processed: estimate.surviving_bytes_per_mib,
        surviving_bytes_per_mib_processed_interval: per_mib_interval,
        estimated_surviving_bytes: estimate.estimated_surviving_bytes,
        frames,
    }
}

/// One site's confirmed survivors, over the run and over its newer half.
#[derive(Debug, Default)]
struct Tally {
    blocks: u64,
    bytes: u64,
    recent_blocks: u64,
    recent_bytes: u64,
    /// Bursts whose samples survive.
    bursts: Vec<usize>,
}

/// What a site's class is decided from.
#[derive(Clone, Copy, Debug)]
struct Shape {
    survivors: u64,
    recent_survivors: u64,
    surviving_bursts: usize,
    rate: f64,
    recent_rate: f64,
    allocations_seen: u64,
}

fn tally_shape(tally: &Tally, rate: f64, recent_rate: f64, seen: u64) -> Shape {
    Shape {
        survivors: tally.blocks,
        recent_survivors: tally.recent_blocks,
        surviving_bursts: tally.bursts.len(),
        rate,
        recent_rate,
        allocations_seen: seen,
    }
}

/// A site's class from its shape, after `confirmable` bursts whose samples could be confirmed.
fn classify(shape: &Shape, confirmable: usize) -> GrowthClass {
    if shape.survivors > 0 && confirmable < MIN_SURVIVING_BURSTS {
        // Survivors of one burst: too early to tell a leak from a cache filling up.
        return GrowthClass::Unknown;
    }
    let keeps_surviving = shape.recent_survivors >= MIN_SURVIVORS
        && shape.surviving_bursts >= MIN_SURVIVING_BURSTS
        && shape.recent_rate >= STILL_GROWING_SHARE * shape.rate;
    if keeps_surviving {
        GrowthClass::LeakSuspect
    } else if shape.survivors >= MIN_SURVIVORS {
        GrowthClass::Plateau
    } else if shape.allocations_seen >= MIN_CHURN_ALLOCATIONS {
        GrowthClass::Churn
    } else {
        GrowthClass::Unknown
    }
}

/// 95% interval of a rate estimated from `k` Poisson events.
fn poisson_interval(k: u64, rate: f64) -> (f64, f64) {
    if k == 0 || rate <= 0.0 {
        return (0.0, 0.0);
    }
    let root = (k as f64).sqrt();
    let scale = rate / k as f64;
    let low = (root - SQRT_HALF_WIDTH).max(0.0);
    let high = root + SQRT_HALF_WIDTH;
    (low * low * scale, high * high * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn site(caller: u64) -> SiteKey {
        SiteKey {
            tgid: 7,
            stack_id: 1,
            caller,
        }
    }

    fn block(caller: u64, size: u64, timestamp_ns: u64) -> AllocInfo {
        AllocInfo {
            size,
            timestamp_ns,
            site: site(caller),
        }
    }

    /// A burst `n` starting at n seconds and lasting 40 ms: in it, a leaking site keeps one
    /// 100-byte block per ms of its sampled part, and a churning site leaves one block
    /// allocated just before the end (still in use by its request).
    fn leaking_burst(
        n: u64,
        kept: &mut Vec<(u64, AllocInfo)>,
    ) -> (BurstWindow, Vec<(u64, AllocInfo)>) {
        let start = n * 1000 * MS;
        let window = BurstWindow {
            attached_ns: start,
            ended_ns: start + 40 * MS,
        };
        for ms in 0..40 {
            kept.push((
                0x10_0000 + n * 0x1_0000 + ms * 0x100,
                block(0xa, 100, start + ms * MS),
            ));
        }
        let mut blocks = kept.clone();
        blocks.push((0x90_0000 + n, block(0xb, 4096, start + 39 * MS)));
        (window, blocks)
    }

    #[test]
    fn surviving_samples_give_the_leak_rate_and_in_flight_temporaries_none() {
        let mut watch = SurvivalWatch::default();
        let mut kept = Vec::new();
        for n in 0..5 {
            let (window, blocks) = leaking_burst(n, &mut kept);
            let forget = watch.harvest(window, &blocks);
            // The churning block, allocated in the burst's last 5 ms, is no sample.
            assert!(forget.contains(&(0x90_0000 + n)));
        }
        let seen = HashMap::from([(site(0xa), 200), (site(0xb), 200)]);
        let estimates = watch.estimates(5.0, Some(1_048_576.0), &seen);
        let leak = &estimates[0];
        assert_eq!(leak.key, site(0xa));
        assert_eq!(leak.rank, 1);
        assert_eq!(leak.class, GrowthClass::LeakSuspect);
        // Sampled: the first 30 ms of each burst (the last quarter, 10 ms, waits); confirmed:
        // the 4 bursts before the newest, 31 blocks each (0..=30 ms).
        assert_eq!(leak.samples, 4 * 31);
        let rate = leak.surviving_bytes_per_s;
        assert!((rate - 4.0 * 31.0 * 100.0 / 0.12).abs() < 1.0, "{rate}");
        assert!(leak.interval.0 < rate && rate < leak.interval.1);
        assert_eq!(leak.surviving_bytes_per_mib, Some(rate));
        // 5 s at 200 KiB/s is less than 1 MiB of work in all: no rate per MiB.
        let little = watch.estimates(5.0, Some(200.0 * 1024.0), &seen);
        assert_eq!(little[0].surviving_bytes_per_mib, None);
        let churn = &estimates[1];
        assert_eq!(churn.key, site(0xb));
        assert_eq!((churn.samples, churn.class), (0, GrowthClass::Churn));
    }

    #[test]
    fn a_cache_whose_samples_date_from_its_filling_is_a_plateau() {
        let mut watch = SurvivalWatch::default();
        let mut kept = Vec::new();
        for n in 0..8 {
            let blocks = if n < 3 {
                leaking_burst(n, &mut kept).1
            } else {
                kept.clone()
            };
            let start = n * 1000 * MS;
            let window = BurstWindow {
                attached_ns: start,
                ended_ns: start + 40 * MS,
            };
            watch.harvest(window, &blocks);
        }
        let estimates = watch.estimates(8.0, None, &HashMap::new());
        assert_eq!(estimates[0].class, GrowthClass::Plateau);
        assert_eq!(estimates[0].recent_samples, 0);
        assert!(estimates[0].samples > 0);
    }

    #[test]
    fn a_cache_sampled_often_while_it_filled_is_still_a_plateau() {
        // Six bursts a second apart while the cache fills (the heap grows: bursts come often),
        // then four 5 s apart once it is full: by count, the newer half of the nine
        // confirmable bursts starts during the filling; by time, after it.
        let mut watch = SurvivalWatch::default();
        let mut kept = Vec::new();
        let starts_s = [0, 1, 2, 3, 4, 5, 10, 15, 20, 25];
        for (n, start_s) in starts_s.into_iter().enumerate() {
            let start = start_s * 1000 * MS;
            let blocks = if n < 6 {
                let mut blocks = Vec::new();
                for ms in 0..40 {
                    kept.push((
                        0x10_0000 + n as u64 * 0x1_0000 + ms * 0x100,
                        block(0xa, 100, start + ms * MS),
                    ));
                }
                blocks.extend(kept.iter().copied());
                blocks
            } else {
                kept.clone()
            };
            let window = BurstWindow {
                attached_ns: start,
                ended_ns: start + 40 * MS,
            };
            watch.harvest(window, &blocks);
        }
        let estimates = watch.estimates(26.0, None, &HashMap::new());
        assert_eq!(estimates[0].class, GrowthClass::Plateau);
        assert_eq!(estimates[0].recent_samples, 0);
    }

    #[test]
    fn a_sample_freed_or_overlapped_later_no_longer_survives() {
        let mut watch = SurvivalWatch::default();
        let first = BurstWindow {
            attached_ns: 0,
            ended_ns: 40 * MS,
        };
        let blocks = [
            (0x1000, block(0xa, 64, MS)),
            (0x2000, block(0xa, 64, MS)),
            (0x3000, block(0xa, 64, MS)),
        ];
        assert!(watch.harvest(first, &blocks).is_empty());
        assert_eq!(watch.watched(), 3);
        let second = BurstWindow {
            attached_ns: 1000 * MS,
            ended_ns: 1040 * MS,
        };
        let later = [
            // 0x1000 still there; 0x2000 freed under the free probe (gone); 0x3000 inside a
            // newer block; a block allocated while the probes were being attached proves
            // nothing.
            (0x1000, block(0xa, 64, MS)),
            (0x2ff0, block(0xc, 256, 1001 * MS)),
            (0x0ff0, block(0xc, 4096, 999 * MS)),
        ];
        watch.harvest(second, &later);
        assert_eq!(watch.watched(), 2, "0x1000 and the new sample at 0x2ff0");
        let estimates = watch.estimates(2.0, None, &HashMap::new());
        let a = estimates
            .iter()
            .find(|e| e.key == site(0xa))
            .expect("site a");
        assert_eq!((a.samples, a.freed_samples), (1, 2));
    }

    #[test]
    fn the_interval_narrows_with_samples() {
        assert_eq!(poisson_interval(0, 0.0), (0.0, 0.0));
        let (low, high) = poisson_interval(4, 400.0);
        assert!(low < 400.0 && high > 400.0);
        let (low_many, high_many) = poisson_interval(400, 400.0);
        assert!(high_many - low_many < high - low);
    }
}
