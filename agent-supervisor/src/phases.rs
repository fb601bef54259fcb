//! How long each phase of a session's start-up and tear-down took.
//!
//! `run -vv` logs one line per phase, `phase NAME: X.XXX ms`, and `cargo xtask bench` reads
//! those lines for its start-up breakdown. Times are `CLOCK_MONOTONIC`, which the sandbox's
//! init reads too: its own steps (mounts, Landlock, seccomp) are reported with the time each
//! ended and logged here in order. Init's steps run while the supervisor starts its threads:
//! they are logged as `init NAME`, beside the supervisor's own timeline.
#![forbid(unsafe_code)]

use crate::sys;

/// The phases of one session, timed from the previous mark.
#[derive(Debug)]
pub struct Phases {
    last: u64,
}

impl Default for Phases {
    fn default() -> Self {
        Self::new()
    }
}

impl Phases {
    /// Start timing now.
    pub fn new() -> Phases {
        Phases {
            last: sys::monotonic_ns(),
        }
    }

    /// Phase `name` ended now.
    pub fn mark(&mut self, name: &str) {
        self.mark_at(name, sys::monotonic_ns());
    }

    /// A phase of another process (init's set-up steps) that ran from `from` to `at`
    /// (`CLOCK_MONOTONIC` ns) alongside ours: logged as `init NAME`, and not a step of this
    /// timeline (the bench leaves it out of the sum).
    pub fn mark_alongside(&self, name: &str, from: u64, at: u64) {
        let took = at.saturating_sub(from);
        tracing::debug!("phase init {name}: {:.3} ms", took as f64 / 1e6);
    }

    /// Phase `name` ended at `at` (`CLOCK_MONOTONIC` nanoseconds, maybe read by another
    /// process).
    pub fn mark_at(&mut self, name: &str, at: u64) {
        let took = at.saturating_sub(self.last);
        tracing::debug!("phase {name}: {:.3} ms", took as f64 / 1e6);
        self.last = self.last.max(at);
    }
}
