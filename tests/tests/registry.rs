//! The etcd registry against a real etcd: workers come and go with their leases, the
//! coordinator election has one leader at a time, and a worker whose lease is lost registers
//! again by itself.

use flotilla_client::registry::{EtcdRegistry, Registry, WorkerEntry, WorkerEvent, WORKERS_PREFIX};
use flotilla_tests::etcd::Etcd;
use std::time::Duration;
use tokio::sync::mpsc;

const TTL: Duration = Duration::from_secs(2);

async fn registry(etcd: &Etcd) -> EtcdRegistry {
    EtcdRegistry::connect(&etcd.endpoints())
        .await
        .expect("connect to the test etcd")
        .with_ttl(TTL)
}

async fn next(events: &mut mpsc::Receiver<WorkerEvent>, within: Duration) -> WorkerEvent {
    tokio::time::timeout(within, events.recv())
        .await
        .unwrap_or_else(|_| panic!("no membership event within {within:?}"))
        .expect("the watch stays open")
}

/// The ids of the registered workers, in the registry's order.
async fn worker_ids(reg: &EtcdRegistry) -> Vec<String> {
    reg.workers()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect()
}

/// The lease `key` is held under in etcd now; panics with `what` if the key is absent.
async fn lease_of(reg: &EtcdRegistry, key: &str, what: &str) -> i64 {
    let found = reg.client().get(key, None).await.unwrap();
    found.kvs().first().expect(what).lease()
}

#[tokio::test]
async fn workers_appear_and_disappear_with_their_registrations() {
    let etcd = Etcd::start();
    let reg = registry(&etcd).await;
    let early = reg
        .register_worker("pc-1", r#"{"device":"cpu"}"#.into())
        .await
        .unwrap();
    assert_eq!(early.key(), format!("{WORKERS_PREFIX}pc-1"));

    // A watcher first hears about the workers already there, then about changes.
    let mut events = reg.watch_workers().await.unwrap();
    assert_eq!(
        next(&mut events, Duration::from_secs(5)).await,
        WorkerEvent::Up(WorkerEntry {
            id: "pc-1".into(),
            capabilities_json: r#"{"device":"cpu"}"#.into()
        })
    );
    let late = reg.register_worker("pc-2", "{}".into()).await.unwrap();
    assert!(matches!(next(&mut events, Duration::from_secs(5)).await,
        WorkerEvent::Up(e) if e.id == "pc-2"));
    let ids = worker_ids(&reg).await;
    assert_eq!(ids, ["pc-1", "pc-2"]);

    // A worker that stops cleanly revokes its lease: gone at once, not after the TTL.
    drop(early);
    assert_eq!(
        next(&mut events, Duration::from_secs(1)).await,
        WorkerEvent::Down("pc-1".into())
    );
    assert!(late.is_held());
    let ids = worker_ids(&reg).await;
    assert_eq!(ids, ["pc-2"]);

    // A process about to exit releases its key and waits until it is gone.
    late.release().await;
    assert!(reg.workers().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_crashed_worker_disappears_when_its_lease_expires() {
    let etcd = Etcd::start();
    let endpoints = etcd.endpoints();
    let reg = registry(&etcd).await;
    let mut events = reg.watch_workers().await.unwrap();

    // The worker lives on its own runtime; shutting that runtime down kills its keep-alive
    // without revoking anything, as kill -9 would.
    let crashed = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let registration = rt.block_on(async {
            let reg = EtcdRegistry::connect(&endpoints)
                .await
                .unwrap()
                .with_ttl(TTL);
            reg.register_worker("pc-doomed", "{}".into()).await.unwrap()
        });
        rt.shutdown_background();
        registration
    })
    .join()
    .unwrap();

    assert!(matches!(next(&mut events, Duration::from_secs(5)).await,
        WorkerEvent::Up(e) if e.id == "pc-doomed"));
    let started = std::time::Instant::now();
    assert_eq!(
        next(&mut events, TTL * 4).await,
        WorkerEvent::Down("pc-doomed".into())
    );
    assert!(
        started.elapsed() >= TTL / 2,
        "the key went before its lease could expire ({:?})",
        started.elapsed()
    );
    drop(crashed);
}

#[tokio::test]
async fn a_worker_whose_lease_is_lost_registers_again() {
    let etcd = Etcd::start();
    let reg = registry(&etcd).await;
    let mut events = reg.watch_workers().await.unwrap();
    let registration = reg
        .register_worker("pc-3", r#"{"slots":2}"#.into())
        .await
        .unwrap();
    assert!(matches!(
        next(&mut events, Duration::from_secs(5)).await,
        WorkerEvent::Up(_)
    ));

    // Someone (an operator, a partition longer than the TTL) ends the lease.
    let lease = lease_of(&reg, registration.key(), "the worker key exists").await;
    reg.client().lease_revoke(lease).await.unwrap();

    assert_eq!(
        next(&mut events, Duration::from_secs(5)).await,
        WorkerEvent::Down("pc-3".into())
    );
    assert_eq!(
        next(&mut events, TTL * 3).await,
        WorkerEvent::Up(WorkerEntry {
            id: "pc-3".into(),
            capabilities_json: r#"{"slots":2}"#.into()
        }),
        "the worker registers again with a new lease"
    );
    let lease2 = lease_of(&reg, registration.key(), "the worker key is back").await;
    assert_ne!(lease2, lease);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(registration.is_held());
}

#[tokio::test]
async fn one_coordinator_leads_at_a_time_and_workers_find_its_address() {
    let etcd = Etcd::start();
    let reg = registry(&etcd).await;
    assert_eq!(
        reg.leader().await.unwrap(),
        None,
        "no leader before any election"
    );

    let first = reg.lead("10.0.0.1:7070").await.unwrap();
    assert_eq!(
        reg.leader().await.unwrap().as_deref(),
        Some("10.0.0.1:7070")
    );

    // A second coordinator waits while the first leads.
    let standby = registry(&etcd).await;
    let second = tokio::spawn(async move { standby.lead("10.0.0.2:7070").await.unwrap() });
    // Watched over the whole window, not at one instant after a sleep: the standby never
    // wins and the leader key never names it while the first leads.
    let window = std::time::Instant::now();
    let mut looks = 0;
    while window.elapsed() < Duration::from_millis(1500) {
        assert!(!second.is_finished(), "two leaders at once");
        assert_eq!(
            reg.leader().await.unwrap().as_deref(),
            Some("10.0.0.1:7070")
        );
        looks += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(looks >= 10, "the window was watched only {looks} times");

    // The first steps down; the standby takes over and publishes its address.
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the standby is elected")
        .unwrap();
    assert!(second.is_held());
    assert_eq!(
        reg.leader().await.unwrap().as_deref(),
        Some("10.0.0.2:7070")
    );
}

#[tokio::test]
async fn an_unreachable_etcd_is_a_clear_error() {
    let port = flotilla_tests::etcd::free_port();
    let err = EtcdRegistry::connect(&[format!("http://127.0.0.1:{port}")])
        .await
        .err()
        .expect("nothing listens there");
    let msg = format!("{err:#}");
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
}
