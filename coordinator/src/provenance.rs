//! A sweep's provenance, read from the state database: the sweep file as submitted, every file
//! uploaded with it (sha256 as stored), the files and machines each worker reported with its
//! generate and judge results, which worker ran each shard, and when the sweep ran.

use crate::core::SweepRecord;
use crate::store::StoreError;
use crate::sweep::AdapterSource;
use flotilla_contract::provenance::{rfc3339, FileHash, Machine, Origin, Provenance, ShardOrigin};
use flotilla_contract::{JobKind, ShardOutput, ShardSpec};
use rusqlite::{params, Connection};
use std::collections::{BTreeMap, BTreeSet};

/// The provenance of sweep `id` (`record`: the sweep as read), inside a store call.
pub fn load(
    c: &Connection,
    id: &str,
    record: Option<&SweepRecord>,
) -> Result<Provenance, StoreError> {
    let (source_path, yaml, created, updated): (String, String, i64, i64) = c.query_row(
        "SELECT source_path, yaml, created_ms, updated_ms FROM sweeps WHERE id = ?1",
        params![id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let sweep = record.and_then(|r| r.sweep.as_ref());
    // What each uploaded file is to the sweep: case files, the documents its cases name, prompt
    // templates, training data; anything else uploaded beside them is `input`.
    let mut roles: BTreeMap<String, &str> = BTreeMap::new();
    let mut trained: BTreeSet<String> = BTreeSet::new();
    if let Some(s) = sweep {
        for d in &s.datasets {
            roles.insert(d.cases.clone(), "cases");
        }
        for v in &s.variants {
            if let Some(t) = v.strip_prefix("custom:") {
                roles.insert(crate::sweep::file_key(t), "template");
            }
        }
        for a in &s.adapters {
            if let AdapterSource::Train(block) = &a.source {
                trained.insert(a.name.clone());
                for p in crate::sweep::train_paths(block) {
                    roles.insert(p, "train_data");
                }
            }
        }
    }
    let mut stmt = c.prepare(
        "SELECT s.spec_json FROM shards s JOIN jobs j ON j.id = s.job_id
         WHERE j.sweep_id = ?1 AND j.kind = ?2",
    )?;
    for row in stmt.query_map(params![id, JobKind::Generate.as_str()], |r| {
        r.get::<_, String>(0)
    })? {
        if let Ok(ShardSpec::Generate(g)) = ShardSpec::from_json(row?.as_bytes()) {
            for d in g.cases.iter().flat_map(|c| &c.documents) {
                roles
                    .entry(d.to_string_lossy().into_owned())
                    .or_insert("document");
            }
        }
    }
    let mut files: BTreeSet<FileHash> = BTreeSet::new();
    files.insert(FileHash {
        role: "sweep".into(),
        name: sweep.map(|s| s.name.clone()).unwrap_or_default(),
        path: source_path.clone(),
        sha256: flotilla_client::hash::sha256_hex(yaml.as_bytes()),
        bytes: yaml.len() as u64,
        error: None,
    });
    let mut stmt =
        c.prepare("SELECT path, sha256, size FROM sweep_files WHERE sweep_id = ?1 ORDER BY path")?;
    for row in stmt.query_map(params![id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })? {
        let (path, sha256, size) = row?;
        files.insert(FileHash {
            role: roles.get(&path).copied().unwrap_or("input").into(),
            name: path.clone(),
            path,
            sha256,
            bytes: size.max(0) as u64,
            error: None,
        });
    }

    let mut machines: BTreeSet<Machine> = BTreeSet::new();
    let mut shards = Vec::new();
    let mut stmt = c.prepare(
        "SELECT s.id, j.kind, r.attempt, a.worker_id, a.started_ms, a.ended_ms, r.result_json
         FROM results r JOIN shards s ON s.id = r.shard_id JOIN jobs j ON j.id = s.job_id
         LEFT JOIN attempts a ON a.shard_id = r.shard_id AND a.attempt = r.attempt
         WHERE j.sweep_id = ?1 ORDER BY j.seq, s.seq",
    )?;
    for row in stmt.query_map(params![id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, Option<i64>>(4)?,
            r.get::<_, Option<i64>>(5)?,
            r.get::<_, String>(6)?,
        ))
    })? {
        let (shard, kind, attempt, worker, started, ended, result) = row?;
        let origin: Option<Origin> = match ShardOutput::from_json(result.as_bytes()) {
            Ok(ShardOutput::Generate(g)) => g.origin,
            Ok(ShardOutput::Judge(j)) => j.origin,
            _ => None,
        };
        if let Some(o) = origin {
            machines.insert(o.machine);
            for mut f in o.files {
                // An adapter the sweep trained is one of its results, not an input.
                if f.role == "adapter" && trained.contains(&f.name) {
                    f.role = "trained_adapter".into();
                }
                files.insert(f);
            }
        }
        shards.push(ShardOrigin {
            shard,
            kind,
            attempt: attempt.max(0) as u32,
            worker: worker.unwrap_or_default(),
            started_at: started.map(rfc3339),
            ended_at: ended.map(rfc3339),
        });
    }
    Ok(Provenance {
        flotilla_version: env!("CARGO_PKG_VERSION").to_string(),
        // The binary that writes the results folder fills in its commit.
        flotilla_commit: String::new(),
        command: "sweep".into(),
        argv: Vec::new(),
        cwd: String::new(),
        settings: sweep
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or_default(),
        sweep_path: Some(source_path),
        sweep_yaml: Some(yaml),
        seed: sweep.map(|s| s.seed).unwrap_or_default(),
        judges: sweep.map(|s| s.judge.judges.clone()).unwrap_or_default(),
        files: files.into_iter().collect(),
        machines: machines.into_iter().collect(),
        shards,
        started_at: rfc3339(created),
        finished_at: rfc3339(updated),
    })
}
