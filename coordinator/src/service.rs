//! The gRPC service (`flotilla.v1.Coordinator`): sweeps for the CLI, artifacts in chunks,
//! and the workers' `Work` streams. Every call must carry the shared token as
//! `authorization: Bearer <token>` metadata ([`Auth`]); a missing or wrong one is
//! `Unauthenticated`.
//!
//! Where a result is stored: a `ShardResult` on a Work stream goes to [`Core::result`], which
//! fences it against the shard's current attempt, commits it, and only then sends the `Ack`.

use crate::aggregate;
use crate::artifacts::CHUNK_SIZE;
use crate::core::Core;
use crate::error::CoordinatorError;
use crate::submit::submit_sweep;
use flotilla_client::registry::Registry;
use flotilla_client::telemetry::{self, TARGET};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::coordinator_message::Kind as Out;
use flotilla_proto::v1::worker_message::Kind as In;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Checks the bearer token on every call.
#[derive(Clone)]
pub struct Auth {
    token: Option<Arc<str>>,
}

impl Auth {
    /// `None`: no token required (only for embedded use on a loopback address).
    pub fn new(token: Option<String>) -> Self {
        Self {
            token: token.map(Arc::from),
        }
    }
}

/// Compare without stopping at the first difference (the token is a secret).
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(req);
        };
        let Some(value) = req.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>` metadata",
            ));
        };
        let given = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if same_secret(given.as_bytes(), token.as_bytes()) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("wrong token"))
        }
    }
}

/// The service; cheap to clone.
#[derive(Clone)]
pub struct Service {
    pub core: Arc<Core>,
    pub registry: Arc<dyn Registry>,
}

fn not_found(sweep: &str) -> Status {
    Status::not_found(format!("no sweep `{sweep}`"))
}

/// Best-effort reading of a registry entry's capabilities JSON.
fn capabilities_from_json(json: &str) -> pb::Capabilities {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let s = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or_default();
    let list = |k: &str| -> Vec<String> {
        v.get(k)
            .and_then(|x| x.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    pb::Capabilities {
        device: s("device"),
        gpu_name: s("gpu_name"),
        gpu_memory_bytes: n("gpu_memory_bytes"),
        ram_bytes: n("ram_bytes"),
        cores: n("cores") as u32,
        models_cached: list("models_cached"),
        models_loaded: list("models_loaded"),
        slots: n("slots") as u32,
        version: s("version"),
        hostname: s("hostname"),
        memory_free_bytes: n("memory_free_bytes"),
        compute_capability: s("compute_capability"),
        model_footprints: v
            .get("model_footprints")
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .map(|f| pb::ModelFootprint {
                        spec: f["spec"].as_str().unwrap_or_default().to_string(),
                        weights_bytes: f["weights_bytes"].as_u64().unwrap_or(0),
                        kv_bytes_per_token: f["kv_bytes_per_token"].as_u64().unwrap_or(0),
                        context_tokens: f["context_tokens"].as_u64().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The coordinator's errors on the wire: this is the only place they become gRPC statuses.
impl From<CoordinatorError> for Status {
    fn from(e: CoordinatorError) -> Status {
        match e {
            CoordinatorError::Invalid(m) => Status::invalid_argument(m),
            CoordinatorError::Sweep(e) => Status::invalid_argument(e.to_string()),
            CoordinatorError::Artifacts(e) => Status::invalid_argument(e.to_string()),
            e @ (CoordinatorError::Store(_)
            | CoordinatorError::Client(_)
            | CoordinatorError::Internal(_)) => Status::internal(e.to_string()),
        }
    }
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for Service {
    async fn submit_sweep(
        &self,
        req: Request<pb::SubmitSweepRequest>,
    ) -> Result<Response<pb::SweepStatus>, Status> {
        use tracing::Instrument;
        // The submission's span: a child of the client's trace; the sweep's assignments hang
        // off it.
        let span =
            tracing::info_span!(target: TARGET, "submit sweep", sweep = tracing::field::Empty);
        telemetry::set_parent_from_metadata(&span, req.metadata());
        let status = submit_sweep(&self.core, req.into_inner())
            .instrument(span.clone())
            .await?;
        span.record("sweep", status.sweep_id.as_str());
        if let Some(tp) = telemetry::traceparent(&span) {
            self.core.set_sweep_trace(&status.sweep_id, tp);
        }
        Ok(Response::new(status))
    }

    async fn get_sweep(
        &self,
        req: Request<pb::SweepRef>,
    ) -> Result<Response<pb::SweepStatus>, Status> {
        let id = req.into_inner().sweep_id;
        self.core
            .status(&id)
            .map(Response::new)
            .ok_or_else(|| not_found(&id))
    }

    async fn list_sweeps(
        &self,
        _: Request<pb::ListSweepsRequest>,
    ) -> Result<Response<pb::ListSweepsResponse>, Status> {
        Ok(Response::new(pb::ListSweepsResponse {
            sweeps: self.core.list(),
        }))
    }

    async fn cancel_sweep(
        &self,
        req: Request<pb::SweepRef>,
    ) -> Result<Response<pb::SweepStatus>, Status> {
        let id = req.into_inner().sweep_id;
        self.core
            .cancel(&id)
            .await?
            .map(Response::new)
            .ok_or_else(|| not_found(&id))
    }

    type WatchSweepStream = Stream_<pb::SweepStatus>;

    async fn watch_sweep(
        &self,
        req: Request<pb::SweepRef>,
    ) -> Result<Response<Self::WatchSweepStream>, Status> {
        let id = req.into_inner().sweep_id;
        let first = self.core.status(&id).ok_or_else(|| not_found(&id))?;
        let mut changes = self.core.subscribe();
        let core = self.core.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut last = first;
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            loop {
                if is_final(last.state) {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
                // Coalesce bursts: at most ~20 updates a second per watcher.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                changes.borrow_and_update();
                let Some(now) = core.status(&id) else { return };
                if now != last {
                    last = now;
                    if tx.send(Ok(last.clone())).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_results(
        &self,
        req: Request<pb::SweepRef>,
    ) -> Result<Response<pb::SweepResults>, Status> {
        let id = req.into_inner().sweep_id;
        aggregate::results(&self.core, &id)
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map(Response::new)
            .ok_or_else(|| not_found(&id))
    }

    async fn list_workers(
        &self,
        _: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let mut workers = self.core.workers();
        // Registered in the registry but without a stream (yet).
        if let Ok(entries) = self.registry.workers().await {
            for e in entries {
                if !workers.iter().any(|w| w.worker_id == e.id) {
                    workers.push(pb::WorkerInfo {
                        worker_id: e.id.clone(),
                        capabilities: Some(capabilities_from_json(&e.capabilities_json)),
                        ..Default::default()
                    });
                }
            }
        }
        workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }

    async fn upload_artifact(
        &self,
        req: Request<Streaming<pb::ArtifactChunk>>,
    ) -> Result<Response<pb::ArtifactRef>, Status> {
        let mut chunks = req.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty artifact upload"))?;
        let art = first.artifact.clone().ok_or_else(|| {
            Status::invalid_argument("the first chunk of an upload must carry its sha256 and size")
        })?;
        let refuse = |e: crate::artifacts::ArtifactError| match e {
            crate::artifacts::ArtifactError::Refused(m) => Status::invalid_argument(m),
            other => Status::internal(other.to_string()),
        };
        let mut up = self
            .core
            .artifacts
            .begin(&art.sha256, art.size)
            .map_err(refuse)?;
        up.write(&first.data).map_err(refuse)?;
        while let Some(chunk) = chunks.message().await? {
            up.write(&chunk.data).map_err(refuse)?;
        }
        tokio::task::spawn_blocking(move || up.finish())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(refuse)?;
        let (sha, size) = (art.sha256.clone(), art.size);
        self.core.metrics.artifact("upload", size);
        self.core
            .store
            .call(move |c| {
                c.execute(
                    "INSERT OR IGNORE INTO artifacts (sha256, size, created_ms) VALUES (?1,?2,?3)",
                    rusqlite::params![sha, size as i64, crate::store::now_ms()],
                )?;
                Ok(())
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(art))
    }

    type DownloadArtifactStream = Stream_<pb::ArtifactChunk>;

    async fn download_artifact(
        &self,
        req: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        let req = req.into_inner();
        let art = req.artifact.unwrap_or_default();
        let path = self
            .core
            .artifacts
            .path(&art.sha256)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut file = std::fs::File::open(&path).map_err(|_| {
            Status::not_found(format!("artifact {} is not stored here", art.sha256))
        })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        // A cut download resumes where its copy ends.
        if req.offset > size {
            return Err(Status::invalid_argument(format!(
                "offset {} is past the end of artifact {} ({size} bytes)",
                req.offset, art.sha256
            )));
        }
        if req.offset > 0 {
            use std::io::Seek;
            file.seek(std::io::SeekFrom::Start(req.offset))
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let metrics = self.core.metrics.clone();
        let (tx, rx) = mpsc::channel(4);
        let reference = pb::ArtifactRef {
            sha256: art.sha256.clone(),
            size,
        };
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; CHUNK_SIZE];
            let mut sent_any = false;
            loop {
                let n = match file.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
                        return;
                    }
                };
                if n == 0 && sent_any {
                    return;
                }
                let chunk = pb::ArtifactChunk {
                    artifact: Some(reference.clone()),
                    data: buf[..n].to_vec(),
                };
                sent_any = true;
                metrics.artifact("download", n as u64);
                if tx.blocking_send(Ok(chunk)).is_err() || n == 0 {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn push_model(
        &self,
        req: Request<pb::PushModelRequest>,
    ) -> Result<Response<pb::ModelEntry>, Status> {
        Ok(Response::new(
            crate::models::push(&self.core, req.into_inner()).await?,
        ))
    }

    async fn list_models(
        &self,
        _: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        Ok(Response::new(pb::ListModelsResponse {
            models: crate::models::list(&self.core).await?,
        }))
    }

    type WorkStream = Stream_<pb::CoordinatorMessage>;

    async fn work(
        &self,
        req: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the Work stream closed before hello"))?;
        let Some(In::Hello(hello)) = first.kind else {
            return Err(Status::invalid_argument(
                "the first message on a Work stream must be hello",
            ));
        };
        let worker = hello.worker_id.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = self.core.connect(hello, tx.clone()).await?;
        let _ = tx.send(Ok(pb::CoordinatorMessage {
            kind: Some(Out::Welcome(pb::Welcome {
                coordinator_id: self.core.id.clone(),
                heartbeat_ms: self.core.heartbeat.as_millis() as u32,
            })),
        }));
        let core = self.core.clone();
        tokio::spawn(async move {
            let reason = loop {
                let msg = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break "the worker closed its stream".to_string(),
                    Err(e) => break format!("the stream failed: {}", e.message()),
                };
                if !core.is_current(&worker, conn) {
                    return;
                }
                core.touch(&worker);
                // Decisions are taken here, in message order; waiting for their commits
                // happens beside, so one worker's messages keep flowing.
                let pending_ack = match msg.kind {
                    Some(In::Ask(a)) => {
                        if let Some(send) = core.ask(&worker, conn, a) {
                            tokio::spawn(send);
                        }
                        None
                    }
                    Some(In::Progress(_)) => None,
                    Some(In::Result(r)) => Some(core.result(r)),
                    Some(In::Failure(f)) => Some(core.failure(f)),
                    Some(In::Hello(_)) => {
                        let _ = tx.send(Err(Status::invalid_argument(
                            "hello may only be the first message",
                        )));
                        break "a second hello".to_string();
                    }
                    None => None,
                };
                if let Some(pending) = pending_ack {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let ack = pending.await;
                        let _ = tx.send(Ok(pb::CoordinatorMessage {
                            kind: Some(Out::Ack(ack)),
                        }));
                    });
                }
            };
            core.disconnect(&worker, Some(conn), &reason).await;
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

fn is_final(state: i32) -> bool {
    state == pb::SweepState::Succeeded as i32
        || state == pb::SweepState::Failed as i32
        || state == pb::SweepState::Cancelled as i32
}
