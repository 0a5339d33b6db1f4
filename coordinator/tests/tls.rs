//! TLS on the coordinator's port: server certificates, and mutual TLS with a client CA.
//! The certificates in tests/fixtures/tls are test-only (a throwaway CA, valid to 2125).

mod common;

use common::*;
use flotilla_coordinator::client::{Client, ClientTls};
use flotilla_coordinator::TlsConfig;
use flotilla_proto::v1 as pb;
use std::path::Path;

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tls")
            .join(name),
    )
    .unwrap()
}

async fn list(address: &str, tls: Option<ClientTls>) -> anyhow::Result<pb::ListSweepsResponse> {
    let client = Client::connect_with(address, Some(TOKEN.into()), tls).await?;
    Ok(client
        .grpc()
        .list_sweeps(pb::ListSweepsRequest {})
        .await?
        .into_inner())
}

#[tokio::test]
async fn clients_that_trust_the_ca_connect_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_with(dir.path(), |cfg| {
        cfg.tls = Some(TlsConfig {
            cert_pem: pem("server.pem"),
            key_pem: pem("server.key"),
            client_ca_pem: None,
        });
    })
    .await;
    assert!(c.address().starts_with("https://"));
    let https = format!("https://{}", c.local_addr());
    let trusting = ClientTls {
        ca_pem: Some(pem("ca.pem")),
        ..Default::default()
    };
    list(&https, Some(trusting)).await.unwrap();
    // Plain HTTP/2 to a TLS port fails.
    assert!(list(&format!("http://{}", c.local_addr()), None)
        .await
        .is_err());
    c.shutdown().await;
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_with(dir.path(), |cfg| {
        cfg.tls = Some(TlsConfig {
            cert_pem: pem("server.pem"),
            key_pem: pem("server.key"),
            client_ca_pem: Some(pem("ca.pem")),
        });
    })
    .await;
    let https = format!("https://{}", c.local_addr());
    let anonymous = ClientTls {
        ca_pem: Some(pem("ca.pem")),
        ..Default::default()
    };
    assert!(list(&https, Some(anonymous)).await.is_err());
    let with_identity = ClientTls {
        ca_pem: Some(pem("ca.pem")),
        identity: Some((pem("client.pem"), pem("client.key"))),
        domain: None,
    };
    list(&https, Some(with_identity)).await.unwrap();
    c.shutdown().await;
}
