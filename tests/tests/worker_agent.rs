//! The worker agent (`flotilla_worker`) against a real coordinator on a loopback port,
//! with no-op shards so every test takes seconds: work shared out and stored once, a
//! coordinator restart survived, a cancel honoured at once, failures reported by kind, a
//! refused token ending the agent with a clear error.

use flotilla_client::registry::{MemoryRegistry, Registry};
use flotilla_contract::shard::NoopShard;
use flotilla_coordinator::sweep::Retries;
use flotilla_coordinator::{serve, CoordinatorConfig, RunningCoordinator};
use flotilla_engine::loader::LoadOptions;
use flotilla_proto::v1 as pb;
use flotilla_tests::TempDir;
use flotilla_worker::{run_worker, AgentConfig, CoordinatorAddress, ModelCache};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const TOKEN: &str = "agent-test-token";

/// A running worker agent.
type Agent = JoinHandle<Result<(), flotilla_worker::WorkerError>>;

async fn coordinator(
    dir: &Path,
    listen: SocketAddr,
    registry: Arc<MemoryRegistry>,
) -> RunningCoordinator {
    let mut config = CoordinatorConfig::new(listen, dir, registry);
    config.token = Some(TOKEN.into());
    config.heartbeat = Duration::from_millis(200);
    serve(config).await.expect("the coordinator starts")
}

/// An in-process worker; stopped when `stop` turns true.
fn worker(
    dir: &Path,
    id: &str,
    address: String,
    registry: Arc<MemoryRegistry>,
    token: &str,
    slots: u32,
    stop: &watch::Receiver<bool>,
) -> Agent {
    let config = AgentConfig {
        worker_id: id.into(),
        coordinator: CoordinatorAddress::Direct(address),
        registry: Some(registry as Arc<dyn Registry>),
        token: token.into(),
        tls: Default::default(),
        slots,
        device_name: "cpu".into(),
        device: candle_core::Device::Cpu,
        models: Arc::new(ModelCache::new(LoadOptions::default(), 1)),
        cache_budget_bytes: None,
        cache_dir: dir.join("cache"),
        work_dir: dir.join("work").join(id),
        max_backoff: Duration::from_millis(500),
        idle: None,
    };
    let mut stop = stop.clone();
    tokio::spawn(run_worker(config, async move {
        let _ = stop.wait_for(|s| *s).await;
    }))
}

/// A coordinator on a free loopback port, with its own data folder and registry.
async fn start(tag: &str) -> (TempDir, Arc<MemoryRegistry>, RunningCoordinator) {
    let dir = flotilla_tests::temp_dir(tag);
    let registry = Arc::new(MemoryRegistry::new());
    let c = coordinator(dir.path(), "127.0.0.1:0".parse().unwrap(), registry.clone()).await;
    (dir, registry, c)
}

/// Worker `w1`, one slot, connecting to `c` with `token`.
fn one_worker(
    dir: &Path,
    c: &RunningCoordinator,
    registry: Arc<MemoryRegistry>,
    token: &str,
    stop: &watch::Receiver<bool>,
) -> Agent {
    let address = format!("http://{}", c.local_addr());
    worker(dir, "w1", address, registry, token, 1, stop)
}

/// Stop the agent, which must end without error, then the coordinator.
async fn stop_all(stop_tx: watch::Sender<bool>, agent: Agent, c: RunningCoordinator) {
    stop_tx.send(true).unwrap();
    agent.await.unwrap().unwrap();
    c.shutdown().await;
}

/// Submit a sweep of `n` no-op shards sleeping `sleep_ms` each, with default retries; its id.
async fn submit_noops(c: &RunningCoordinator, name: &str, n: usize, sleep_ms: u64) -> String {
    let shard = NoopShard {
        units: 1,
        sleep_ms,
        fail: None,
    };
    c.core()
        .submit_noop(name, vec![shard; n], Retries::default())
        .await
        .unwrap()
}

async fn wait_end(c: &RunningCoordinator, sweep: &str, within: Duration) -> pb::SweepStatus {
    let deadline = Instant::now() + within;
    loop {
        let st = c.core().status(sweep).expect("the sweep exists");
        if st.state >= pb::SweepState::Succeeded as i32 {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "the sweep did not end within {within:?}: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait up to five seconds until the registry's worker count satisfies `done`; `what` is the
/// failure message.
async fn wait_workers(registry: &MemoryRegistry, what: &str, done: impl Fn(usize) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done(registry.workers().await.unwrap().len()) {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn agents_share_the_work_and_every_result_is_stored_once() {
    let (dir, registry, c) = start("agent-share").await;
    let address = format!("http://{}", c.local_addr());
    let (stop_tx, stop) = watch::channel(false);
    let agents: Vec<_> = (1..=2)
        .map(|i| {
            worker(
                dir.path(),
                &format!("w{i}"),
                address.clone(),
                registry.clone(),
                TOKEN,
                2,
                &stop,
            )
        })
        .collect();
    // Both register in the registry.
    wait_workers(&registry, "the workers did not register", |n| n >= 2).await;

    let sweep = submit_noops(&c, "shared", 40, 10).await;
    let st = wait_end(&c, &sweep, Duration::from_secs(30)).await;
    assert_eq!(st.state, pb::SweepState::Succeeded as i32, "{st:?}");
    assert_eq!((st.shards_done, st.shards_failed), (40, 0));
    let workers = c.core().workers();
    assert_eq!(workers.iter().map(|w| w.shards_completed).sum::<u64>(), 40);
    assert!(
        workers.iter().all(|w| w.shards_completed > 0),
        "{workers:?}"
    );

    stop_tx.send(true).unwrap();
    for a in agents {
        a.await.unwrap().unwrap();
    }
    // Stopped workers deregister.
    wait_workers(&registry, "the stopped workers are still registered", |n| {
        n == 0
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_reconnect_when_the_coordinator_restarts_and_the_sweep_completes() {
    let (dir, registry, c) = start("agent-restart").await;
    let addr = c.local_addr();
    let (stop_tx, stop) = watch::channel(false);
    let agent = one_worker(dir.path(), &c, registry, TOKEN, &stop);

    let sweep = submit_noops(&c, "restart", 12, 100).await;
    wait_until(Duration::from_secs(20), "three shards done", || {
        c.core().status(&sweep).unwrap().shards_done >= 3
    })
    .await;
    c.shutdown().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Same port, same data folder: the agent finds it again by itself.
    let c = coordinator(dir.path(), addr, Arc::new(MemoryRegistry::new())).await;
    let st = wait_end(&c, &sweep, Duration::from_secs(30)).await;
    assert_eq!(st.state, pb::SweepState::Succeeded as i32, "{st:?}");
    assert_eq!(st.shards_done, 12);
    stop_all(stop_tx, agent, c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_shard_frees_its_slot_at_once() {
    let (dir, registry, c) = start("agent-cancel").await;
    let (stop_tx, stop) = watch::channel(false);
    let agent = one_worker(dir.path(), &c, registry, TOKEN, &stop);

    // One slot, taken by a shard that would sleep for a minute.
    let slow = submit_noops(&c, "slow", 1, 60_000).await;
    wait_until(Duration::from_secs(10), "the slow shard running", || {
        c.core().workers().iter().any(|w| w.running == 1)
    })
    .await;
    c.core().cancel(&slow).await.unwrap();

    // The next sweep runs now, not in a minute.
    let quick = submit_noops(&c, "quick", 1, 0).await;
    let st = wait_end(&c, &quick, Duration::from_secs(5)).await;
    assert_eq!(st.state, pb::SweepState::Succeeded as i32, "{st:?}");
    assert_eq!(
        c.core().status(&slow).unwrap().state,
        pb::SweepState::Cancelled as i32
    );
    stop_all(stop_tx, agent, c).await;
}

#[tokio::test]
async fn task_failures_are_reported_with_their_message() {
    let (dir, registry, c) = start("agent-fail").await;
    let (stop_tx, stop) = watch::channel(false);
    let agent = one_worker(dir.path(), &c, registry, TOKEN, &stop);

    let bad = NoopShard {
        units: 0,
        sleep_ms: 0,
        fail: Some("case 7 is unreadable".into()),
    };
    let retries = Retries {
        task: 1,
        infrastructure: 3,
    };
    let sweep = c
        .core()
        .submit_noop("failing", vec![bad], retries)
        .await
        .unwrap();
    let st = wait_end(&c, &sweep, Duration::from_secs(10)).await;
    assert_eq!(st.state, pb::SweepState::Failed as i32, "{st:?}");
    let said = format!(
        "{} {:?}",
        st.error,
        st.jobs.iter().map(|j| &j.error).collect::<Vec<_>>()
    );
    assert!(said.contains("case 7 is unreadable"), "{said}");
    stop_all(stop_tx, agent, c).await;
}

#[tokio::test]
async fn a_refused_token_ends_the_agent_with_a_clear_error() {
    let (dir, registry, c) = start("agent-token").await;
    let (_stop_tx, stop) = watch::channel(false);
    let agent = one_worker(dir.path(), &c, registry.clone(), "wrong", &stop);
    let err = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("the agent gives up")
        .unwrap()
        .unwrap_err();
    assert!(format!("{err:#}").contains("refused the token"), "{err:#}");
    wait_workers(&registry, "the refused worker is still registered", |n| {
        n == 0
    })
    .await;
    c.shutdown().await;
}
