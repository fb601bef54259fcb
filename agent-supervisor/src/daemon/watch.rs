//! `agent-supervisor approvals watch`: a terminal UI (ratatui) on the daemon: the live
//! activity of every session the caller may see (the audit stream) above the approvals
//! waiting, the selected one in full below. Keys as at `run`'s prompt: `y` allow once, `n`
//! deny once, `a` allow for the session, `b` deny for the session; up/down to choose; `q` to
//! quit. Every string from an agent is shown with control and bidi characters escaped.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use anyhow::{Context, Result};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, List, ListItem, ListState, Paragraph, Wrap};
use tokio::sync::mpsc;

use super::client::{connect_to, request, Target};
use super::proto::{self, approval_event::Event as ApprovalEv};
use crate::supervise::escape_for_human;

const ACTIVITY_LINES: usize = 500;

enum Ev {
    Audit(proto::AuditEvent),
    Approval(proto::ApprovalEvent),
    Key(KeyCode),
    Said(String),
    Lost(String),
}

struct View {
    activity: VecDeque<String>,
    pending: BTreeMap<String, proto::Approval>,
    selected: ListState,
    status: String,
}

fn esc(s: &str) -> String {
    escape_for_human(s.as_bytes())
}

fn activity_line(e: &proto::AuditEvent) -> String {
    let v: serde_json::Value = serde_json::from_str(&e.json).unwrap_or_default();
    let ts = v["ts"].as_str().unwrap_or("");
    let time = ts.get(11..19).unwrap_or(ts);
    let by = v["decided_by"].as_str().unwrap_or("");
    esc(&format!(
        "{time} {} {:<13} {:<5} {:<9} {}",
        e.session, e.kind, e.decision, by, v["action"]
    ))
}

/// Run the UI until `q`.
pub fn run(target: &Target) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let channel = rt.block_on(connect_to(target))?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Ev>();
    // The streams.
    {
        let tx = tx.clone();
        let ch = channel.clone();
        rt.spawn(async move {
            let r: Result<()> = async {
                let mut s = proto::approvals_client::ApprovalsClient::new(ch)
                    .watch_approvals(request(proto::WatchApprovalsRequest::default())?)
                    .await?
                    .into_inner();
                while let Some(e) = s.message().await? {
                    let _ = tx.send(Ev::Approval(e));
                }
                Ok(())
            }
            .await;
            let _ = tx.send(Ev::Lost(format!("approval stream ended: {r:?}")));
        });
    }
    {
        let tx = tx.clone();
        let ch = channel.clone();
        rt.spawn(async move {
            let r: Result<()> = async {
                let mut c = proto::audit_client::AuditClient::new(ch);
                // Only what happens from now on: the log's end is the first cursor.
                let mut s = c
                    .stream_audit(request(proto::StreamAuditRequest {
                        no_follow: true,
                        ..Default::default()
                    })?)
                    .await?
                    .into_inner();
                let mut last = 0;
                let mut tail: VecDeque<proto::AuditEvent> = VecDeque::new();
                while let Some(e) = s.message().await? {
                    last = e.cursor;
                    tail.push_back(e);
                    if tail.len() > 50 {
                        tail.pop_front();
                    }
                }
                for e in tail {
                    let _ = tx.send(Ev::Audit(e));
                }
                let mut s = c
                    .stream_audit(request(proto::StreamAuditRequest {
                        after_cursor: last,
                        ..Default::default()
                    })?)
                    .await?
                    .into_inner();
                while let Some(e) = s.message().await? {
                    let _ = tx.send(Ev::Audit(e));
                }
                Ok(())
            }
            .await;
            let _ = tx.send(Ev::Lost(format!("audit stream ended: {r:?}")));
        });
    }
    // Keys, from a thread of their own.
    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("keys".into())
            .spawn(move || loop {
                match event::poll(Duration::from_millis(200)) {
                    Ok(true) => {
                        if let Ok(Event::Key(k)) = event::read() {
                            if k.kind == KeyEventKind::Press && tx.send(Ev::Key(k.code)).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(false) => {
                        if tx.is_closed() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            })
            .context("starting the key thread")?;
    }
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let mut view = View {
        activity: VecDeque::new(),
        pending: BTreeMap::new(),
        selected: ListState::default(),
        status: "y allow once  n deny once  a allow for session  b deny for session  up/down choose  q quit".into(),
    };
    let result = loop {
        if let Err(e) = terminal.draw(|f| draw(f, &mut view)) {
            break Err(e.into());
        }
        let Some(ev) = rt.block_on(rx.recv()) else {
            break Ok(0);
        };
        match ev {
            Ev::Audit(e) => {
                view.activity.push_back(activity_line(&e));
                if view.activity.len() > ACTIVITY_LINES {
                    view.activity.pop_front();
                }
            }
            Ev::Approval(e) => match e.event {
                Some(ApprovalEv::Pending(a)) => {
                    view.pending.insert(a.id.clone(), a);
                }
                Some(ApprovalEv::Resolved(r)) => {
                    view.pending.remove(&r.id);
                    view.status = esc(&format!("{}: {} ({})", r.id, r.decision, r.by));
                }
                _ => {}
            },
            Ev::Said(s) => view.status = s,
            Ev::Lost(s) => break Err(anyhow::anyhow!("{s}")),
            Ev::Key(KeyCode::Char('q')) | Ev::Key(KeyCode::Esc) => break Ok(0),
            Ev::Key(KeyCode::Up) => view.selected.select_previous(),
            Ev::Key(KeyCode::Down) => view.selected.select_next(),
            Ev::Key(KeyCode::Char(c)) => {
                let resolution = match c.to_ascii_lowercase() {
                    'y' => proto::Resolution::AllowOnce,
                    'n' => proto::Resolution::DenyOnce,
                    'a' => proto::Resolution::AllowForSession,
                    'b' => proto::Resolution::DenyForSession,
                    _ => continue,
                };
                let Some(a) = selected(&view).cloned() else {
                    continue;
                };
                let tx = tx.clone();
                let ch = channel.clone();
                rt.spawn(async move {
                    let r = async {
                        proto::approvals_client::ApprovalsClient::new(ch)
                            .resolve(request(proto::ResolveRequest {
                                id: a.id.clone(),
                                action_digest: a.action_digest.clone(),
                                resolution: resolution as i32,
                            })?)
                            .await
                            .map_err(|s| anyhow::anyhow!("{}", s.message()))
                    }
                    .await;
                    let _ = tx.send(Ev::Said(match r {
                        Ok(r) => format!("{}: {}", a.id, r.into_inner().decision),
                        Err(e) => format!("{}: refused: {e}", a.id),
                    }));
                });
            }
            Ev::Key(_) => {}
        }
    };
    ratatui::restore();
    result
}

fn selected(view: &View) -> Option<&proto::Approval> {
    let i = view.selected.selected().unwrap_or(0);
    view.pending
        .values()
        .nth(i.min(view.pending.len().saturating_sub(1)))
}

fn draw(f: &mut ratatui::Frame, view: &mut View) {
    let [top, mid, detail, status] = Layout::vertical([
        Constraint::Min(5),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let h = top.height.saturating_sub(2) as usize;
    let lines: Vec<Line> = view
        .activity
        .iter()
        .skip(view.activity.len().saturating_sub(h))
        .map(|l| Line::raw(l.clone()))
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" activity ")),
        top,
    );
    if view.selected.selected().is_none() && !view.pending.is_empty() {
        view.selected.select(Some(0));
    }
    if let Some(i) = view.selected.selected() {
        if i >= view.pending.len() {
            view.selected.select(view.pending.len().checked_sub(1));
        }
    }
    let items: Vec<ListItem> = view
        .pending
        .values()
        .map(|a| ListItem::new(esc(&format!("{}  {:<7} {}", a.id, a.kind, a.summary))))
        .collect();
    let title = format!(" waiting for approval: {} ", view.pending.len());
    f.render_stateful_widget(
        List::new(items)
            .block(Block::default().borders(Borders::ALL).title(title))
            .highlight_style(Style::default().add_modifier(Modifier::REVERSED))
            .highlight_symbol("> "),
        mid,
        &mut view.selected,
    );
    let text = match selected(view) {
        Some(a) => {
            let left = a.deadline_unix_ms
                - std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
            vec![
                Line::raw(esc(&format!(
                    "session {} (pid {}): {}",
                    a.session,
                    a.pid,
                    a.agent_command.join(" ")
                ))),
                Line::raw(esc(&format!("{}: {}", a.kind, a.summary))),
                Line::raw(esc(&format!("rule: {}", a.rule))),
                Line::raw(esc(&format!("reason: {}", a.reason))),
                Line::raw(format!(
                    "denied in {} s if unanswered  [y] once  [n] no  [a] always this session  [b] never this session",
                    (left / 1000).max(0)
                )),
            ]
        }
        None => vec![Line::raw("nothing waits")],
    };
    f.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title(" action ")),
        detail,
    );
    f.render_widget(Paragraph::new(view.status.clone()), status);
}
