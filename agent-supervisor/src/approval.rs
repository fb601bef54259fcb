//! The approval broker: the one owner of "ask" decisions.
//!
//! Asks queue here while the trapped syscall waits (the agent sees nothing). With a terminal,
//! each is shown on the controlling tty (never on the agent's stdout), with every control and
//! bidi character escaped, and answered with one key: `y` allow once, `n` deny once, `a` allow
//! for the rest of the session, `b` deny for the rest of the session. An ask still unanswered
//! at the policy's `approval_timeout` is denied. Headless (no tty, `--headless`, CI), an ask
//! is denied, or allowed with `--default-allow`. Launched by the daemon, asks go to the daemon
//! over its link (see [`crate::daemon::link`]) and come back answered by an approval client;
//! the daemon denies at the deadline, and this broker denies a little later on its own should
//! the daemon not answer; a closed link denies everything and ends the session.
//!
//! While asks wait, the broker sleeps until something happens: a key, a message (a new ask,
//! the daemon's answer), the end of an asking thread (its pidfd), or the first deadline.
//!
//! At most [`MAX_PENDING_ASKS`] asks of a session wait at once (in this queue, and so in the
//! daemon's): one more is denied at once (`decided_by: "queue-full"`), so that a hostile agent
//! flooding asks from many threads cannot grow the supervisor's (or the daemon's) memory.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use agent_supervisor_policy::Decision;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::termios::{self, LocalFlags, SetArg};

use crate::daemon::link::{self, Line, LinkWriter, ToDaemon, ToSession};
use crate::supervise::{finish, Ctx, Decider, Pending};
use crate::sys;

/// How asks are answered.
pub enum Mode {
    /// Prompt on this terminal (an open `/dev/tty`).
    Terminal(File),
    /// Nobody to ask: deny, or allow with `--default-allow`.
    Headless { default_allow: bool },
    /// Ask the daemon that launched this session, over its link.
    Daemon {
        link: LinkWriter,
        reader: UnixStream,
    },
}

/// How long after the daemon's deadline this broker denies on its own (the daemon's answer,
/// timeout included, normally comes first).
const DAEMON_GRACE: Duration = Duration::from_secs(5);

/// How many asks of one session may wait for an answer at once; one more is denied at once
/// (`decided_by: "queue-full"`, audited).
pub const MAX_PENDING_ASKS: usize = 64;

/// One place in the queue of pending asks, given back when dropped (the ask is settled).
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the broker is fed.
pub enum BrokerMsg {
    Ask(Box<Pending>, Slot),
    /// From the daemon.
    Answer(ToSession),
    /// The daemon's link closed or broke.
    LinkClosed(String),
}

/// Handle to the broker.
pub struct Approvals {
    tx: mpsc::Sender<BrokerMsg>,
    /// Asks sent to the broker and not settled yet.
    pending: Arc<AtomicUsize>,
    wake: Wake,
    /// The broker's end, until its thread starts: with the first ask, or at once for a
    /// session of the daemon ([`Approvals::start`]).
    broker: crate::supervise::Idle<Broker>,
}

/// The broker's end, moved into its thread.
pub struct Broker {
    rx: mpsc::Receiver<BrokerMsg>,
    tx: mpsc::Sender<BrokerMsg>,
    mode: Mode,
    timeout: Duration,
    wake: Wake,
}

/// Wakes the broker while it waits on a prompt or for the daemon: signalled after every
/// message sent to it, so that it sleeps until something happens (no re-check on a timer).
#[derive(Clone)]
struct Wake(Option<Arc<EventFd>>);

impl Wake {
    fn new() -> Wake {
        // Without an eventfd (fd exhaustion at start) the broker still gets every message;
        // it then notices them at its next other wake-up, or within WAKE_FALLBACK.
        Wake(
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .ok()
                .map(Arc::new),
        )
    }

    fn signal(&self) {
        if let Some(fd) = &self.0 {
            // A full counter is still readable: nothing is lost by ignoring EAGAIN.
            let _ = fd.write(1);
        }
    }

    /// Reset, before the messages are read (a message sent after is signalled again).
    fn drain(&self) {
        if let Some(fd) = &self.0 {
            // EAGAIN: already zero.
            let _ = fd.read();
        }
    }

    fn poll_entry(&self) -> Option<(std::os::fd::BorrowedFd<'_>, i16)> {
        self.0.as_ref().map(|fd| (fd.as_fd(), libc::POLLIN))
    }

    /// The longest wait when there is no eventfd to wake on.
    fn cap(&self) -> Duration {
        if self.0.is_some() {
            Duration::MAX
        } else {
            WAKE_FALLBACK
        }
    }
}

/// How often a broker without an eventfd looks for new messages while it waits.
const WAKE_FALLBACK: Duration = Duration::from_millis(200);

impl Approvals {
    pub fn new(mode: Mode, timeout: Duration) -> Approvals {
        let (tx, rx) = mpsc::channel();
        let wake = Wake::new();
        Approvals {
            tx: tx.clone(),
            pending: Arc::new(AtomicUsize::new(0)),
            wake: wake.clone(),
            broker: crate::supervise::Idle::new(Broker {
                rx,
                tx,
                mode,
                timeout,
                wake,
            }),
        }
    }

    /// Start the broker's thread now (it takes the session's context when it is handed
    /// over): a session of the daemon reads the daemon's link from the start.
    pub fn start(&self, mut ctx: crate::supervise::Later) -> std::io::Result<()> {
        self.broker.start("approvals", move |b| {
            if let Some(ctx) = ctx.get() {
                run(ctx, b)
            }
        })
    }

    /// Queue an ask; `Err` gives it back when [`MAX_PENDING_ASKS`] are already waiting (the
    /// caller denies it). If the broker is gone, the action is lost... never allowed: the
    /// trapped syscall fails when the supervisor exits.
    pub fn ask(&self, ctx: &Arc<Ctx>, p: Pending) -> Result<(), Box<Pending>> {
        let p = Box::new(p);
        let before = self.pending.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(Arc::clone(&self.pending));
        if before >= MAX_PENDING_ASKS {
            return Err(p);
        }
        let ctx = Arc::clone(ctx);
        if let Err(e) = self.broker.start("approvals", move |b| run(ctx, b)) {
            tracing::warn!("the approval broker's thread could not start ({e}): the ask is denied");
            return Err(p);
        }
        let _ = self.tx.send(BrokerMsg::Ask(p, slot));
        self.wake.signal();
        Ok(())
    }
}

/// The next ask (terminal mode has nothing else on its channel).
fn recv_ask(rx: &mpsc::Receiver<BrokerMsg>) -> Option<(Pending, Slot)> {
    loop {
        match rx.recv().ok()? {
            BrokerMsg::Ask(p, slot) => return Some((*p, slot)),
            _ => continue,
        }
    }
}

fn try_recv_ask(rx: &mpsc::Receiver<BrokerMsg>) -> Option<(Pending, Slot)> {
    loop {
        match rx.try_recv().ok()? {
            BrokerMsg::Ask(p, slot) => return Some((*p, slot)),
            _ => continue,
        }
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
    /// Readable when the asking thread (or, before Linux 6.9, its process) has ended: its
    /// syscall is gone, nobody needs the answer. None for a DNS ask (no syscall), or once it
    /// fired while the syscall was still there (never polled again).
    gone: Option<std::os::fd::OwnedFd>,
    /// Its place in the queue, given back when it is settled (dropped).
    _slot: Slot,
}

impl Waiting {
    /// `p` waits until `timeout` after it was trapped.
    fn new(p: Pending, timeout: Duration, slot: Slot) -> Waiting {
        let deadline = p.started + timeout;
        let gone = p
            .notif
            .and_then(|n| sys::pidfd_open_thread(n.pid as i32, p.pid).ok());
        Waiting {
            p,
            deadline,
            gone,
            _slot: slot,
        }
    }

    fn gone_entry(&self) -> Option<(std::os::fd::BorrowedFd<'_>, i16)> {
        self.gone.as_ref().map(|fd| (fd.as_fd(), libc::POLLIN))
    }

    /// Its syscall is no longer waiting (the task ended or the call was interrupted).
    fn syscall_gone(&self, ctx: &Ctx) -> bool {
        self.p
            .notif
            .is_some_and(|n| !sys::notif_id_valid(ctx.listener.as_fd(), n.id))
    }
}

/// Poll `fds` (None entries are skipped, and reported not ready) until `deadline` at most.
/// Which entries had events, in order.
fn wait_for(
    fds: &[Option<(std::os::fd::BorrowedFd<'_>, i16)>],
    deadline: Option<Instant>,
    cap: Duration,
) -> Vec<i16> {
    let present: Vec<(std::os::fd::BorrowedFd<'_>, i16)> = fds.iter().flatten().copied().collect();
    let wait = deadline
        .map(|d| d.saturating_duration_since(Instant::now()))
        .unwrap_or(Duration::MAX)
        .min(cap);
    let timeout = if wait == Duration::MAX {
        -1
    } else {
        sys::poll_timeout(wait)
    };
    let got = sys::poll_fds(&present, timeout).unwrap_or_else(|_| vec![0; present.len()]);
    let mut got = got.into_iter();
    fds.iter()
        .map(|f| f.map_or(0, |_| got.next().unwrap_or(0)))
        .collect()
}

/// The broker thread.
fn run(ctx: Arc<Ctx>, b: Broker) {
    let mut queue: VecDeque<Waiting> = VecDeque::new();
    let mut tty = match b.mode {
        Mode::Daemon { link, reader } => return run_daemon(ctx, b.rx, b.tx, b.wake, link, reader),
        Mode::Headless { default_allow } => {
            while let Some((p, _slot)) = recv_ask(&b.rx) {
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
            match recv_ask(&b.rx) {
                Some((p, slot)) => queue.push_back(Waiting::new(p, b.timeout, slot)),
                None => return,
            }
        }
        b.wake.drain();
        while let Some((p, slot)) = try_recv_ask(&b.rx) {
            queue.push_back(Waiting::new(p, b.timeout, slot));
        }
        settle(&ctx, &mut queue, None);
        let Some(front) = queue.pop_front() else {
            continue;
        };
        let answer = prompt(
            &ctx,
            &mut tty,
            &front,
            (&b.rx, &b.wake, b.timeout),
            &mut queue,
        );
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
        if w.syscall_gone(ctx) {
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
    (rx, wake, timeout): (&mpsc::Receiver<BrokerMsg>, &Wake, Duration),
    queue: &mut VecDeque<Waiting>,
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
    // Sleeps until a key, a new ask, the end of an asking thread, or the first deadline.
    let mut watch_front = true;
    let answer = loop {
        let now = Instant::now();
        if now >= w.deadline {
            break Answer::TimedOut;
        }
        if w.syscall_gone(ctx) {
            break Answer::Gone;
        }
        wake.drain();
        while let Some((p, slot)) = try_recv_ask(rx) {
            queue.push_back(Waiting::new(p, timeout, slot));
        }
        settle(ctx, queue, Some(now));
        let next = queue.iter().map(|q| q.deadline).chain([w.deadline]).min();
        let mut fds = vec![
            Some((tty.as_fd(), libc::POLLIN)),
            wake.poll_entry(),
            w.gone_entry().filter(|_| watch_front),
        ];
        fds.extend(queue.iter().map(Waiting::gone_entry));
        let ready = wait_for(&fds, next, wake.cap());
        // A queued ask's thread ended: `settle` above drops it on the next turn. One whose
        // syscall is somehow still there is not polled again (it would wake us forever).
        for (q, r) in queue.iter_mut().zip(&ready[3..]) {
            if *r != 0 && !q.syscall_gone(ctx) {
                q.gone = None;
            }
        }
        if ready[2] != 0 && !w.syscall_gone(ctx) {
            watch_front = false;
        }
        let r = ready[0];
        if r & libc::POLLIN != 0 {
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
        } else if r & (libc::POLLHUP | libc::POLLERR) != 0 {
            break Answer::TimedOut;
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

/// The broker of a session launched by the daemon.
fn run_daemon(
    ctx: Arc<Ctx>,
    rx: mpsc::Receiver<BrokerMsg>,
    tx: mpsc::Sender<BrokerMsg>,
    wake: Wake,
    link: LinkWriter,
    reader: UnixStream,
) {
    let link_wake = wake.clone();
    let spawned = std::thread::Builder::new()
        .name("daemon-link".into())
        .spawn(move || {
            let mut r = BufReader::new(reader);
            let why = loop {
                match link::read_line(&mut r) {
                    Ok(Some(Line::Control(c))) => match serde_json::from_str::<ToSession>(&c) {
                        Ok(m) => {
                            if tx.send(BrokerMsg::Answer(m)).is_err() {
                                return;
                            }
                            link_wake.signal();
                        }
                        Err(e) => break format!("unreadable message from the daemon: {e}"),
                    },
                    Ok(Some(Line::Audit(_))) => {
                        break "unexpected audit line from the daemon".into()
                    }
                    Ok(None) => break "the daemon closed the link".into(),
                    Err(e) => break format!("reading from the daemon: {e}"),
                }
            };
            let _ = tx.send(BrokerMsg::LinkClosed(why));
            link_wake.signal();
        });
    if spawned.is_err() {
        eprintln!("agent-supervisor: cannot start the daemon-link thread; ending the session");
        sys::exit_now(crate::session::EXIT_SUPERVISOR_ERROR);
    }
    let timeout = ctx.policy.approval_timeout;
    let mut waiting: HashMap<u64, Waiting> = HashMap::new();
    let mut next_id: u64 = 0;
    // Sleeps until a message (an ask, an answer, the link's end), the end of an asking thread,
    // or the first deadline.
    loop {
        let ids: Vec<u64> = waiting.keys().copied().collect();
        let mut fds = vec![wake.poll_entry()];
        fds.extend(ids.iter().map(|id| waiting[id].gone_entry()));
        let next = waiting.values().map(|w| w.deadline).min();
        let ready = wait_for(&fds, next, wake.cap());
        for (id, r) in ids.iter().zip(&ready[1..]) {
            // Its thread ended: settled below. One whose syscall is somehow still there is
            // not polled again (it would wake us forever).
            if let Some(w) = waiting
                .get_mut(id)
                .filter(|w| *r != 0 && !w.syscall_gone(&ctx))
            {
                w.gone = None;
            }
        }
        wake.drain();
        loop {
            match rx.try_recv() {
                Ok(msg) => daemon_message(&ctx, msg, &mut waiting, &mut next_id, &link, timeout),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        settle_daemon(&ctx, &mut waiting, &link);
    }
}

/// One message to the daemon broker: an ask to pass on, the daemon's answer, or the end of
/// its link.
fn daemon_message(
    ctx: &Arc<Ctx>,
    msg: BrokerMsg,
    waiting: &mut HashMap<u64, Waiting>,
    next_id: &mut u64,
    link: &LinkWriter,
    timeout: Duration,
) {
    match msg {
        BrokerMsg::Ask(p, slot) => {
            let p = *p;
            *next_id += 1;
            let id = *next_id;
            let msg = ToDaemon::Ask {
                id,
                pid: p.pid,
                kind: p.kind.as_str().into(),
                summary: p.summary.clone(),
                action: p.details.clone(),
                rule: rule_text(ctx, &p),
                reason: p.verdict.reason.clone().unwrap_or_default(),
                timeout_ms: timeout.saturating_sub(p.started.elapsed()).as_millis() as u64,
            };
            waiting.insert(id, Waiting::new(p, timeout + DAEMON_GRACE, slot));
            if let Err(e) = link.send(&msg) {
                link_lost(ctx, waiting, &format!("writing to the daemon: {e}"));
            }
        }
        BrokerMsg::Answer(ToSession::Answer {
            id,
            allow,
            for_session,
            expired,
        }) => {
            // An answer for an ask settled meanwhile is moot.
            if let Some(w) = waiting.remove(&id) {
                let d = if allow {
                    Decision::Allow
                } else {
                    Decision::Deny
                };
                if for_session {
                    ctx.remembered
                        .lock()
                        .expect("remembered lock")
                        .insert(w.p.key.clone(), d);
                }
                let by = if expired {
                    Decider::Timeout
                } else {
                    Decider::Human
                };
                finish(ctx, w.p, d, by);
            }
        }
        BrokerMsg::LinkClosed(why) => link_lost(ctx, waiting, &why),
    }
}

/// Settle what no longer needs the daemon, and tell it.
fn settle_daemon(ctx: &Arc<Ctx>, waiting: &mut HashMap<u64, Waiting>, link: &LinkWriter) {
    let now = Instant::now();
    let ids: Vec<u64> = waiting.keys().copied().collect();
    for id in ids {
        let w = &waiting[&id];
        let remembered = ctx
            .remembered
            .lock()
            .expect("remembered lock")
            .get(&w.p.key)
            .copied();
        // A DNS ask has no notification: it is gone only when its lookup gives up.
        let settled = if w.syscall_gone(ctx) {
            Some((None, "gone"))
        } else if let Some(d) = remembered {
            Some((Some((d, Decider::Session)), "session"))
        } else if now >= w.deadline {
            Some((Some((Decision::Deny, Decider::Timeout)), "timeout"))
        } else {
            None
        };
        let Some((outcome, by)) = settled else {
            continue;
        };
        let w = waiting.remove(&id).expect("present");
        let decision = match outcome {
            Some((d, decider)) => {
                finish(ctx, w.p, d, decider);
                d
            }
            None => Decision::Deny,
        };
        let _ = link.send(&ToDaemon::Settled {
            id,
            decision: if decision == Decision::Allow {
                "allow"
            } else {
                "deny"
            }
            .into(),
            by: by.into(),
        });
    }
}

/// The daemon is gone: deny everything waiting and end the session (the sandbox's init dies
/// with us). A session launched by the daemon never outlives it.
fn link_lost(ctx: &Arc<Ctx>, waiting: &mut HashMap<u64, Waiting>, why: &str) -> ! {
    for (_, w) in waiting.drain() {
        finish(ctx, w.p, Decision::Deny, Decider::Timeout);
    }
    eprintln!("agent-supervisor: the daemon's link is lost ({why}); ending the session");
    sys::exit_now(crate::session::EXIT_SUPERVISOR_ERROR);
}

/// The asking rule for a human: its text and place, or the policy default.
pub fn rule_text(ctx: &Ctx, p: &Pending) -> String {
    match &p.verdict.decided_by {
        agent_supervisor_policy::DecidedBy::Rule(i) => ctx.policy.describe_rule(*i),
        agent_supervisor_policy::DecidedBy::Default => {
            "no rule matched; the policy's default is ask".to_string()
        }
        agent_supervisor_policy::DecidedBy::Filesystem => "filesystem".to_string(),
    }
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
