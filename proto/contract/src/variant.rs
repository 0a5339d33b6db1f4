//! Prompt variants by name: one parser for the sweep file and the command line. How a variant
//! becomes messages is the benchmark engine's (`flotilla_bench::prompts`).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The variants flotilla knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// The question, then the documents.
    QueryFirst,
    /// The documents, then the question.
    QueryLast,
    /// DSPy-style: declared input and output fields, values between `[[ ## field ## ]]`
    /// markers, the answer parsed back out; a parse failure is recorded and retried once.
    Structured,
    /// `structured` with the answer marker written by flotilla and decoding stopped at the
    /// completion marker, so the output always parses (its effect is measured separately).
    StructuredConstrained,
    /// A user's Jinja template (file path) with the same inputs.
    Custom { template: String },
}

impl Variant {
    /// Parse a variant name as given on the command line or in a sweep file
    /// (`custom:PATH` for a template).
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "query_first" => Variant::QueryFirst,
            "query_last" => Variant::QueryLast,
            "structured" => Variant::Structured,
            "structured_constrained" => Variant::StructuredConstrained,
            other => match other.strip_prefix("custom:") {
                Some(path) if !path.is_empty() => Variant::Custom {
                    template: path.to_string(),
                },
                _ => {
                    return Err(Error::input(format!(
                        "unknown prompt variant `{other}` (expected query_first, query_last, \
                         structured, structured_constrained or custom:TEMPLATE.jinja)"
                    )))
                }
            },
        })
    }

    pub fn name(&self) -> String {
        match self {
            Variant::QueryFirst => "query_first".into(),
            Variant::QueryLast => "query_last".into(),
            Variant::Structured => "structured".into(),
            Variant::StructuredConstrained => "structured_constrained".into(),
            Variant::Custom { template } => format!("custom:{template}"),
        }
    }

    pub fn is_structured(&self) -> bool {
        matches!(self, Variant::Structured | Variant::StructuredConstrained)
    }
}

impl std::str::FromStr for Variant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Variant::parse(s)
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}
