//! Audit records as OpenTelemetry logs, sent to a collector with OTLP over gRPC
//! (`opentelemetry.proto.collector.logs.v1.LogsService/Export`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::{ExportError, Fields, Sink};

/// Tries per batch, and the time limit of each.
const ATTEMPTS: u32 = 3;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) struct Otlp {
    runtime: tokio::runtime::Runtime,
    client: LogsServiceClient<Channel>,
    resource: Resource,
    endpoint: String,
    /// Say a failing collector once, not once a batch.
    warned: bool,
}

/// Parse an endpoint: `http://` or `https://`, with a host. Returns it and whether it is TLS.
pub(super) fn check_endpoint(
    endpoint: &str,
) -> Result<(tonic::codegen::http::Uri, bool), ExportError> {
    let bad = |why: String| ExportError::BadEndpoint {
        endpoint: endpoint.to_string(),
        why,
    };
    let uri: tonic::codegen::http::Uri = endpoint.parse().map_err(|e| bad(format!("{e}")))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad("the scheme must be http or https".into())),
    };
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host".into()));
    }
    Ok((uri, tls))
}

impl Otlp {
    pub(super) fn new(endpoint: &str) -> Result<Otlp, ExportError> {
        let bad = |why: String| ExportError::BadEndpoint {
            endpoint: endpoint.to_string(),
            why,
        };
        let (uri, tls) = check_endpoint(endpoint)?;
        let mut ep = Endpoint::from(uri)
            .connect_timeout(ATTEMPT_TIMEOUT)
            .timeout(ATTEMPT_TIMEOUT);
        if tls {
            ep = ep
                .tls_config(ClientTlsConfig::new().with_native_roots())
                .map_err(|e| bad(format!("TLS: {e}")))?;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ExportError::Thread)?;
        // Lazy: a collector that is down now may be up by the first record.
        let channel = {
            let _guard = runtime.enter();
            ep.connect_lazy()
        };
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        Ok(Otlp {
            runtime,
            client: LogsServiceClient::new(channel),
            resource: Resource {
                attributes: vec![
                    kv("service.name", "agent-supervisor"),
                    kv("service.version", env!("CARGO_PKG_VERSION")),
                    kv("host.name", &host),
                ],
                ..Default::default()
            },
            endpoint: endpoint.to_string(),
            warned: false,
        })
    }

    fn request(&self, lines: &[String]) -> ExportLogsServiceRequest {
        let observed = nanos(SystemTime::now());
        let records = lines.iter().map(|l| record(l, observed)).collect();
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "agent-supervisor.audit".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}

impl Sink for Otlp {
    fn send(&mut self, lines: &[String]) -> usize {
        let request = self.request(lines);
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=ATTEMPTS {
            let mut client = self.client.clone();
            let req = request.clone();
            let result = self
                .runtime
                .block_on(async move { client.export(req).await });
            match result {
                Ok(reply) => {
                    // A collector may take part of a batch (partial success).
                    let rejected = reply
                        .get_ref()
                        .partial_success
                        .as_ref()
                        .map(|p| p.rejected_log_records.max(0) as usize)
                        .unwrap_or(0);
                    self.warned = false;
                    return lines.len().saturating_sub(rejected);
                }
                Err(status) if attempt == ATTEMPTS => {
                    if !self.warned {
                        self.warned = true;
                        tracing::warn!(
                            "OTLP export to {} failed ({}): audit records are not exported until it answers (the audit file has them all)",
                            self.endpoint,
                            status.message()
                        );
                    }
                }
                Err(_) => {
                    std::thread::sleep(delay);
                    delay *= 2;
                }
            }
        }
        0
    }

    fn batches(&self) -> bool {
        true
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One audit line as a log record.
fn record(line: &str, observed: u64) -> LogRecord {
    let f = Fields::of(line);
    let time = humantime::parse_rfc3339(&f.ts)
        .map(nanos)
        .unwrap_or(observed);
    let (severity, text) = if f.is_denial() {
        (SeverityNumber::Warn, "WARN")
    } else {
        (SeverityNumber::Info, "INFO")
    };
    let mut attributes = vec![
        kv("session.id", &f.session),
        kv("audit.id", &f.id),
        kv("audit.kind", &f.kind),
    ];
    for (k, v) in [
        ("audit.decision", &f.decision),
        ("audit.decided_by", &f.decided_by),
        ("audit.rule", &f.rule),
    ] {
        if !v.is_empty() {
            attributes.push(kv(k, v));
        }
    }
    attributes.push(KeyValue {
        key: "process.pid".into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(f.pid)),
        }),
    });
    attributes.push(kv("audit.record", line));
    LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: observed,
        severity_number: severity as i32,
        severity_text: text.into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(f.summary)),
        }),
        attributes,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_keeps_its_time_severity_and_whole_line() {
        let line = r#"{"id":"s-1","ts":"2026-11-21T10:00:00.000001Z","session":"s","pid":7,"kind":"open","action":{"path":"/etc/shadow"},"decision":"deny","decided_by":"rule","rule":"p:1:1"}"#;
        let r = record(line, 5);
        assert_eq!(r.time_unix_nano, 1_795_255_200_000_001_000);
        assert_eq!(r.observed_time_unix_nano, 5);
        assert_eq!(r.severity_number, SeverityNumber::Warn as i32);
        let attr = |k: &str| {
            r.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(
            attr("audit.record"),
            Some(any_value::Value::StringValue(line.into()))
        );
        assert_eq!(attr("process.pid"), Some(any_value::Value::IntValue(7)));
        assert_eq!(
            r.body.and_then(|b| b.value),
            Some(any_value::Value::StringValue(
                "deny open /etc/shadow (rule p:1:1)".into()
            ))
        );
    }

    #[test]
    fn endpoints_are_checked_up_front() {
        for bad in ["127.0.0.1:4317", "ftp://x:1", "http://", "not a uri"] {
            assert!(
                matches!(Otlp::new(bad), Err(ExportError::BadEndpoint { .. })),
                "{bad} accepted"
            );
        }
        assert!(Otlp::new("http://127.0.0.1:4317").is_ok());
    }
}
