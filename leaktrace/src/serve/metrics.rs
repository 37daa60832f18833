//! `/metrics`: a snapshot as Prometheus metrics, encoded by prometheus-client (OpenMetrics, or
//! Prometheus text 0.0.4 for clients that do not ask for OpenMetrics).
//!
//! A registry is built per request from the latest snapshot: every value comes from the
//! snapshot (or, for leaktrace's own RSS and CPU time, from the kernel at scrape time), so a
//! scrape never sees half of one snapshot and half of another.
//!
//! Cardinality is bounded: series per process are a fixed set, plus `--metrics-top-sites`
//! sites by leak rank, labelled by the site's short id and the name of its first user frame
//! (never the whole stack); a process that exited leaves /metrics after `--metrics-grace`.
use std::{
    collections::HashSet,
    sync::atomic::{AtomicI64, AtomicU64},
};

use prometheus_client::{
    encoding::{prometheus_text, text, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};

use crate::{
    format, model, procfs,
    schema::{GrowthClass, ProcessReport, SiteReport, Snapshot},
};

/// Longest `function` label value (longer names are cut in the middle).
const MAX_FUNCTION_LABEL: usize = 96;

/// The exposition format a scraper asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    PrometheusText,
}

impl Format {
    /// OpenMetrics when the Accept header names it (Prometheus does), else Prometheus text.
    pub fn accepted(accept: &str) -> Format {
        if accept.contains("application/openmetrics-text") {
            Format::OpenMetrics
        } else {
            Format::PrometheusText
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::PrometheusText => prometheus_text::CONTENT_TYPE,
        }
    }
}

pub fn encode(registry: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    match format {
        Format::OpenMetrics => text::encode(&mut out, registry)?,
        Format::PrometheusText => prometheus_text::encode(&mut out, registry)?,
    }
    Ok(out)
}

/// The labels of a process's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabels {
    pid: u32,
    comm: String,
    exe: String,
    /// The cgroup path, empty when unknown.
    cgroup: String,
    /// The container the cgroup path names (docker, containerd, cri-o, podman), else empty.
    container_id: String,
}

/// The labels of a site's series: its process's, the site's id (`caller-stackid`, stable for
/// the process's life) and the name of its first user frame.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabels {
    #[prometheus(flatten)]
    process: ProcessLabels,
    site: String,
    function: String,
}

/// A site's labels and its leak class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    #[prometheus(flatten)]
    site: SiteLabels,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    version: &'static str,
    mode: &'static str,
}

type IntGauge<L> = Family<L, Gauge<i64, AtomicI64>>;
type FloatGauge<L> = Family<L, Gauge<f64, AtomicU64>>;
type IntCounter<L> = Family<L, Counter<u64, AtomicU64>>;

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Registers a family and returns a handle to fill it (families are shared handles).
fn family<M: prometheus_client::registry::Metric + Clone + Default>(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

struct ProcessFamilies {
    outstanding_bytes: IntGauge<ProcessLabels>,
    outstanding_blocks: IntGauge<ProcessLabels>,
    allocated_bytes: IntCounter<ProcessLabels>,
    allocated_blocks: IntCounter<ProcessLabels>,
    heap_growth_bytes: IntGauge<ProcessLabels>,
    fallback_mmaps: IntCounter<ProcessLabels>,
    fallback_mmap_bytes: IntCounter<ProcessLabels>,
    rss_bytes: IntGauge<ProcessLabels>,
    rss_growth_bytes: IntGauge<ProcessLabels>,
    per_minute: FloatGauge<ProcessLabels>,
    per_mib: FloatGauge<ProcessLabels>,
    processed_bytes: IntCounter<ProcessLabels>,
    alive: IntGauge<ProcessLabels>,
    lost_events: IntCounter<ProcessLabels>,
    dropped_allocations: IntCounter<ProcessLabels>,
    stack_errors: IntCounter<ProcessLabels>,
    heap_events: IntCounter<ProcessLabels>,
    goroutines: IntGauge<ProcessLabels>,
    go_heap_inuse_bytes: IntGauge<ProcessLabels>,
}

impl ProcessFamilies {
    fn register(r: &mut Registry) -> Self {
        Self {
            outstanding_bytes: family(r, "process_outstanding_bytes", "Bytes allocated and not freed (growth mode: heap growth still mapped)"),
            outstanding_blocks: family(r, "process_outstanding_blocks", "Blocks allocated and not freed (growth mode: growth events still mapped)"),
            allocated_bytes: family(r, "process_allocated_bytes", "Bytes allocated since tracing started"),
            allocated_blocks: family(r, "process_allocated_blocks", "Blocks allocated since tracing started"),
            heap_growth_bytes: family(r, "process_heap_growth_bytes", "Program break plus writable anonymous mappings made since tracing started and still mapped"),
            fallback_mmaps: family(r, "process_fallback_mmaps", "Anonymous mmaps malloc made after a failed brk"),
            fallback_mmap_bytes: family(r, "process_fallback_mmap_bytes", "Bytes of the anonymous mmaps malloc made after a failed brk"),
            rss_bytes: family(r, "process_rss_bytes", "Resident set size"),
            rss_growth_bytes: family(r, "process_rss_growth_bytes", "Resident set size now minus when tracing started"),
            per_minute: family(r, "process_outstanding_bytes_per_minute", "Outstanding bytes gained per minute over the run (sum of the growth slopes of the sites the snapshot lists)"),
            per_mib: family(r, "process_outstanding_bytes_per_mib_processed", "Outstanding bytes gained per MiB the process read/wrote (sum over the sites the snapshot lists)"),
            processed_bytes: family(r, "process_processed_bytes", "Bytes read and/or written since tracing started (per --processed)"),
            alive: family(r, "process_alive", "1 while the process runs, 0 once it exited (its series go after --metrics-grace)"),
            lost_events: family(r, "process_lost_events", "Events lost: the numbers are then lower bounds"),
            dropped_allocations: family(r, "process_dropped_allocations", "Allocations not tracked because the allocation map was full"),
            stack_errors: family(r, "process_stack_errors", "Allocations whose call stack could not be read"),
            heap_events: family(r, "process_heap_events", "Heap-syscall records received"),
            goroutines: family(r, "process_goroutines", "Go programs: live goroutines, from the runtime's own list (no series without a census)"),
            go_heap_inuse_bytes: family(r, "process_go_heap_inuse_bytes", "Go programs: in-use bytes of the runtime's heap profile, unsampled (lags up to two GC cycles)"),
        }
    }

    fn fill(&self, process: &ProcessReport) {
        let labels = process_labels(process);
        let set = |family: &IntGauge<ProcessLabels>, value: i64| {
            family.get_or_create(&labels).set(value);
        };
        let count = |family: &IntCounter<ProcessLabels>, value: u64| {
            family.get_or_create(&labels).inc_by(value);
        };
        set(&self.outstanding_bytes, int(process.outstanding_bytes));
        set(&self.outstanding_blocks, int(process.outstanding_count));
        count(&self.allocated_bytes, process.allocated_bytes);
        count(&self.allocated_blocks, process.allocated_count);
        set(&self.alive, i64::from(process.alive));
        count(&self.lost_events, process.counters.lost_events);
        count(
            &self.dropped_allocations,
            process.counters.dropped_allocations,
        );
        count(&self.stack_errors, process.counters.stack_errors);
        if let Some(processed) = process.bytes_processed {
            count(&self.processed_bytes, processed);
        }
        if let Some(heap) = &process.heap {
            set(&self.heap_growth_bytes, int(model::heap_growth_bytes(heap)));
            count(&self.fallback_mmaps, heap.fallback_mmaps.count);
            count(&self.fallback_mmap_bytes, heap.fallback_mmaps.bytes);
            count(&self.heap_events, heap.events);
            if let Some(rss) = heap.rss_bytes {
                set(&self.rss_bytes, int(rss));
            }
            if let Some(growth) = heap.rss_growth_bytes {
                set(&self.rss_growth_bytes, growth);
            }
        }
        let slopes = model::process_slopes(process);
        if let Some(per_min) = slopes.bytes_per_min {
            self.per_minute.get_or_create(&labels).set(per_min);
        }
        if let Some(per_mib) = slopes.bytes_per_mib_processed {
            self.per_mib.get_or_create(&labels).set(per_mib);
        }
        // A Go process without a census or a profile gets no series: never a 0 that reads
        // as measured.
        if let Some(go) = &process.go {
            if let Some(goroutines) = go.goroutines {
                set(&self.goroutines, int(goroutines));
            }
            if let Some(inuse) = go
                .heap_profile
                .inuse_bytes
                .filter(|_| go.heap_profile.available)
            {
                set(&self.go_heap_inuse_bytes, int(inuse));
            }
        }
    }
}

struct SiteFamilies {
    outstanding_bytes: IntGauge<SiteLabels>,
    outstanding_blocks: IntGauge<SiteLabels>,
    allocated_bytes: IntCounter<SiteLabels>,
    per_minute: FloatGauge<SiteLabels>,
    per_mib: FloatGauge<SiteLabels>,
    recent_per_minute: FloatGauge<SiteLabels>,
    oldest_age: FloatGauge<SiteLabels>,
    leak_rank: IntGauge<SiteLabels>,
    class: IntGauge<ClassLabels>,
}

impl SiteFamilies {
    fn register(r: &mut Registry) -> Self {
        Self {
            outstanding_bytes: family(
                r,
                "site_outstanding_bytes",
                "Bytes a site allocated and did not free (top sites by leak rank)",
            ),
            outstanding_blocks: family(
                r,
                "site_outstanding_blocks",
                "Blocks a site allocated and did not free",
            ),
            allocated_bytes: family(
                r,
                "site_allocated_bytes",
                "Bytes a site allocated since tracing started",
            ),
            per_minute: family(
                r,
                "site_outstanding_bytes_per_minute",
                "A site's outstanding bytes gained per minute, over the run",
            ),
            per_mib: family(
                r,
                "site_outstanding_bytes_per_mib_processed",
                "A site's outstanding bytes gained per MiB processed, over the run",
            ),
            recent_per_minute: family(
                r,
                "site_recent_outstanding_bytes_per_minute",
                "A site's outstanding bytes gained per minute, over the recent window",
            ),
            oldest_age: family(
                r,
                "site_oldest_outstanding_age_seconds",
                "Age of a site's oldest outstanding block",
            ),
            leak_rank: family(
                r,
                "site_leak_rank",
                "1 = the site of its process most likely to leak",
            ),
            class: family(
                r,
                "site_leak_class",
                "1 for the site's growth class: leak_suspect, plateau, churn, unknown, or heap_growth (growth mode: what grew the heap)",
            ),
        }
    }

    fn fill(&self, process: &ProcessReport, site: &SiteReport) {
        let process_labels = process_labels(process);
        let labels = SiteLabels {
            process: process_labels,
            site: site.id.clone(),
            function: format::truncate_middle(&format::site_name(&site.frames), MAX_FUNCTION_LABEL),
        };
        let c = &site.counters;
        self.outstanding_bytes
            .get_or_create(&labels)
            .set(int(c.outstanding_bytes));
        self.outstanding_blocks
            .get_or_create(&labels)
            .set(int(c.outstanding_count));
        self.allocated_bytes
            .get_or_create(&labels)
            .inc_by(c.allocated_bytes);
        self.leak_rank
            .get_or_create(&labels)
            .set(i64::from(site.leak_rank));
        let g = &site.growth;
        let optional = [
            (&self.per_minute, g.bytes_per_min),
            (&self.per_mib, g.bytes_per_mib_processed),
            (&self.recent_per_minute, g.recent_bytes_per_min),
            (&self.oldest_age, c.oldest_age_s),
        ];
        for (family, value) in optional {
            if let Some(value) = value.filter(|v| v.is_finite()) {
                family.get_or_create(&labels).set(value);
            }
        }
        let class = ClassLabels {
            site: labels,
            class: class_name(g.class),
        };
        self.class.get_or_create(&class).set(1);
    }
}

fn class_name(class: GrowthClass) -> &'static str {
    match class {
        GrowthClass::LeakSuspect => "leak_suspect",
        GrowthClass::Plateau => "plateau",
        GrowthClass::Churn => "churn",
        GrowthClass::Unknown => "unknown",
        GrowthClass::HeapGrowth => "heap_growth",
    }
}

fn process_labels(process: &ProcessReport) -> ProcessLabels {
    let cgroup = process.cgroup.as_ref();
    ProcessLabels {
        pid: process.pid,
        comm: process.comm.clone(),
        exe: process.exe.clone(),
        cgroup: cgroup.map(|c| c.path.clone()).unwrap_or_default(),
        container_id: cgroup
            .and_then(|c| c.container_id.clone())
            .unwrap_or_default(),
    }
}

/// leaktrace's own series: what it costs, what it lost.
fn own_metrics(r: &mut Registry, snapshot: &Snapshot, listed: &[&ProcessReport]) {
    r.register(
        "build",
        "The leaktrace version and tracing mode",
        Info::new(RunLabels {
            version: env!("CARGO_PKG_VERSION"),
            mode: snapshot.mode.as_str(),
        }),
    );
    let gauge = |r: &mut Registry, name: &str, help: &str, value: f64| {
        let g: Gauge<f64, AtomicU64> = Gauge::default();
        g.set(value);
        r.register(name, help, g);
    };
    let counter = |r: &mut Registry, name: &str, help: &str, value: u64| {
        let c: Counter<u64, AtomicU64> = Counter::default();
        c.inc_by(value);
        r.register(name, help, c);
    };
    if let Some((rss, _)) = procfs::read_memory(std::process::id()) {
        gauge(
            r,
            "resident_bytes",
            "leaktrace's own resident set size",
            rss as f64,
        );
    }
    if let Some(cpu) = own_cpu_seconds() {
        let c: Counter<f64, AtomicU64> = Counter::default();
        c.inc_by(cpu);
        r.register(
            "cpu_seconds",
            "leaktrace's own CPU time, user and system",
            c,
        );
    }
    gauge(
        r,
        "tracing_seconds",
        "Seconds since tracing started, as of the latest snapshot",
        snapshot.duration_s,
    );
    gauge(
        r,
        "processes",
        "Processes whose series /metrics lists",
        listed.len() as f64,
    );
    let counters = listed
        .iter()
        .fold(crate::schema::Counters::default(), |sum, p| {
            sum.saturating_add(&p.counters)
        });
    let events = listed
        .iter()
        .filter_map(|p| p.heap.as_ref())
        .fold(0u64, |sum, h| sum.saturating_add(h.events));
    gauge(
        r,
        "heap_events",
        "Heap-syscall records received, summed over the processes listed",
        events as f64,
    );
    gauge(
        r,
        "lost_events",
        "Events lost, summed over the processes listed",
        counters.lost_events as f64,
    );
    gauge(
        r,
        "dropped_allocations",
        "Allocations not tracked (allocation map full), summed over the processes listed",
        counters.dropped_allocations as f64,
    );
    if let Some(unwinding) = &snapshot.unwinding {
        counter(
            r,
            "unwound_events",
            "Growth mode: stack copies unwound",
            unwinding.events,
        );
        counter(
            r,
            "empty_stack_copies",
            "Growth mode: events whose stack copy was empty",
            unwinding.empty_copies,
        );
    }
    if let Some(cost) = &snapshot.cost {
        if let Some(ns) = cost.ns_per_hit {
            gauge(
                r,
                "probe_hit_cost_seconds",
                "CPU time one probe hit costs, measured at start",
                ns / 1e9,
            );
        }
        if let Some(rate) = cost.probe_hits_per_s {
            gauge(
                r,
                "probe_hits_per_second",
                "Probe hits (growth mode: heap-growth events) per second over the latest interval",
                rate,
            );
        }
        if let Some(pct) = cost.estimated_overhead_pct {
            gauge(
                r,
                "probe_cpu_ratio",
                "Estimated CPU the probes cost the traced processes, in CPUs (1 = one whole CPU)",
                pct / 100.0,
            );
        }
    }
}

/// leaktrace's own user + system CPU time.
fn own_cpu_seconds() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given, which points to
    // one; it is read only after the call succeeded.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return None;
        }
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// The registry of one snapshot: processes whose pid is in `expired` are left out, and at most
/// `top_sites` sites per process, by leak rank.
pub fn registry(snapshot: &Snapshot, expired: &HashSet<u32>, top_sites: usize) -> Registry {
    let mut registry = Registry::with_prefix("leaktrace");
    let listed: Vec<&ProcessReport> = snapshot
        .processes
        .iter()
        .filter(|p| !expired.contains(&p.pid))
        .collect();
    own_metrics(&mut registry, snapshot, &listed);
    let processes = ProcessFamilies::register(&mut registry);
    let sites = SiteFamilies::register(&mut registry);
    for process in &listed {
        processes.fill(process);
        let mut ranked: Vec<&SiteReport> = process.sites.iter().collect();
        ranked.sort_by_key(|s| (s.leak_rank == 0, s.leak_rank));
        for site in ranked.into_iter().take(top_sites) {
            sites.fill(process, site);
        }
    }
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(snapshot: &Snapshot, expired: &HashSet<u32>, format: Format) -> String {
        encode(&registry(snapshot, expired, 5), format).expect("encodes")
    }

    #[test]
    fn a_go_process_has_its_goroutines_and_others_have_no_such_series() {
        let mut snapshot = super::super::tests::example();
        let text = rendered(&snapshot, &HashSet::new(), Format::OpenMetrics);
        assert!(!text.contains("leaktrace_process_goroutines{"), "{text}");
        snapshot.processes[0].go = Some(crate::schema::GoReport {
            version: "go1.22.10".to_string(),
            goroutines: Some(3004),
            ..crate::schema::GoReport::default()
        });
        let text = rendered(&snapshot, &HashSet::new(), Format::OpenMetrics);
        assert!(
            text.contains("leaktrace_process_goroutines{pid=\"4242\",comm=\"leaky\",exe=\"/usr/bin/leaky-service\",cgroup=\"\",container_id=\"\"} 3004\n"),
            "{text}"
        );
        // Profiling off: no in-use series rather than a 0.
        assert!(
            !text.contains("leaktrace_process_go_heap_inuse_bytes{"),
            "{text}"
        );
    }

    #[test]
    fn a_container_s_process_carries_its_cgroup_and_container_id() {
        let mut snapshot = super::super::tests::example();
        snapshot.processes[0].cgroup = Some(crate::schema::CgroupReport {
            path: "/system.slice/docker-4f3c2b1a.scope".to_string(),
            container_id: Some("4f3c2b1a".to_string()),
            runtime: Some("docker".to_string()),
        });
        let text = rendered(&snapshot, &HashSet::new(), Format::OpenMetrics);
        assert!(
            text.contains(
                "leaktrace_process_outstanding_bytes{pid=\"4242\",comm=\"leaky\",exe=\"/usr/bin/leaky-service\",cgroup=\"/system.slice/docker-4f3c2b1a.scope\",container_id=\"4f3c2b1a\"} 50000\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_process_and_its_top_site_are_exported_with_bounded_labels() {
        let snapshot = super::super::tests::example();
        let text = rendered(&snapshot, &HashSet::new(), Format::OpenMetrics);
        assert!(text.ends_with("# EOF\n"), "{text}");
        let process = "pid=\"4242\",comm=\"leaky\",exe=\"/usr/bin/leaky-service\",cgroup=\"\",container_id=\"\"";
        assert!(
            text.contains(&format!(
                "leaktrace_process_outstanding_bytes{{{process}}} 50000\n"
            )),
            "{text}"
        );
        let site = format!("{process},site=\"abc-7\",function=\"leak_500\"");
        assert!(
            text.contains(&format!(
                "leaktrace_site_outstanding_bytes{{{site}}} 50000\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "leaktrace_site_leak_class{{{site},class=\"leak_suspect\"}} 1\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "leaktrace_site_outstanding_bytes_per_minute{{{site}}} 600.0\n"
            )),
            "{text}"
        );
        let prometheus = rendered(&snapshot, &HashSet::new(), Format::PrometheusText);
        assert!(!prometheus.contains("# EOF"), "{prometheus}");
        assert!(
            prometheus.contains("leaktrace_process_allocated_bytes_total{"),
            "{prometheus}"
        );
    }

    #[test]
    fn top_sites_and_expired_processes_bound_the_series() {
        let mut snapshot = super::super::tests::example();
        let template = snapshot.processes[0].sites[0].clone();
        snapshot.processes[0].sites = (1..=20)
            .map(|rank| SiteReport {
                id: format!("s-{rank}"),
                leak_rank: rank,
                ..template.clone()
            })
            .collect();
        let text = encode(
            &registry(&snapshot, &HashSet::new(), 3),
            Format::OpenMetrics,
        )
        .expect("encodes");
        let sites = text
            .lines()
            .filter(|l| l.starts_with("leaktrace_site_outstanding_bytes{"))
            .count();
        assert_eq!(sites, 3, "{text}");
        assert!(
            text.contains("site=\"s-1\"") && !text.contains("site=\"s-4\""),
            "{text}"
        );
        let expired = HashSet::from([4242]);
        let text = rendered(&snapshot, &expired, Format::OpenMetrics);
        assert!(!text.contains("pid=\"4242\""), "{text}");
    }

    #[test]
    fn openmetrics_is_what_prometheus_asks_for() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::accepted(prometheus), Format::OpenMetrics);
        assert_eq!(Format::accepted("*/*"), Format::PrometheusText);
        assert_eq!(Format::accepted(""), Format::PrometheusText);
    }
}
