//! The heap as the kernel sees it, rebuilt from heap-syscall events: the program break, the
//! anonymous mappings (split exactly by partial munmap/mprotect, moved by mremap), reserved
//! versus committed address space, and malloc's mmap fallback. Pure: events in, state out.
use std::collections::{BTreeMap, HashMap};

use leaktrace_common::{HeapEvent, HeapEventKind, SiteKey, NO_STACK};

use crate::schema::{ChunkSize, FallbackSummary, SiteHeap};

const PROT_WRITE: u64 = 0x2;
const MREMAP_MAYMOVE: u64 = 0x1;
const MREMAP_DONTUNMAP: u64 = 0x4;

/// Why an anonymous mapping exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Made by an allocator call after a failed brk in the same call: malloc's mmap fallback.
    Fallback,
    /// Made by an allocator call without a failed brk: a large block served by mmap, or a new
    /// arena (reserved PROT_NONE, committed later by mprotect).
    Allocator,
    /// Made by the program itself, outside allocator calls.
    Program,
}

/// Which allocator call an event came from, until the call's site is known.
type CallId = (u32, u64);

/// Whether a process's allocator calls are traced (uprobes, exact mode). With them a fallback
/// is recognized within one allocator call, and a moved mapping keeps its allocating call's
/// site; without them a fallback is the thread's next mmap after a failed brk, and a mapping
/// belongs to the stack that last enlarged it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocatorCalls {
    Traced,
    Untraced,
}

/// A completed heap syscall, with what every handler derives from its event.
struct Syscall {
    tid: u32,
    args: [u64; 5],
    ret: i64,
    /// The allocator call it was made in (0: none).
    call_ns: u64,
    at_ns: u64,
    /// Outside allocator calls, the syscall's own stack (when the kernel sent one).
    own_site: Option<SiteKey>,
    /// Inside an allocator call, that call, until its site arrives.
    pending: Option<CallId>,
    page: u64,
}

impl Syscall {
    fn new(event: &HeapEvent, page: u64) -> Self {
        let outside_calls = event.call_ns == 0;
        Self {
            tid: event.tid,
            args: event.args,
            ret: event.ret,
            call_ns: event.call_ns,
            at_ns: event.timestamp_ns,
            own_site: (outside_calls && (event.stack_id != NO_STACK || event.caller != 0))
                .then_some(SiteKey {
                    tgid: event.tgid,
                    stack_id: event.stack_id,
                    caller: event.caller,
                }),
            pending: (!outside_calls).then_some((event.tid, event.call_ns)),
            page,
        }
    }

    /// A length rounded up to whole pages, as the kernel maps it.
    fn round(&self, len: u64) -> u64 {
        len.div_ceil(self.page) * self.page
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Mapping {
    end: u64,
    prot: u64,
    origin: Origin,
    site: Option<SiteKey>,
    pending: Option<CallId>,
}

impl Mapping {
    fn writable(&self) -> bool {
        self.prot & PROT_WRITE != 0
    }
}

/// A fallback chunk: size and, once known, the site of the allocator call that made it.
#[derive(Clone, Debug, PartialEq)]
struct Fallback {
    bytes: u64,
    site: Option<SiteKey>,
    pending: Option<CallId>,
}

impl SiteHeap {
    /// The heap bytes this site grew that are still there.
    pub fn net_bytes(&self) -> u64 {
        self.brk_bytes + self.anon_mmap_bytes
    }
}

/// Heap growth attributed to one site: every event that grew the heap from its stack, whether
/// or not those bytes were given back since.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrowthTally {
    pub bytes: u64,
    pub events: u64,
    /// `bpf_ktime_get_ns()` of the first and latest event.
    pub first_ns: u64,
    pub last_ns: u64,
}

/// Program-break growth since tracing began, by the site that grew it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct BrkSegment {
    start: u64,
    end: u64,
    site: Option<SiteKey>,
}

/// One process's heap.
#[derive(Clone, Debug, Default)]
pub struct ProcessHeap {
    pub comm: String,
    /// Start of the heap (`start_brk` of /proc/PID/stat, or the first break seen).
    pub start_brk: Option<u64>,
    pub current_brk: Option<u64>,
    pub brk_calls: u64,
    pub brk_failures: u64,
    pub events: u64,
    /// Events of a kind this build does not know (counted in `events` too), ignored.
    pub unknown_events: u64,
    mappings: BTreeMap<u64, Mapping>,
    fallbacks: Vec<Fallback>,
    /// Per thread: the allocator call (or 0 outside calls) whose last brk failed.
    brk_failed: HashMap<u32, u64>,
    /// The program break's growth since tracing began, lowest first (the break lowers from the
    /// top, so shrinking gives back the latest growth first).
    brk_segments: Vec<BrkSegment>,
    growth: HashMap<SiteKey, GrowthTally>,
}

impl ProcessHeap {
    /// Bytes between the start of the heap and the current break.
    pub fn brk_bytes(&self) -> u64 {
        match (self.start_brk, self.current_brk) {
            (Some(start), Some(current)) => current.saturating_sub(start),
            _ => 0,
        }
    }

    /// Writable anonymous bytes mapped (committed memory).
    pub fn anon_committed_bytes(&self) -> u64 {
        self.mappings
            .iter()
            .filter(|(_, m)| m.writable())
            .map(|(start, m)| m.end - start)
            .sum()
    }

    /// Anonymous address space mapped without write permission (reservations).
    pub fn anon_reserved_bytes(&self) -> u64 {
        self.mappings
            .iter()
            .filter(|(_, m)| !m.writable())
            .map(|(start, m)| m.end - start)
            .sum()
    }

    /// Whether the heap has anything to report besides its size: failed brk calls or malloc's
    /// mmap fallbacks (an exited process with neither, and no growth left, has nothing to say).
    pub fn has_findings(&self) -> bool {
        self.brk_failures > 0 || !self.fallbacks.is_empty()
    }

    pub fn fallbacks(&self) -> FallbackSummary {
        let mut summary = FallbackSummary::default();
        for f in &self.fallbacks {
            summary.count += 1;
            summary.bytes += f.bytes;
            match summary.chunk_sizes.iter_mut().find(|c| c.bytes == f.bytes) {
                Some(chunk) => chunk.count += 1,
                None => summary.chunk_sizes.push(ChunkSize {
                    bytes: f.bytes,
                    count: 1,
                }),
            }
        }
        summary
    }

    /// Heap growth per site (sites known by their own stack: growth mode, or the program's own
    /// syscalls).
    pub fn growth(&self) -> &HashMap<SiteKey, GrowthTally> {
        &self.growth
    }

    fn tally(&mut self, site: Option<SiteKey>, bytes: u64, at_ns: u64) {
        let (Some(site), true) = (site, bytes > 0) else {
            return;
        };
        let tally = self.growth.entry(site).or_insert(GrowthTally {
            first_ns: at_ns,
            ..GrowthTally::default()
        });
        tally.bytes += bytes;
        tally.events += 1;
        tally.last_ns = at_ns;
    }

    /// Heap attribution per site.
    pub fn sites(&self) -> HashMap<SiteKey, SiteHeap> {
        let mut sites: HashMap<SiteKey, SiteHeap> = HashMap::new();
        for segment in &self.brk_segments {
            if let Some(site) = segment.site {
                sites.entry(site).or_default().brk_bytes += segment.end - segment.start;
            }
        }
        for f in &self.fallbacks {
            if let Some(site) = f.site {
                let entry = sites.entry(site).or_default();
                entry.fallback_mmap_count += 1;
                entry.fallback_mmap_bytes += f.bytes;
            }
        }
        for (start, m) in &self.mappings {
            let (Some(site), true) = (m.site, m.writable()) else {
                continue;
            };
            let entry = sites.entry(site).or_default();
            entry.anon_mmap_bytes += m.end - start;
            if m.origin == Origin::Allocator {
                entry.direct_mmap_bytes += m.end - start;
            }
        }
        sites
    }

    fn apply(&mut self, event: &HeapEvent, page: u64, calls: AllocatorCalls) {
        self.events += 1;
        let kind = match HeapEventKind::try_from(event.kind) {
            Ok(kind) => kind,
            Err(unknown) => {
                self.unknown_events += 1;
                if self.unknown_events == 1 {
                    log::warn!(
                        "pid {}: heap event of {unknown} ignored (kernel and user sides of different builds?)",
                        event.tgid
                    );
                }
                return;
            }
        };
        let syscall = Syscall::new(event, page);
        match kind {
            HeapEventKind::Brk => self.brk(&syscall),
            HeapEventKind::Mmap => self.mmap(&syscall, calls),
            HeapEventKind::Munmap => self.munmap(&syscall),
            HeapEventKind::Mprotect => self.mprotect(&syscall),
            HeapEventKind::Mremap => self.mremap(&syscall, calls),
            HeapEventKind::CallSite => self.name_call_site(event),
            // Handled by HeapTracker::apply (the whole process starts afresh).
            HeapEventKind::Exec => {}
        }
    }

    fn brk(&mut self, call: &Syscall) {
        self.brk_calls += 1;
        let requested = call.args[0];
        let new_brk = call.ret as u64;
        if requested != 0 && new_brk != requested {
            // The kernel returns the old break when it cannot move it.
            self.brk_failures += 1;
            self.brk_failed.insert(call.tid, call.call_ns);
        } else {
            self.brk_failed.remove(&call.tid);
            if let Some(old) = self.current_brk {
                self.move_break(old, new_brk, call.own_site, call.at_ns);
            }
        }
        self.start_brk.get_or_insert(new_brk);
        self.current_brk = Some(new_brk);
    }

    fn mmap(&mut self, call: &Syscall, calls: AllocatorCalls) {
        let start = call.ret as u64;
        let len = call.round(call.args[1]);
        let prot = call.args[2];
        let failed_brk_call = self.brk_failed.remove(&call.tid);
        // With uprobes the fallback is an mmap inside the same allocator call as the failed
        // brk; without them (system-wide) the next heap syscall of the thread.
        let origin = match (call.call_ns, failed_brk_call) {
            (0, Some(0)) if calls == AllocatorCalls::Untraced => Origin::Fallback,
            (0, _) => Origin::Program,
            (within, Some(failed)) if failed == within => Origin::Fallback,
            _ => Origin::Allocator,
        };
        if prot & PROT_WRITE != 0 {
            self.tally(call.own_site, len, call.at_ns);
        }
        if origin == Origin::Fallback {
            self.fallbacks.push(Fallback {
                bytes: len,
                site: call.own_site,
                pending: call.pending,
            });
        }
        self.remove_range(start, start + len);
        self.mappings.insert(
            start,
            Mapping {
                end: start + len,
                prot,
                origin,
                site: call.own_site,
                pending: call.pending,
            },
        );
    }

    fn munmap(&mut self, call: &Syscall) {
        self.brk_failed.remove(&call.tid);
        let start = call.args[0];
        self.remove_range(start, start + call.round(call.args[1]));
    }

    fn mprotect(&mut self, call: &Syscall) {
        self.brk_failed.remove(&call.tid);
        let start = call.args[0];
        let end = start + call.round(call.args[1]);
        let granted = self.protect_range(start, end, call.args[2], call.own_site);
        self.tally(call.own_site, granted, call.at_ns);
    }

    fn mremap(&mut self, call: &Syscall, calls: AllocatorCalls) {
        self.brk_failed.remove(&call.tid);
        let (old, old_len, new_len, flags) = (
            call.args[0],
            call.round(call.args[1]),
            call.round(call.args[2]),
            call.args[3],
        );
        let new_start = call.ret as u64;
        let template = self
            .mappings
            .range(..=old)
            .next_back()
            .filter(|(_, m)| m.end > old)
            .map(|(_, m)| m.clone());
        let Some(template) = template else {
            return; // not a mapping we track (file-backed, or made before attach)
        };
        if flags & MREMAP_DONTUNMAP == 0 {
            self.remove_range(old, old + old_len);
        }
        if flags & MREMAP_MAYMOVE == 0 && new_start != old {
            return;
        }
        self.remove_range(new_start, new_start + new_len);
        // Growth mode: the stack that enlarged a block (realloc's mremap) owns it now; with
        // uprobes the mapping keeps the allocating call's site.
        if template.writable() {
            self.tally(call.own_site, new_len.saturating_sub(old_len), call.at_ns);
        }
        let site = match calls {
            AllocatorCalls::Traced => template.site,
            AllocatorCalls::Untraced => call.own_site.or(template.site),
        };
        self.mappings.insert(
            new_start,
            Mapping {
                end: new_start + new_len,
                site,
                ..template
            },
        );
    }

    /// An allocator call that made heap syscalls returned: its site owns what they made.
    fn name_call_site(&mut self, event: &HeapEvent) {
        let call = (event.tid, event.call_ns);
        let site = SiteKey {
            tgid: event.tgid,
            stack_id: event.stack_id,
            caller: event.caller,
        };
        let settle = |owner: &mut Option<SiteKey>, pending: &mut Option<CallId>| {
            if *pending == Some(call) {
                *owner = Some(site);
                *pending = None;
            }
        };
        for m in self.mappings.values_mut() {
            settle(&mut m.site, &mut m.pending);
        }
        for f in &mut self.fallbacks {
            settle(&mut f.site, &mut f.pending);
        }
    }

    /// Split the mappings at `start` and `end` so that whole entries cover [start, end).
    fn split_at(&mut self, at: u64) {
        let Some((&start, m)) = self.mappings.range(..at).next_back() else {
            return;
        };
        if m.end > at {
            let mut tail = m.clone();
            let end = m.end;
            if let Some(head) = self.mappings.get_mut(&start) {
                head.end = at;
            }
            tail.end = end;
            self.mappings.insert(at, tail);
        }
    }

    fn remove_range(&mut self, start: u64, end: u64) {
        self.split_at(start);
        self.split_at(end);
        let inside: Vec<u64> = self.mappings.range(start..end).map(|(s, _)| *s).collect();
        for s in inside {
            self.mappings.remove(&s);
        }
    }

    /// Change the protection of [start, end). Returns the bytes that became writable; those
    /// belong to `site` when it is known (a thread arena's heap grows this way).
    fn protect_range(&mut self, start: u64, end: u64, prot: u64, site: Option<SiteKey>) -> u64 {
        self.split_at(start);
        self.split_at(end);
        let mut granted = 0;
        for (piece, m) in self.mappings.range_mut(start..end) {
            if !m.writable() && prot & PROT_WRITE != 0 {
                granted += m.end - piece;
                if site.is_some() {
                    m.site = site;
                }
            }
            m.prot = prot;
        }
        granted
    }

    /// The break moved from `old` to `new`: growth belongs to `site`; a lower break gives back
    /// the latest growth first.
    fn move_break(&mut self, old: u64, new: u64, site: Option<SiteKey>, at_ns: u64) {
        if new > old {
            self.brk_segments.push(BrkSegment {
                start: old,
                end: new,
                site,
            });
            self.tally(site, new - old, at_ns);
            return;
        }
        while let Some(top) = self.brk_segments.last_mut() {
            if top.end <= new {
                break;
            }
            if top.start >= new {
                self.brk_segments.pop();
            } else {
                top.end = new;
            }
        }
    }
}

/// Heaps of every process heap events were seen for.
/// The command name an event carries.
pub fn comm_of(event: &HeapEvent) -> String {
    let len = event
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(event.comm.len());
    String::from_utf8_lossy(&event.comm[..len]).into_owned()
}

#[derive(Debug, Default)]
pub struct HeapTracker {
    pub processes: HashMap<u32, ProcessHeap>,
    page_size: u64,
}

impl HeapTracker {
    pub fn new(page_size: u64) -> Self {
        Self {
            processes: HashMap::new(),
            page_size: page_size.max(1),
        }
    }

    /// Start a process's heap at its `start_brk` (from /proc/PID/stat) when known.
    pub fn register(&mut self, pid: u32, start_brk: Option<u64>, current_brk: Option<u64>) {
        let heap = self.processes.entry(pid).or_default();
        if start_brk.is_some() {
            heap.start_brk = start_brk;
        }
        if heap.current_brk.is_none() {
            heap.current_brk = current_brk;
        }
    }

    /// Apply one event of a process whose allocator `calls` are traced or not.
    pub fn apply(&mut self, event: &HeapEvent, calls: AllocatorCalls) {
        if event.kind == HeapEventKind::Exec as u32 {
            // A new program: its heap starts at its own first break (its first brk call), and
            // nothing of the old address space carries over.
            let fresh = ProcessHeap {
                comm: comm_of(event),
                ..ProcessHeap::default()
            };
            self.processes.insert(event.tgid, fresh);
            return;
        }
        let heap = self.processes.entry(event.tgid).or_default();
        if heap.comm.is_empty() {
            heap.comm = comm_of(event);
        }
        heap.apply(event, self.page_size, calls);
    }

    pub fn get(&self, pid: u32) -> Option<&ProcessHeap> {
        self.processes.get(&pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;
    const RW: u64 = 0x3;

    fn event(kind: HeapEventKind, tid: u32, call_ns: u64, args: [u64; 5], ret: i64) -> HeapEvent {
        HeapEvent {
            kind: kind as u32,
            tgid: 100,
            tid,
            stack_id: 7,
            call_ns,
            caller: if call_ns == 0 { 0x1234 } else { 0 },
            args,
            ret,
            ..HeapEvent::default()
        }
    }

    fn mmap(tid: u32, call: u64, addr: u64, len: u64, prot: u64) -> HeapEvent {
        event(
            HeapEventKind::Mmap,
            tid,
            call,
            [0, len, prot, 0x22, u64::MAX],
            addr as i64,
        )
    }

    fn brk(tid: u32, call: u64, requested: u64, result: u64) -> HeapEvent {
        event(
            HeapEventKind::Brk,
            tid,
            call,
            [requested, 0, 0, 0, 0],
            result as i64,
        )
    }

    fn call_site(tid: u32, call: u64, caller: u64) -> HeapEvent {
        HeapEvent {
            kind: HeapEventKind::CallSite as u32,
            tgid: 100,
            tid,
            stack_id: 9,
            call_ns: call,
            caller,
            ..HeapEvent::default()
        }
    }

    fn tracker(events: &[HeapEvent], calls: AllocatorCalls) -> ProcessHeap {
        let mut t = HeapTracker::new(PAGE);
        for e in events {
            t.apply(e, calls);
        }
        t.get(100).cloned().unwrap_or_default()
    }

    #[test]
    fn exec_starts_the_heap_afresh_at_the_new_program_s_own_break() {
        // The old program's heap sat near 0x5555_0000_0000; the new one's starts at 0x4000_0000
        // and grows 3 pages: 3 pages, not the distance between the two images.
        let old = 0x5555_0000_0000;
        let new = 0x4000_0000;
        let mut exec = event(HeapEventKind::Exec, 1, 0, [0; 5], 0);
        exec.comm[..4].copy_from_slice(b"prog");
        let heap = tracker(
            &[
                brk(1, 0, 0, old),
                brk(1, 0, old + 50 * PAGE, old + 50 * PAGE),
                mmap(1, 0, 0x7000_0000, 10 * PAGE, RW),
                exec,
                brk(1, 0, 0, new),
                brk(1, 0, new + 3 * PAGE, new + 3 * PAGE),
            ],
            AllocatorCalls::Untraced,
        );
        assert_eq!(heap.brk_bytes(), 3 * PAGE);
        assert_eq!(heap.anon_committed_bytes(), 0);
        assert_eq!(heap.comm, "prog");
        assert_eq!(heap.brk_calls, 2);
    }

    #[test]
    fn munmap_of_the_middle_leaves_two_pieces() {
        let base = 0x7000_0000;
        let heap = tracker(
            &[
                mmap(1, 0, base, 10 * PAGE, RW),
                event(
                    HeapEventKind::Munmap,
                    1,
                    0,
                    [base + 4 * PAGE, 2 * PAGE, 0, 0, 0],
                    0,
                ),
            ],
            AllocatorCalls::Traced,
        );
        assert_eq!(heap.anon_committed_bytes(), 8 * PAGE);
        assert_eq!(heap.mappings.len(), 2);
        // Unmapping across both pieces and beyond them removes exactly what was there.
        let mut heap = heap;
        heap.apply(
            &event(
                HeapEventKind::Munmap,
                1,
                0,
                [base + 3 * PAGE, 5 * PAGE, 0, 0, 0],
                0,
            ),
            PAGE,
            AllocatorCalls::Traced,
        );
        assert_eq!(heap.anon_committed_bytes(), 5 * PAGE);
    }

    #[test]
    fn mremap_grows_and_moves_keeping_the_site() {
        let (base, moved) = (0x7000_0000, 0x7100_0000);
        let heap = tracker(
            &[
                mmap(1, 0, base, 4 * PAGE, RW),
                event(
                    HeapEventKind::Mremap,
                    1,
                    0,
                    [base, 4 * PAGE, 6 * PAGE, MREMAP_MAYMOVE, 0],
                    moved as i64,
                ),
            ],
            AllocatorCalls::Traced,
        );
        assert_eq!(heap.anon_committed_bytes(), 6 * PAGE);
        let sites = heap.sites();
        assert_eq!(
            sites.values().map(|s| s.anon_mmap_bytes).sum::<u64>(),
            6 * PAGE
        );
        // Shrinking in place.
        let mut heap = heap;
        heap.apply(
            &event(
                HeapEventKind::Mremap,
                1,
                0,
                [moved, 6 * PAGE, 2 * PAGE, 0, 0],
                moved as i64,
            ),
            PAGE,
            AllocatorCalls::Traced,
        );
        assert_eq!(heap.anon_committed_bytes(), 2 * PAGE);
    }

    #[test]
    fn reservations_count_when_they_become_writable() {
        let base = 0x7000_0000;
        let heap = tracker(
            &[
                mmap(1, 5, base, 64 * 1024 * 1024, 0),
                event(
                    HeapEventKind::Mprotect,
                    1,
                    5,
                    [base, 33 * 1024, RW, 0, 0],
                    0,
                ),
            ],
            AllocatorCalls::Traced,
        );
        assert_eq!(heap.anon_committed_bytes(), 36 * 1024); // rounded to pages
        assert_eq!(heap.anon_reserved_bytes(), 64 * 1024 * 1024 - 36 * 1024);
    }

    #[test]
    fn fallback_is_an_mmap_after_a_failed_brk_in_the_same_call() {
        let heap = tracker(
            &[
                brk(1, 0, 0, 0x1000_0000),
                brk(1, 11, 0x1002_1000, 0x1000_0000), // fails
                mmap(1, 11, 0x7000_0000, 1 << 20, RW),
                call_site(1, 11, 0xabc),
                brk(1, 12, 0x1002_1000, 0x1000_0000),
                mmap(1, 12, 0x7100_0000, 135_168, RW),
                call_site(1, 12, 0xabc),
                // A large malloc: mmap in a call whose brk did not fail.
                mmap(1, 13, 0x7200_0000, 1_052_672, RW),
                call_site(1, 13, 0xdef),
                // An mmap in another call than the failed brk is no fallback.
                brk(2, 14, 0x1003_0000, 0x1000_0000),
                call_site(2, 14, 0x111),
                mmap(2, 15, 0x7300_0000, 1 << 20, RW),
            ],
            AllocatorCalls::Traced,
        );
        assert_eq!(heap.brk_failures, 3);
        let fallbacks = heap.fallbacks();
        assert_eq!(fallbacks.count, 2);
        assert_eq!(fallbacks.bytes, (1 << 20) + 135_168);
        assert_eq!(
            fallbacks.chunk_sizes,
            vec![
                ChunkSize {
                    bytes: 1 << 20,
                    count: 1
                },
                ChunkSize {
                    bytes: 135_168,
                    count: 1
                }
            ]
        );
        let sites = heap.sites();
        let leaky = sites
            .iter()
            .find(|(k, _)| k.caller == 0xabc)
            .map(|(_, s)| s)
            .expect("site");
        assert_eq!(leaky.fallback_mmap_count, 2);
        assert_eq!(leaky.fallback_mmap_bytes, (1 << 20) + 135_168);
        assert_eq!(leaky.direct_mmap_bytes, 0);
        let big = sites
            .iter()
            .find(|(k, _)| k.caller == 0xdef)
            .map(|(_, s)| s)
            .expect("site");
        assert_eq!(big.direct_mmap_bytes, 1_052_672);
        // Freeing the large block returns its bytes.
        let mut heap = heap;
        heap.apply(
            &event(
                HeapEventKind::Munmap,
                1,
                0,
                [0x7200_0000, 1_052_672, 0, 0, 0],
                0,
            ),
            PAGE,
            AllocatorCalls::Traced,
        );
        let big = heap
            .sites()
            .into_iter()
            .find(|(k, _)| k.caller == 0xdef)
            .map(|(_, s)| s);
        assert_eq!(big.map_or(0, |s| s.direct_mmap_bytes), 0);
    }

    #[test]
    fn without_uprobes_a_thread_s_next_mmap_after_a_failed_brk_is_a_fallback() {
        let heap = tracker(
            &[
                brk(1, 0, 0x1002_1000, 0x1000_0000),
                mmap(1, 0, 0x7000_0000, 1 << 20, RW),
                mmap(1, 0, 0x7100_0000, 1 << 20, RW), // no failed brk before it
            ],
            AllocatorCalls::Untraced,
        );
        assert_eq!(heap.fallbacks().count, 1);
        // With uprobes, the same sequence outside allocator calls is the program's own mmap.
        let exact = tracker(
            &[
                brk(1, 0, 0x1002_1000, 0x1000_0000),
                mmap(1, 0, 0x7000_0000, 1 << 20, RW),
            ],
            AllocatorCalls::Traced,
        );
        assert_eq!(exact.fallbacks().count, 0);
    }

    #[test]
    fn an_event_of_an_unknown_kind_is_counted_and_changes_nothing() {
        let base = 0x7000_0000;
        let mut unknown = mmap(1, 0, base, 4 * PAGE, RW);
        unknown.kind = 4242;
        let heap = tracker(
            &[mmap(1, 0, base, 4 * PAGE, RW), unknown],
            AllocatorCalls::Traced,
        );
        assert_eq!(heap.events, 2);
        assert_eq!(heap.unknown_events, 1);
        assert_eq!(heap.anon_committed_bytes(), 4 * PAGE);
    }

    #[test]
    fn brk_growth_and_shrink_move_the_break() {
        let mut t = HeapTracker::new(PAGE);
        t.register(100, Some(0x1000_0000), None);
        t.apply(&brk(1, 0, 0x1002_1000, 0x1002_1000), AllocatorCalls::Traced);
        t.apply(&brk(1, 0, 0x1001_0000, 0x1001_0000), AllocatorCalls::Traced);
        let heap = t.get(100).expect("heap");
        assert_eq!(heap.brk_bytes(), 0x1_0000);
        assert_eq!(heap.brk_failures, 0);
        assert_eq!(heap.brk_calls, 2);
    }

    /// A growth-mode event: outside allocator calls, with the site's own (unwound) stack.
    fn grown(kind: HeapEventKind, stack: u32, args: [u64; 5], ret: i64, at_ns: u64) -> HeapEvent {
        HeapEvent {
            kind: kind as u32,
            tgid: 100,
            tid: 1,
            stack_id: stack,
            caller: 0x1000 + u64::from(stack),
            args,
            ret,
            timestamp_ns: at_ns,
            ..HeapEvent::default()
        }
    }

    fn by_stack(heap: &ProcessHeap) -> HashMap<u32, (u64, GrowthTally)> {
        let net = heap.sites();
        heap.growth()
            .iter()
            .map(|(k, t)| (k.stack_id, (net.get(k).map_or(0, SiteHeap::net_bytes), *t)))
            .collect()
    }

    #[test]
    fn brk_growth_belongs_to_its_stacks_and_a_lower_break_gives_back_the_latest_first() {
        let base = 0x1000_0000;
        let mut t = HeapTracker::new(PAGE);
        t.register(100, Some(base), Some(base));
        for e in [
            grown(
                HeapEventKind::Brk,
                1,
                [base + 0x4_0000, 0, 0, 0, 0],
                base as i64 + 0x4_0000,
                10,
            ),
            grown(
                HeapEventKind::Brk,
                2,
                [base + 0x6_0000, 0, 0, 0, 0],
                base as i64 + 0x6_0000,
                20,
            ),
            grown(
                HeapEventKind::Brk,
                1,
                [base + 0x7_0000, 0, 0, 0, 0],
                base as i64 + 0x7_0000,
                30,
            ),
        ] {
            t.apply(&e, AllocatorCalls::Untraced);
        }
        let sites = by_stack(t.get(100).expect("heap"));
        assert_eq!(sites[&1].0, 0x5_0000);
        assert_eq!(sites[&2].0, 0x2_0000);
        assert_eq!(sites[&1].1.events, 2);
        assert_eq!((sites[&1].1.first_ns, sites[&1].1.last_ns), (10, 30));
        // Trimming to base+0x5_0000 gives back stack 1's last 0x1_0000, then half of stack 2's.
        t.apply(
            &grown(
                HeapEventKind::Brk,
                3,
                [base + 0x5_0000, 0, 0, 0, 0],
                base as i64 + 0x5_0000,
                40,
            ),
            AllocatorCalls::Untraced,
        );
        let sites = by_stack(t.get(100).expect("heap"));
        assert_eq!(sites[&1].0, 0x4_0000);
        assert_eq!(sites[&2].0, 0x1_0000);
        // What a site grew is kept: the difference is what it gave back.
        assert_eq!(sites[&1].1.bytes, 0x5_0000);
        assert!(!sites.contains_key(&3), "a shrink is nobody's growth");
        // A refused brk and a query grow nothing.
        t.apply(
            &grown(
                HeapEventKind::Brk,
                4,
                [base + 0x9_0000, 0, 0, 0, 0],
                base as i64 + 0x5_0000,
                50,
            ),
            AllocatorCalls::Untraced,
        );
        t.apply(
            &grown(
                HeapEventKind::Brk,
                4,
                [0, 0, 0, 0, 0],
                base as i64 + 0x5_0000,
                60,
            ),
            AllocatorCalls::Untraced,
        );
        assert!(!by_stack(t.get(100).expect("heap")).contains_key(&4));
    }

    #[test]
    fn write_permission_granted_to_a_reservation_is_the_granting_stack_s_growth() {
        let arena = 0x7f00_0000_0000;
        let heap = tracker(
            &[
                grown(
                    HeapEventKind::Mmap,
                    1,
                    [0, 64 << 20, 0, 0x22, u64::MAX],
                    arena as i64,
                    1,
                ),
                grown(
                    HeapEventKind::Mprotect,
                    2,
                    [arena, 33 * 1024, RW, 0, 0],
                    0,
                    2,
                ),
                grown(
                    HeapEventKind::Mprotect,
                    3,
                    [arena, 40 * 1024, RW, 0, 0],
                    0,
                    3,
                ),
                // Already writable: no new growth.
                grown(
                    HeapEventKind::Mprotect,
                    4,
                    [arena, 8 * 1024, RW, 0, 0],
                    0,
                    4,
                ),
            ],
            AllocatorCalls::Untraced,
        );
        let sites = by_stack(&heap);
        assert!(
            !sites.contains_key(&1),
            "a PROT_NONE reservation is no growth"
        );
        assert_eq!(sites[&2].0, 36 * 1024);
        assert_eq!(sites[&3].0, 4 * 1024);
        assert!(!sites.contains_key(&4));
        assert_eq!(heap.anon_committed_bytes(), 40 * 1024);
    }

    #[test]
    fn a_mapping_enlarged_by_mremap_belongs_to_the_stack_that_enlarged_it() {
        let (old, moved) = (0x7000_0000, 0x7100_0000);
        let heap = tracker(
            &[
                grown(
                    HeapEventKind::Mmap,
                    1,
                    [0, 4 * PAGE, RW, 0x22, u64::MAX],
                    old as i64,
                    1,
                ),
                grown(
                    HeapEventKind::Mremap,
                    2,
                    [old, 4 * PAGE, 10 * PAGE, MREMAP_MAYMOVE, 0],
                    moved as i64,
                    2,
                ),
            ],
            AllocatorCalls::Untraced,
        );
        let sites = by_stack(&heap);
        assert_eq!(
            sites[&1],
            (
                0,
                GrowthTally {
                    bytes: 4 * PAGE,
                    events: 1,
                    first_ns: 1,
                    last_ns: 1
                }
            )
        );
        assert_eq!(sites[&2].0, 10 * PAGE);
        assert_eq!(sites[&2].1.bytes, 6 * PAGE);
    }
}
