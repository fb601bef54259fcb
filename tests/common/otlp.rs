//! A real OTLP/gRPC logs collector for the export tests: a `LogsService` on an ephemeral port
//! of 127.0.0.1 that keeps every record it is sent.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::logs::v1::LogRecord;

#[derive(Default, Clone)]
pub struct Collector {
    pub records: Arc<Mutex<Vec<LogRecord>>>,
}

#[tonic::async_trait]
impl LogsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let mut records = self.records.lock().unwrap();
        for rl in request.into_inner().resource_logs {
            let service = rl
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .any(|a| {
                    a.key == "service.name"
                        && a.value.as_ref().and_then(|v| v.value.clone())
                            == Some(Value::StringValue("agent-supervisor".into()))
                });
            assert!(service, "the resource has no service.name");
            for sl in rl.scope_logs {
                records.extend(sl.log_records);
            }
        }
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

pub fn attr(r: &LogRecord, key: &str) -> Option<Value> {
    r.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.clone())
        .and_then(|v| v.value)
}

/// Start the collector on an ephemeral port of 127.0.0.1, on its own runtime thread.
pub fn start_collector() -> (Collector, u16, tokio::sync::oneshot::Sender<()>) {
    let collector = Collector::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind collector");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let svc = LogsServiceServer::new(collector.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                })
                .await;
        });
    });
    (collector, port, stop_tx)
}

/// The `audit.record` attribute (the whole audit line) of every record received, in order.
pub fn lines(c: &Collector) -> Vec<String> {
    c.records
        .lock()
        .unwrap()
        .iter()
        .filter_map(|r| match attr(r, "audit.record") {
            Some(Value::StringValue(s)) => Some(s),
            _ => None,
        })
        .collect()
}
