//! A sweep's results, aggregated over all its shards: every judged case goes through the
//! benchmark engine's report (`flotilla_contract::report`): the per-configuration table
//! with bootstrap CIs and the paired comparisons — base vs each adapter, the first variant vs
//! each other — exactly as `flotilla eval` computes them for one machine.

use crate::core::{Core, SweepRecord};
use crate::plan::FileEntry;
use crate::store::StoreError;
use crate::sweep::file_key;
use flotilla_contract::case_result::CaseResult;
use flotilla_contract::judging::Scale;
use flotilla_contract::report::{build_report, markdown, Report, TrainingRun};
use flotilla_contract::{JobKind, ShardOutput};
use flotilla_proto::v1 as pb;
use rusqlite::params;

/// Everything stored for a sweep's results.
pub struct SweepOutcome {
    pub record: Option<SweepRecord>,
    pub cases: Vec<CaseResult>,
    /// `(adapter name, model name, file)` of each trained adapter.
    pub adapters: Vec<(String, String, FileEntry)>,
    /// How each adapter was trained.
    pub training: Vec<TrainingRun>,
    /// Where the results came from.
    pub provenance: flotilla_contract::provenance::Provenance,
}

/// Read the judged cases and trained adapters of a sweep.
pub async fn load(core: &Core, sweep_id: &str) -> Result<Option<SweepOutcome>, StoreError> {
    let id = sweep_id.to_string();
    core.store
        .call(move |c| {
            let record: Option<String> = c
                .query_row(
                    "SELECT sweep_json FROM sweeps WHERE id = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .ok();
            let Some(record) = record else {
                return Ok(None);
            };
            let record: Option<SweepRecord> = serde_json::from_str(&record).ok();
            let mut stmt = c.prepare(
                "SELECT r.result_json FROM results r
                 JOIN shards s ON s.id = r.shard_id JOIN jobs j ON j.id = s.job_id
                 WHERE j.sweep_id = ?1 AND j.kind = ?2 ORDER BY j.seq, s.seq",
            )?;
            let mut cases = Vec::new();
            for row in stmt.query_map(params![id, JobKind::Judge.as_str()], |r| {
                r.get::<_, String>(0)
            })? {
                let output = ShardOutput::from_json(row?.as_bytes())
                    .map_err(|e| StoreError::Other(format!("a stored judge result: {e}")))?;
                let ShardOutput::Judge(judged) = output else {
                    return Err(StoreError::Other(format!(
                        "a judge job stored a {} result",
                        output.kind()
                    )));
                };
                cases.extend(judged.cases);
            }
            let trained = crate::training::training_runs(c, &id)?;
            let provenance = crate::provenance::load(c, &id, record.as_ref())?;
            Ok(Some(SweepOutcome {
                record,
                cases,
                adapters: trained.adapters,
                training: trained.runs,
                provenance,
            }))
        })
        .await
}

/// The report over a sweep's judged cases.
pub fn report(outcome: &SweepOutcome) -> Report {
    let (seed, scale, variant, adapter) =
        match outcome.record.as_ref().and_then(|r| r.sweep.as_ref()) {
            Some(s) => {
                let v = &s.variants[0];
                let v = match (s.variant_names.get(v), v.strip_prefix("custom:")) {
                    (Some(name), _) => name.clone(),
                    (None, Some(t)) => format!("custom:{}", file_key(t)),
                    (None, None) => v.clone(),
                };
                (s.seed, s.judge.scale, v, s.baseline_adapter().to_string())
            }
            None => (0, Scale::default(), String::new(), "base".to_string()),
        };
    let mut report = build_report(
        &outcome.cases,
        seed,
        scale,
        &[("variant", variant.as_str()), ("adapter", adapter.as_str())],
    );
    report.training = outcome.training.clone();
    report.provenance = Some(outcome.provenance.clone());
    report
}

/// `GetResults`.
pub async fn results(core: &Core, sweep_id: &str) -> Result<Option<pb::SweepResults>, StoreError> {
    let Some(outcome) = load(core, sweep_id).await? else {
        return Ok(None);
    };
    let report = report(&outcome);
    let mut cases_jsonl = String::new();
    for c in &outcome.cases {
        cases_jsonl.push_str(&serde_json::to_string(c).expect("case results serialise"));
        cases_jsonl.push('\n');
    }
    let state = core
        .status(sweep_id)
        .map(|s| s.state)
        .unwrap_or(pb::SweepState::Unspecified as i32);
    Ok(Some(pb::SweepResults {
        sweep_id: sweep_id.to_string(),
        state,
        report_json: serde_json::to_vec_pretty(&report).expect("reports serialise"),
        cases_jsonl: cases_jsonl.into_bytes(),
        report_markdown: markdown(&report),
        adapters: outcome
            .adapters
            .into_iter()
            .map(|(adapter, model, f)| pb::FileRef {
                path: format!("adapters/{adapter}/{model}/{}", f.path),
                artifact: Some(pb::ArtifactRef {
                    sha256: f.sha256,
                    size: f.size,
                }),
            })
            .collect(),
    }))
}
