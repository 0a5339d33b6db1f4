//! Judging words: the rating scale, one judge's verdict, a jury's score. The judges
//! themselves (local models, OpenAI-compatible endpoints) are the benchmark engine's.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The rating scale: 0-10 by default, 1-10 for Flow compatibility.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scale {
    pub min: u32,
    pub max: u32,
}

impl Default for Scale {
    fn default() -> Self {
        Self { min: 0, max: 10 }
    }
}

impl Scale {
    pub const FLOW: Scale = Scale { min: 1, max: 10 };
}

/// One judge's verdict on one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub judge: String,
    /// The rating, when a valid one was given.
    pub rating: Option<f64>,
    /// G-Eval: probability-weighted mean rating (local judges only).
    pub geval: Option<f64>,
    pub explanation: String,
    /// The judge's whole reply.
    pub raw: String,
    /// Why no valid rating could be read, if so.
    pub error: Option<String>,
    /// When the context shown to the judge was cut to fit: what was shown, e.g. `1200 of 5000
    /// characters`. The judge's prompt carries the same note where the cut is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_cut: Option<String>,
}

/// Mean of the valid ratings of a jury; None when no judge gave one.
pub fn jury_score(verdicts: &[Verdict]) -> Option<f64> {
    let valid: Vec<f64> = verdicts.iter().filter_map(|v| v.rating).collect();
    (!valid.is_empty()).then(|| valid.iter().sum::<f64>() / valid.len() as f64)
}

/// A judge as the sweep file (`judge.judges`) and `flotilla eval --judge` name it. This is the
/// one place a judge name is interpreted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum JudgeSpec {
    /// `self`: the model under test judges (without its adapter).
    SelfModel,
    /// A local model spec (`smollm2`, a GGUF path, an HF folder, `hf:org/name`).
    Model(String),
    /// `openai:MODEL@BASE_URL`: an OpenAI-compatible chat endpoint.
    Endpoint { model: String, base_url: String },
}

impl JudgeSpec {
    /// The model spec a worker loads for this judge, `self` replaced by `model_under_test`;
    /// an endpoint keeps its `openai:` spelling.
    pub fn resolve(&self, model_under_test: &str) -> String {
        match self {
            JudgeSpec::SelfModel => model_under_test.to_string(),
            other => other.to_string(),
        }
    }

    pub fn is_endpoint(&self) -> bool {
        matches!(self, JudgeSpec::Endpoint { .. })
    }
}

impl std::str::FromStr for JudgeSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "self" {
            return Ok(JudgeSpec::SelfModel);
        }
        if let Some(rest) = s.strip_prefix("openai:") {
            return match rest.split_once('@') {
                Some((model, base)) if !model.is_empty() && !base.is_empty() => {
                    Ok(JudgeSpec::Endpoint {
                        model: model.to_string(),
                        base_url: base.trim_end_matches('/').to_string(),
                    })
                }
                _ => Err(Error::input(format!(
                    "judge `{s}`: expected openai:MODEL@BASE_URL, e.g. \
                     openai:smollm2@http://127.0.0.1:8080/v1"
                ))),
            };
        }
        if s.trim().is_empty() {
            return Err(Error::input("a judge name must not be empty"));
        }
        Ok(JudgeSpec::Model(s.to_string()))
    }
}

impl TryFrom<String> for JudgeSpec {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<JudgeSpec> for String {
    fn from(j: JudgeSpec) -> String {
        j.to_string()
    }
}

impl fmt::Display for JudgeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JudgeSpec::SelfModel => f.write_str("self"),
            JudgeSpec::Model(m) => f.write_str(m),
            JudgeSpec::Endpoint { model, base_url } => write!(f, "openai:{model}@{base_url}"),
        }
    }
}

impl std::str::FromStr for Scale {
    type Err = Error;
    /// `MIN-MAX`, e.g. `0-10` (the default) or `1-10` (Flow's).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::input(format!("`{s}` is not MIN-MAX (e.g. 0-10)"));
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let min: u32 = a.trim().parse().map_err(|_| bad())?;
        let max: u32 = b.trim().parse().map_err(|_| bad())?;
        if min >= max || max > 100 {
            return Err(Error::input(format!(
                "`{s}`: MIN must be below MAX (at most 100)"
            )));
        }
        Ok(Scale { min, max })
    }
}

impl fmt::Display for Scale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_names_parse_once_and_print_back() {
        for s in ["self", "smollm2", "openai:gpt-x@http://127.0.0.1:8080/v1"] {
            assert_eq!(s.parse::<JudgeSpec>().unwrap().to_string(), s);
        }
        assert_eq!(
            "self".parse::<JudgeSpec>().unwrap().resolve("m.gguf"),
            "m.gguf"
        );
        let err = "openai:nobase"
            .parse::<JudgeSpec>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("openai:MODEL@BASE_URL"), "{err}");
        assert!("".parse::<JudgeSpec>().is_err());
    }

    #[test]
    fn scales_parse_min_max() {
        assert_eq!("1-10".parse::<Scale>().unwrap(), Scale::FLOW);
        assert_eq!(Scale::default().to_string(), "0-10");
        for bad in ["10", "5-5", "a-b", "10-1", "0-101"] {
            assert!(bad.parse::<Scale>().is_err(), "{bad}");
        }
    }
}
