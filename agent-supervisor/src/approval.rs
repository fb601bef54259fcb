//! The approval broker: the one owner of "ask" decisions.
//!
//! Asks queue here while the trapped syscall waits (the agent sees nothing). With a terminal,
//! each is shown on the controlling tty (never on the agent's stdout), with every control and
//! bidi character escaped, and answered with one key: `y` allow once, `n` deny once, `a` allow
//! for the rest of the session, `b` deny for the rest of the session. An ask still unanswered
//! at the policy's `approval_timeout` is denied. Headless (no tty, `--headless`, CI), an ask
//! is denied, or allowed with `--default-allow`.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use agent_supervisor_policy::Decision;
use nix::sys::termios::{self, LocalFlags, SetArg};

use crate::supervise::{finish, Ctx, Decider, Pending};
use crate::sys;

/// How asks are answered.
pub enum Mode {
    /// Prompt on this terminal (an open `/dev/tty`).
    Terminal(File),
    /// Nobody to ask: deny, or allow with `--default-allow`.
    Headless { default_allow: bool },
}

/// Handle to the broker.
pub struct Approvals {
    tx: mpsc::Sender<Pending>,
}

/// The broker's end, moved into its thread.
pub struct Broker {
    rx: mpsc::Receiver<Pending>,
    mode: Mode,
    timeout: Duration,
}

impl Approvals {
    pub fn new(mode: Mode, timeout: Duration) -> (Approvals, Broker) {
        let (tx, rx) = mpsc::channel();
        (Approvals { tx }, Broker { rx, mode, timeout })
    }

    /// Queue an ask. If the broker is gone, the action is lost... never allowed: the trapped
    /// syscall fails when the supervisor exits.
    pub fn ask(&self, p: Pending) {
        let _ = self.tx.send(p);
    }
}

/// Pick the mode: a terminal if we have one and weren't told otherwise.
pub fn choose_mode(headless: bool, default_allow: bool) -> Mode {
    if !headless {
        if let Ok(tty) = File::options().read(true).write(true).open("/dev/tty") {
            return Mode::Terminal(tty);
        }
    }
    Mode::Headless { default_allow }
}

struct Waiting {
    p: Pending,
    deadline: Instant,
}

/// The broker thread.
pub fn run(ctx: Arc<Ctx>, b: Broker) {
    let mut queue: VecDeque<Waiting> = VecDeque::new();
    let mut tty = match b.mode {
        Mode::Headless { default_allow } => {
            while let Ok(p) = b.rx.recv() {
                let d = if default_allow {
                    Decision::Allow
                } else {
                    Decision::Deny
                };
                finish(&ctx, p, d, Decider::Headless);
            }
            return;
        }
        Mode::Terminal(t) => t,
    };
    loop {
        if queue.is_empty() {
            match b.rx.recv() {
                Ok(p) => queue.push_back(Waiting {
                    deadline: p.started + b.timeout,
                    p,
                }),
                Err(_) => return,
            }
        }
        while let Ok(p) = b.rx.try_recv() {
            queue.push_back(Waiting {
                deadline: p.started + b.timeout,
                p,
            });
        }
        settle(&ctx, &mut queue, None);
        let Some(front) = queue.pop_front() else {
            continue;
        };
        let answer = prompt(&ctx, &mut tty, &front, &b.rx, &mut queue, b.timeout);
        match answer {
            Answer::Once(d) => finish(&ctx, front.p, d, Decider::Human),
            Answer::Session(d) => {
                ctx.remembered
                    .lock()
                    .expect("remembered lock")
                    .insert(front.p.key.clone(), d);
                finish(&ctx, front.p, d, Decider::Human);
                settle(&ctx, &mut queue, None);
            }
            Answer::TimedOut => finish(&ctx, front.p, Decision::Deny, Decider::Timeout),
            Answer::Gone => {}
        }
    }
}

/// Resolve queued asks that no longer need a human: expired, already answered for the
/// session, or whose syscall is gone.
fn settle(ctx: &Arc<Ctx>, queue: &mut VecDeque<Waiting>, now: Option<Instant>) {
    let now = now.unwrap_or_else(Instant::now);
    let mut keep = VecDeque::with_capacity(queue.len());
    while let Some(w) = queue.pop_front() {
        if w.p
            .notif
            .is_some_and(|n| !sys::notif_id_valid(ctx.listener.as_fd(), n.id))
        {
            continue;
        }
        let remembered = ctx
            .remembered
            .lock()
            .expect("remembered lock")
            .get(&w.p.key)
            .copied();
        if let Some(d) = remembered {
            finish(ctx, w.p, d, Decider::Session);
        } else if now >= w.deadline {
            finish(ctx, w.p, Decision::Deny, Decider::Timeout);
        } else {
            keep.push_back(w);
        }
    }
    *queue = keep;
}

enum Answer {
    Once(Decision),
    Session(Decision),
    TimedOut,
    Gone,
}

fn prompt(
    ctx: &Arc<Ctx>,
    tty: &mut File,
    w: &Waiting,
    rx: &mpsc::Receiver<Pending>,
    queue: &mut VecDeque<Waiting>,
    timeout: Duration,
) -> Answer {
    let rule = match &w.p.verdict.decided_by {
        agent_supervisor_policy::DecidedBy::Rule(i) => ctx.policy.describe_rule(*i),
        agent_supervisor_policy::DecidedBy::Default => {
            "no rule matched; the policy's default is ask".to_string()
        }
        agent_supervisor_policy::DecidedBy::Filesystem => "filesystem".to_string(),
    };
    let reason =
        w.p.verdict
            .reason
            .as_deref()
            .map(|r| {
                format!(
                    "\n    reason: {}",
                    crate::supervise::escape_for_human(r.as_bytes())
                )
            })
            .unwrap_or_default();
    let left = w
        .deadline
        .saturating_duration_since(Instant::now())
        .as_secs();
    let _ = write!(
        tty,
        "\n\x1b[1m[agent-supervisor]\x1b[0m {} wants to {}:\n    {}\n    {}{}\n  allow? [y] once  [n] no  [a] always this session  [b] never this session  (no answer in {}s = no) ",
        if w.p.pid > 0 {
            format!("the agent (pid {})", w.p.pid)
        } else {
            "the agent".to_string()
        },
        verb(w.p.kind),
        w.p.summary,
        crate::supervise::escape_for_human(rule.as_bytes()),
        reason,
        left.min(timeout.as_secs()),
    );
    let _ = tty.flush();
    let saved = termios::tcgetattr(tty.as_fd()).ok();
    if let Some(t) = &saved {
        let mut raw = t.clone();
        raw.local_flags
            .remove(LocalFlags::ICANON | LocalFlags::ECHO);
        let _ = termios::tcsetattr(tty.as_fd(), SetArg::TCSANOW, &raw);
    }
    let answer = loop {
        let now = Instant::now();
        if now >= w.deadline {
            break Answer::TimedOut;
        }
        if w.p
            .notif
            .is_some_and(|n| !sys::notif_id_valid(ctx.listener.as_fd(), n.id))
        {
            break Answer::Gone;
        }
        while let Ok(p) = rx.try_recv() {
            queue.push_back(Waiting {
                deadline: p.started + timeout,
                p,
            });
        }
        settle(ctx, queue, Some(now));
        let wait = w
            .deadline
            .saturating_duration_since(now)
            .min(Duration::from_millis(200));
        match sys::poll_one(tty.as_fd(), libc::POLLIN, wait.as_millis() as i32) {
            Ok(r) if r & libc::POLLIN != 0 => {
                let mut b = [0u8; 1];
                match tty.read(&mut b) {
                    Ok(1) => match b[0].to_ascii_lowercase() {
                        b'y' => break Answer::Once(Decision::Allow),
                        b'n' => break Answer::Once(Decision::Deny),
                        b'a' => break Answer::Session(Decision::Allow),
                        b'b' => break Answer::Session(Decision::Deny),
                        _ => continue,
                    },
                    _ => break Answer::TimedOut,
                }
            }
            Ok(r) if r & (libc::POLLHUP | libc::POLLERR) != 0 => break Answer::TimedOut,
            _ => continue,
        }
    };
    if let Some(t) = &saved {
        let _ = termios::tcsetattr(tty.as_fd(), SetArg::TCSANOW, t);
    }
    let said = match &answer {
        Answer::Once(Decision::Allow) => "allowed once",
        Answer::Once(_) => "denied once",
        Answer::Session(Decision::Allow) => "allowed for this session",
        Answer::Session(_) => "denied for this session",
        Answer::TimedOut => "no answer: denied",
        Answer::Gone => "no longer needed (the agent stopped waiting)",
    };
    let _ = writeln!(tty, "\n  -> {said}");
    answer
}

fn verb(kind: crate::supervise::Kind) -> &'static str {
    use crate::supervise::Kind::*;
    match kind {
        Exec => "run a program",
        Open => "open a file",
        Connect => "connect",
        Send => "send to an address",
        Bind => "bind a socket",
        Resolve => "look up a host name",
    }
}
