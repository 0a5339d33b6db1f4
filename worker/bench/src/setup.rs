//! Assembling an evaluation from named settings: the one builder behind `flotilla eval` and
//! the worker's generate and judge shards, so a judge name means the same in both.
//!
//! [`JudgePanel::resolve`] turns each [`JudgeSpec`] into a ready judge once — an endpoint
//! parsed, a local model loaded by the caller's loader (the CLI loads files; the worker goes
//! through its model cache), `self` mapped to the model under test — and
//! [`JudgePanel::judges`] lends them to a [`Runner`](crate::runner::Runner).

use crate::openai::EndpointJudge;
use crate::runner::Judge;
use flotilla_contract::judging::{JudgeSpec, Scale};
use flotilla_engine::error::Result;
use flotilla_engine::LanguageModel;
use std::sync::Arc;

/// A judge resolved once, before any case runs.
enum Resolved {
    Endpoint(EndpointJudge),
    Local(Arc<LanguageModel>),
}

/// The jury of an evaluation, resolved.
pub struct JudgePanel {
    members: Vec<(String, Resolved)>,
    scale: Scale,
    explanation_tokens: usize,
}

impl JudgePanel {
    /// Resolves `judges` (name as written, spec): endpoints are parsed; `self` takes
    /// `model_under_test`; any other model comes from `load` (called once per judge).
    pub fn resolve(
        judges: &[(String, JudgeSpec)],
        scale: Scale,
        explanation_tokens: usize,
        model_under_test: Option<&Arc<LanguageModel>>,
        mut load: impl FnMut(&str) -> Result<Arc<LanguageModel>>,
    ) -> Result<JudgePanel> {
        let mut members = Vec::with_capacity(judges.len());
        for (name, spec) in judges {
            let resolved = match (spec, model_under_test) {
                (JudgeSpec::Endpoint { model, base_url }, _) => {
                    let mut e = EndpointJudge::new(model, base_url, scale, explanation_tokens);
                    e.name = name.clone();
                    Resolved::Endpoint(e)
                }
                (JudgeSpec::SelfModel, Some(m)) => Resolved::Local(m.clone()),
                (JudgeSpec::SelfModel, None) => {
                    return Err(flotilla_engine::Error::input(format!(
                        "judge {name}: `self` names the model under test, and there is none here \
                         (a judge shard's judges arrive with `self` already replaced)"
                    )))
                }
                (JudgeSpec::Model(m), _) => Resolved::Local(load(m)?),
            };
            members.push((name.clone(), resolved));
        }
        Ok(JudgePanel {
            members,
            scale,
            explanation_tokens,
        })
    }

    /// The judges as provenance records them: a local judge's model file with its sha256, an
    /// endpoint's URL (no file).
    pub fn files(&self) -> Vec<flotilla_contract::provenance::FileHash> {
        use flotilla_contract::provenance::{file_hash, FileHash};
        self.members
            .iter()
            .map(|(name, r)| match r {
                Resolved::Endpoint(e) => FileHash {
                    role: "judge".into(),
                    name: name.clone(),
                    path: e.base_url.clone(),
                    ..Default::default()
                },
                Resolved::Local(model) => file_hash("judge", name, &model.info.path),
            })
            .collect()
    }

    /// The judges, borrowed for a runner.
    pub fn judges(&self) -> Vec<Judge<'_>> {
        self.members
            .iter()
            .map(|(name, r)| match r {
                Resolved::Endpoint(e) => Judge::Endpoint(e.clone()),
                Resolved::Local(model) => Judge::Local(crate::judge::LocalJudge {
                    name: name.clone(),
                    model,
                    scale: self.scale,
                    explanation_tokens: self.explanation_tokens,
                }),
            })
            .collect()
    }
}
