//! The goroutine census off the session's thread. A census reads every goroutine's `g` (a
//! million goroutines are 400 MB of target memory) and groups them: it can take longer than an
//! interval, and the dashboard and the snapshots must not wait for it. One thread per Go
//! process reads a census when asked; the session waits for it at most [`CENSUS_WAIT`], then
//! goes on with the latest one finished, whose age the report gives.
use std::{
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
        Arc,
    },
    time::{Duration, Instant},
};

use super::{
    census::{self, CensusTracker, Group},
    GoRuntime, LayoutSource, Memory,
};

/// How long a snapshot waits for the census it asked for before it uses the previous one.
pub const CENSUS_WAIT: Duration = Duration::from_millis(100);

/// A census asked for: at `t_s` seconds into the run; `sampling` adds a point to the groups'
/// series.
struct Request {
    t_s: f64,
    sampling: bool,
}

/// A finished census.
pub struct Outcome {
    /// When it was asked for, seconds into the run.
    pub t_s: f64,
    /// How long it took to read and group.
    pub took: Duration,
    pub result: Result<Summary, String>,
}

/// What a census found.
pub struct Summary {
    pub layout_source: LayoutSource,
    pub torn: u64,
    pub goroutines: u64,
    pub groups: Vec<Group>,
}

/// The census thread of one Go process, as the session sees it. Dropping it ends the thread
/// after the census it may be reading (whose reads fail soon once the process is gone); the
/// thread is not joined, so that no session waits for it.
pub struct CensusThread {
    /// `None` once dropped or when the thread could not start.
    requests: Option<SyncSender<Request>>,
    results: Receiver<Outcome>,
    /// A census asked for and not yet received.
    pending: Option<Instant>,
    latest: Option<Outcome>,
    /// Why there is no thread.
    failed: Option<String>,
}

impl CensusThread {
    pub fn spawn(runtime: Arc<GoRuntime>, memory: Memory) -> CensusThread {
        // One request in flight at most: a census asked while one is under way is not queued.
        let (requests, inbox) = mpsc::sync_channel::<Request>(1);
        let (outbox, results) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("go-census-{}", memory.pid))
            .spawn(move || {
                let mut tracker = CensusTracker::default();
                while let Ok(request) = inbox.recv() {
                    let started = Instant::now();
                    let result = census::read(&runtime, &memory)
                        .map(|census| Summary {
                            layout_source: census.layout_source,
                            torn: census.torn,
                            goroutines: census.goroutines.len() as u64,
                            groups: tracker.record(
                                &runtime,
                                &census,
                                request.t_s,
                                request.sampling,
                            ),
                        })
                        .map_err(|err| err.to_string());
                    let outcome = Outcome {
                        t_s: request.t_s,
                        took: started.elapsed(),
                        result,
                    };
                    if outbox.send(outcome).is_err() {
                        break;
                    }
                }
            });
        let (requests, failed) = match spawned {
            Ok(_) => (Some(requests), None),
            Err(err) => (
                None,
                Some(format!(
                    "no goroutine census: cannot start its thread: {err}"
                )),
            ),
        };
        CensusThread {
            requests,
            results,
            pending: None,
            latest: None,
            failed,
        }
    }

    /// Ask for a census at `t_s` (unless one is under way), wait for it at most `wait`, and
    /// return the latest finished one; `Err`: why there is none yet.
    pub fn latest(&mut self, t_s: f64, sampling: bool, wait: Duration) -> Result<&Outcome, String> {
        self.collect();
        if self.pending.is_none() {
            if let Some(requests) = &self.requests {
                match requests.try_send(Request { t_s, sampling }) {
                    Ok(()) => self.pending = Some(Instant::now()),
                    Err(TrySendError::Full(_)) => {}
                    Err(TrySendError::Disconnected(_)) => {
                        self.requests = None;
                        self.failed = Some("no goroutine census: its thread stopped".to_string());
                    }
                }
            }
        }
        if self.pending.is_some() {
            match self.results.recv_timeout(wait) {
                Ok(outcome) => self.received(outcome),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.pending = None;
                    self.requests = None;
                    self.failed = Some("no goroutine census: its thread stopped".to_string());
                }
            }
        }
        match (&self.latest, &self.failed, self.pending) {
            (Some(outcome), _, _) => Ok(outcome),
            (None, Some(why), _) => Err(why.clone()),
            (None, None, Some(since)) => Err(format!(
                "the first goroutine census is still being read ({:.1} s so far)",
                since.elapsed().as_secs_f64()
            )),
            (None, None, None) => Err("no goroutine census asked for yet".to_string()),
        }
    }

    /// Take the censuses finished since the last look.
    fn collect(&mut self) {
        while let Ok(outcome) = self.results.try_recv() {
            self.received(outcome);
        }
    }

    fn received(&mut self, outcome: Outcome) {
        self.pending = None;
        self.latest = Some(outcome);
    }
}
