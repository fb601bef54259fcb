//! Prometheus metrics (`prometheus-client`), served over HTTP at `GET /metrics` on the opt-in
//! `metrics_listen` address (no listener unless configured).
#![forbid(unsafe_code)]

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub kind: String,
    pub decision: String,
    pub decided_by: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ByLabels {
    pub by: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Every metric the daemon keeps.
pub struct Metrics {
    registry: Registry,
    pub sessions_started: Counter,
    pub sessions_running: Gauge,
    pub decisions: Family<DecisionLabels, Counter>,
    pub approvals_pending: Gauge,
    pub approvals_resolved: Family<ByLabels, Counter>,
    /// Seconds from an approval's arrival at the daemon to a client's answer.
    pub approval_latency: Histogram,
    pub audit_records: Counter,
    pub events_dropped: Family<ReasonLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("agent_supervisor");
        let m = Metrics {
            sessions_started: Counter::default(),
            sessions_running: Gauge::default(),
            decisions: Family::default(),
            approvals_pending: Gauge::default(),
            approvals_resolved: Family::default(),
            approval_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 20)),
            audit_records: Counter::default(),
            events_dropped: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "sessions_started",
            "Sessions launched",
            m.sessions_started.clone(),
        );
        registry.register(
            "sessions_running",
            "Sessions running now",
            m.sessions_running.clone(),
        );
        registry.register(
            "decisions",
            "Decisions by kind, result and who decided",
            m.decisions.clone(),
        );
        registry.register(
            "approvals_pending",
            "Approvals waiting for an answer",
            m.approvals_pending.clone(),
        );
        registry.register(
            "approvals_resolved",
            "Approvals resolved, by who resolved them (human, timeout, gone, session, session-ended)",
            m.approvals_resolved.clone(),
        );
        registry.register(
            "approval_latency_seconds",
            "From an approval's arrival to an approval client's answer",
            m.approval_latency.clone(),
        );
        registry.register(
            "audit_records",
            "Records appended to the audit log",
            m.audit_records.clone(),
        );
        registry.register(
            "events_dropped",
            "Events dropped: malformed lines from a session, watchers that fell behind, records the log could not take",
            m.events_dropped.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    pub fn dropped(&self, reason: &str) {
        self.events_dropped
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn resolved(&self, by: &str) {
        self.approvals_resolved
            .get_or_create(&ByLabels { by: by.into() })
            .inc();
    }

    /// Count what the audit log commits (a task subscribed to the log).
    pub fn follow_log(self: &Arc<Self>, log: &super::log::AuditLog) {
        let mut rx = log.subscribe();
        let m = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(e) => {
                        m.audit_records.inc();
                        if !e.decision.is_empty() {
                            m.decisions
                                .get_or_create(&DecisionLabels {
                                    kind: e.kind.clone(),
                                    decision: e.decision.clone(),
                                    decided_by: e.decided_by.clone(),
                                })
                                .inc();
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        m.events_dropped
                            .get_or_create(&ReasonLabels {
                                reason: "metrics-lagged".into(),
                            })
                            .inc_by(n);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serve `GET /metrics` on `addr` until the process ends.
pub async fn serve(addr: std::net::SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    use anyhow::Context;
    use http_body_util::Full;
    use hyper::body::Bytes;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics_listen {addr}"))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = Arc::clone(&metrics);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let metrics = Arc::clone(&metrics);
                    async move {
                        let r = if req.method() == hyper::Method::GET
                            && req.uri().path() == "/metrics"
                        {
                            hyper::Response::builder()
                                .header(
                                    "content-type",
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )
                                .body(Full::new(Bytes::from(metrics.encode())))
                        } else {
                            hyper::Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::from_static(b"GET /metrics\n")))
                        };
                        r
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(())
}
