//! Dropping the capabilities leaktrace no longer needs once its probes are attached.
//!
//! leaktrace starts as root (or with the file capabilities SECURITY.md lists) and then reads
//! files and memory of processes that may be hostile. Once attached, a root leaktrace keeps only
//! what later work needs, so that a bug in a parser of target data cannot be turned into the
//! rest of root's powers (loading kernel modules, raw I/O, changing owners, setuid...):
//! - `CAP_BPF`, `CAP_PERFMON`, `CAP_SYS_ADMIN`: attaching probes later (a process that system-wide
//!   mode starts tracing exactly, an exec'd image, short bursts of exact tracing). On this kernel a
//!   uprobe's `perf_event_open` demands `CAP_SYS_ADMIN` (SECURITY.md).
//! - `CAP_SYS_PTRACE`, `CAP_DAC_READ_SEARCH`, `CAP_CHECKPOINT_RESTORE`: /proc/PID/{maps,mem,root},
//!   `map_files`, the target's module files and tracefs.
//! - `CAP_DAC_OVERRIDE`, `CAP_FOWNER`: only when there is an output to write (`--json`,
//!   `--snapshot-dir`), whose directory may belong to the user who ran sudo.
//! - `CAP_KILL`: only with a launched command (it may have become another user's, `sudo -u`).
//!
//! Everything else leaves the effective, permitted, inheritable and bounding sets, and the
//! ambient set is cleared, so no thread and no later exec can get it back. Capabilities are per
//! thread: the drop happens on the thread that runs the session, and every other thread is
//! checked (`/proc/self/task`); one that kept more is reported, not ignored. Threads started
//! before the attach narrow themselves: the HTTP thread (`--listen`) drops every capability,
//! the unwind-table thread keeps the session's set.
use std::collections::HashSet;

use caps::{CapSet, Capability};

/// What the rest of the run will need (see the module comment).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// `--json` or `--snapshot-dir`: files to write, possibly in another user's directory.
    pub writes_outputs: bool,
    /// A launched command, which leaktrace may have to kill.
    pub launched_command: bool,
}

impl Needs {
    /// The capabilities kept for the rest of the run.
    pub fn kept(self) -> HashSet<Capability> {
        let mut kept: HashSet<Capability> = [
            Capability::CAP_BPF,
            Capability::CAP_PERFMON,
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_SYS_PTRACE,
            Capability::CAP_DAC_READ_SEARCH,
            Capability::CAP_CHECKPOINT_RESTORE,
        ]
        .into();
        if self.writes_outputs {
            kept.extend([Capability::CAP_DAC_OVERRIDE, Capability::CAP_FOWNER]);
        }
        if self.launched_command {
            kept.insert(Capability::CAP_KILL);
        }
        kept
    }
}

/// Keep only what `needs` says the rest of the run needs, on this thread, and check the other
/// threads. Returns the capabilities dropped from the effective set (empty for a leaktrace that
/// had no more than those).
pub fn drop_unneeded(needs: Needs) -> anyhow::Result<Vec<Capability>> {
    let dropped = narrow_this_thread(needs)?;
    let allowed = needs
        .kept()
        .iter()
        .fold(0u64, |mask, cap| mask | cap.bitmask());
    for (tid, effective) in crate::procfs::threads_effective_capabilities() {
        if effective & !allowed != 0 {
            log::warn!(
                "thread {tid} of leaktrace kept capabilities {:#x} beyond those it needs",
                effective & !allowed
            );
        }
    }
    Ok(dropped)
}

/// [`drop_unneeded`] for the calling thread alone (a thread started before the attach narrows
/// itself as it starts).
pub fn narrow_this_thread(needs: Needs) -> anyhow::Result<Vec<Capability>> {
    let kept = needs.kept();
    let effective = caps::read(None, CapSet::Effective)?;
    let mut dropped: Vec<Capability> = effective.difference(&kept).copied().collect();
    dropped.sort_by_key(|cap| cap.index());

    // The bounding set first: removing from it needs CAP_SETPCAP, which goes next. Without it
    // (an ordinary user with file capabilities) nothing beyond the permitted set can be gained
    // anyway, and the bounding set is left as it is.
    if effective.contains(&Capability::CAP_SETPCAP) {
        let bounding = caps::read(None, CapSet::Bounding)?;
        for cap in bounding.difference(&kept) {
            caps::drop(None, CapSet::Bounding, *cap)?;
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    let narrowed = |set: CapSet| -> anyhow::Result<()> {
        let current = caps::read(None, set)?;
        caps::set(None, set, &current.intersection(&kept).copied().collect())?;
        Ok(())
    };
    // Effective before permitted: the effective set must stay within the permitted one.
    narrowed(CapSet::Effective)?;
    narrowed(CapSet::Inheritable)?;
    narrowed(CapSet::Permitted)?;
    Ok(dropped)
}

/// Give up every capability on the calling thread, for good (the HTTP thread: it reads only
/// its own process's files and serves what the session publishes). Other threads keep theirs.
pub fn drop_all_on_this_thread() -> Result<(), caps::errors::CapsError> {
    // The bounding set while CAP_SETPCAP is still there to allow it (root's thread).
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in caps::read(None, CapSet::Bounding)? {
            caps::drop(None, CapSet::Bounding, cap)?;
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Effective)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::clear(None, CapSet::Permitted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_and_launches_add_what_they_need_and_nothing_else() {
        let base = Needs::default().kept();
        assert!(base.contains(&Capability::CAP_BPF));
        assert!(!base.contains(&Capability::CAP_DAC_OVERRIDE));
        assert!(!base.contains(&Capability::CAP_KILL));
        assert!(!base.contains(&Capability::CAP_SETUID));
        assert!(!base.contains(&Capability::CAP_SYS_MODULE));

        let writing = Needs {
            writes_outputs: true,
            ..Needs::default()
        }
        .kept();
        assert_eq!(
            writing.difference(&base).collect::<HashSet<_>>(),
            [&Capability::CAP_DAC_OVERRIDE, &Capability::CAP_FOWNER].into()
        );
        let launching = Needs {
            launched_command: true,
            ..Needs::default()
        }
        .kept();
        assert_eq!(
            launching.difference(&base).collect::<Vec<_>>(),
            vec![&Capability::CAP_KILL]
        );
    }
}
