//! Starting and stopping a coordinator: [`serve`] binds the port, wins the leader election
//! (publishing its address), opens the data folder, starts the background loops (dispatch,
//! heartbeat reaper, registry watch) and serves gRPC until [`RunningCoordinator::shutdown`].

use crate::core::Core;
use crate::error::{CoordinatorError, CoordinatorResult};
use crate::service::{Auth, Service};
use flotilla_client::registry::{Registration, Registry, WorkerEvent};
use flotilla_proto::v1::coordinator_server::CoordinatorServer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// TLS for the gRPC port (PEM). With `client_ca`, clients must present a certificate signed
/// by it (mutual TLS).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
}

/// Everything a coordinator needs.
#[derive(Clone)]
pub struct CoordinatorConfig {
    /// Where to listen (`0.0.0.0:7070`; port 0 picks a free one).
    pub listen: SocketAddr,
    /// The address published under the leader key for workers and the CLI (default:
    /// `http://` or `https://` + the bound address; set it when listening on 0.0.0.0).
    pub advertise: Option<String>,
    /// Holds `coordinator.db`, `artifacts/` and `sweeps/`.
    pub data_dir: PathBuf,
    /// The shared bearer token; None accepts every caller (embedded use on loopback only).
    pub token: Option<String>,
    pub tls: Option<TlsConfig>,
    /// Membership and leader election (etcd, or in memory for embedded runs).
    pub registry: Arc<dyn Registry>,
    /// How often workers send progress while running and ask while idle.
    pub heartbeat: Duration,
    /// A worker silent for this long is dropped and its shards requeued.
    pub heartbeat_timeout: Duration,
    /// `--http`: serve `/metrics`, `/healthz`, `/readyz` (and the routes of `http_routes`)
    /// here.
    pub http: Option<SocketAddr>,
    /// Extra routes for the `--http` server (the dashboard), built from the core.
    pub http_routes: Option<Arc<dyn Fn(Arc<Core>) -> axum_router::Router + Send + Sync>>,
}

/// The HTTP router type of `--http` (axum's, re-exported for callers that add routes).
pub mod axum_router {
    pub use axum::Router;
}

impl CoordinatorConfig {
    /// Defaults: no token, no TLS, heartbeat 1 s, timeout 10 s.
    pub fn new(
        listen: SocketAddr,
        data_dir: impl Into<PathBuf>,
        registry: Arc<dyn Registry>,
    ) -> Self {
        Self {
            listen,
            advertise: None,
            data_dir: data_dir.into(),
            token: None,
            tls: None,
            registry,
            heartbeat: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(10),
            http: None,
            http_routes: None,
        }
    }
}

/// A coordinator serving in the background.
pub struct RunningCoordinator {
    addr: SocketAddr,
    advertised: String,
    core: Arc<Core>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    http: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
    _leadership: Registration,
}

impl RunningCoordinator {
    /// The bound address (the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `--http` serves, when it does (the real port when it asked for port 0).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    /// The address published under the leader key.
    pub fn address(&self) -> &str {
        &self.advertised
    }

    /// The core, for in-process use (embedded runs, benchmarks, tests).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Stop serving, end the background loops and give up leadership. State is already on
    /// disk; a new coordinator on the same data folder continues where this one stopped.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for t in &self.tasks {
            t.abort();
        }
        // Streams that never end (Work, WatchSweep) would hold a graceful shutdown open.
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.server).await;
        self.server.abort();
    }
}

/// Start a coordinator. Resolves once it is the leader and serving.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use flotilla_coordinator::{serve, CoordinatorConfig};
/// use flotilla_client::registry::MemoryRegistry;
/// use std::sync::Arc;
///
/// let registry = Arc::new(MemoryRegistry::new());
/// let mut config = CoordinatorConfig::new("127.0.0.1:0".parse()?, "/tmp/flotilla-data", registry);
/// config.token = Some("s3cret".into());
/// let coordinator = serve(config).await?;
/// println!("serving on {}", coordinator.local_addr());
/// coordinator.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub async fn serve(config: CoordinatorConfig) -> CoordinatorResult<RunningCoordinator> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| CoordinatorError::Internal(format!("--listen {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CoordinatorError::Internal(format!("--listen {}: {e}", config.listen)))?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let advertised = config
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"));
    let leadership = config.registry.lead(&advertised).await?;
    tracing::info!(address = %advertised, "leading");
    let core = Core::open(&config.data_dir, config.heartbeat, config.heartbeat_timeout).await?;

    let mut tasks = vec![
        tokio::spawn(core.clone().dispatch_loop()),
        tokio::spawn(core.clone().reap_loop()),
        tokio::spawn(core.clone().round_loop()),
    ];
    let mut events = config.registry.watch_workers().await?;
    let watcher = core.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let WorkerEvent::Down(id) = ev {
                watcher
                    .disconnect(
                        &id,
                        None,
                        "its registry key is gone (lease expired or deleted)",
                    )
                    .await;
            }
        }
    }));
    // Anything queued before the restart is ready again.
    core.wake();

    let service = Service {
        core: core.clone(),
        registry: config.registry.clone(),
    };
    let grpc = tonic::service::interceptor::InterceptedService::new(
        CoordinatorServer::new(service)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20),
        Auth::new(config.token.clone()),
    );
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .tcp_nodelay(true);
    if let Some(tls) = &config.tls {
        let mut t = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem),
        );
        if let Some(ca) = &tls.client_ca_pem {
            t = t.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        builder = builder
            .tls_config(t)
            .map_err(|e| CoordinatorError::Internal(format!("TLS configuration: {e}")))?;
    }
    // The standard health service (grpc.health.v1), without the token: probes and load
    // balancers ask it. "" and the coordinator's service both report SERVING.
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CoordinatorServer<Service>>().await;
    let http = match config.http {
        Some(at) => {
            let metrics_core = core.clone();
            let mut router = flotilla_client::observe::router(
                Arc::new(move || metrics_core.render_metrics()),
                Arc::new(|| true),
            );
            router = router.merge(crate::dashboard::routes(core.clone(), config.token.clone()));
            if let Some(routes) = &config.http_routes {
                router = router.merge(routes(core.clone()));
            }
            let (bound, task) = flotilla_client::observe::serve(at, router)
                .await
                .map_err(|e| CoordinatorError::Internal(format!("--http {at}: {e}")))?;
            tasks.push(task);
            Some(bound)
        }
        None => None,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tokio::spawn(
        builder
            .add_service(health_service)
            .add_service(grpc)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    Ok(RunningCoordinator {
        addr,
        advertised,
        core,
        stop: Some(stop),
        server,
        http,
        tasks,
        _leadership: leadership,
    })
}
