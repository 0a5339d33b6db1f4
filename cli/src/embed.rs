//! `flotilla embed`: sentence vectors, or their pairwise cosine similarities.

use crate::output::{print_json, spinner, OutputFormat};
use anyhow::Context;
use flotilla_engine::embed::{cosine, Role};
use flotilla_engine::{device, EmbeddingModel, LoadOptions};

#[derive(clap::Args)]
pub struct Args {
    /// Embedding model directory or demo alias (minilm).
    #[arg(long, default_value = "minilm")]
    pub model: String,
    /// Print the pairwise cosine similarity matrix instead of the vectors.
    #[arg(long)]
    pub similarity: bool,
    /// Embed the texts as questions or as passages, with the model's prompt for that role in
    /// front (multilingual-e5's `query: ` / `passage: `, from its
    /// config_sentence_transformers.json). Without it the texts are embedded as given.
    #[arg(long = "as", value_name = "ROLE")]
    pub role: Option<RoleArg>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Texts to embed.
    #[arg(required = true)]
    pub texts: Vec<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Query,
    Passage,
}

pub fn run(a: Args, out: OutputFormat) -> anyhow::Result<()> {
    let device = device::parse_device(&a.device)?;
    let pb = spinner(format!("loading {}", a.model));
    let model = EmbeddingModel::load(&a.model, &LoadOptions::on(device))
        .with_context(|| format!("--model {}", a.model))?;
    let texts: Vec<&str> = a.texts.iter().map(String::as_str).collect();
    let vectors = match a.role {
        None => model.embed(&texts)?,
        Some(RoleArg::Query) => model.embed_as(Role::Query, &texts)?,
        Some(RoleArg::Passage) => model.embed_as(Role::Passage, &texts)?,
    };
    pb.finish_and_clear();
    let sims: Vec<Vec<f32>> = vectors
        .iter()
        .map(|a| vectors.iter().map(|b| cosine(a, b)).collect())
        .collect();
    match (out, a.similarity) {
        (OutputFormat::Json, true) => print_json(&serde_json::json!({
            "texts": a.texts, "similarity": sims
        })),
        (OutputFormat::Json, false) => print_json(&serde_json::json!({
            "texts": a.texts, "dimension": model.dimension, "vectors": vectors
        })),
        (OutputFormat::Text, true) => {
            for (i, row) in sims.iter().enumerate() {
                let cells: Vec<String> = row.iter().map(|s| format!("{s:6.3}")).collect();
                println!("{} | {}", cells.join(" "), a.texts[i]);
            }
            Ok(())
        }
        (OutputFormat::Text, false) => {
            for (t, v) in a.texts.iter().zip(&vectors) {
                let head: Vec<String> = v.iter().take(6).map(|x| format!("{x:.4}")).collect();
                println!("{t}\t[{}, ... {} dims]", head.join(", "), v.len());
            }
            Ok(())
        }
    }
}
