//! `flotilla bench generate`: prefill and decode speed (median of runs), batched answers/s
//! against one-by-one, and peak memory.

use crate::output::{bar, print_json, OutputFormat};
use anyhow::Context;
use flotilla_engine::{device, LanguageModel, LoadOptions, SamplingParams};
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Prefill / decode tokens per second for a fixed prompt length.
    Generate(GenerateArgs),
    /// One LoRA training step (forward, backward, AdamW) on a fixed batch.
    Train(crate::bench_train::TrainArgs),
    /// No-op shards through a real coordinator to simulated workers over loopback gRPC:
    /// shards/s and assignment latency.
    Dispatch(DispatchArgs),
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Also time this many prompts batched against one by one (0: skip).
    #[arg(long, default_value_t = 0)]
    pub batch: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

const PARAGRAPH: &str = "The rhinoceros is a large, heavy mammal with thick skin and one or two \
horns on its snout. Rhinos live in Africa and Asia, eat grass and leaves, and can weigh more \
than a tonne. Most species are threatened by poaching and the loss of their habitat. ";

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// Peak resident memory of this process, from /proc (Linux), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn run(cmd: Command, out: OutputFormat, threads: usize) -> anyhow::Result<()> {
    match cmd {
        Command::Generate(a) => generate(a, out, threads),
        Command::Train(a) => crate::bench_train::run(a, out, threads),
        Command::Dispatch(a) => dispatch(a, out),
    }
}

fn generate(a: GenerateArgs, out: OutputFormat, threads: usize) -> anyhow::Result<()> {
    anyhow::ensure!(a.runs >= 1, "--runs must be at least 1");
    anyhow::ensure!(a.prompt_tokens >= 1, "--prompt-tokens must be at least 1");
    anyhow::ensure!(a.decode_tokens >= 2, "--decode-tokens must be at least 2");
    let device = device::parse_device(&a.device)?;
    let lm = LanguageModel::load(&a.model, &LoadOptions::on(device))
        .with_context(|| format!("--model {}", a.model))?;
    let mut ids = Vec::new();
    while ids.len() < a.prompt_tokens {
        ids.extend(lm.tokenizer.encode(PARAGRAPH, false)?);
    }
    ids.truncate(a.prompt_tokens);
    let params = SamplingParams {
        max_tokens: a.decode_tokens,
        ignore_eos: true,
        samples: 1,
        ..Default::default()
    };
    // One warm-up run, then the timed ones.
    lm.generate_ids(std::slice::from_ref(&ids), &params)?;
    let pb = bar(a.runs as u64, "bench generate");
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for _ in 0..a.runs {
        let (_, s) = lm.generate_ids(std::slice::from_ref(&ids), &params)?;
        prefill.push(s.prefill_tokens_per_s);
        decode.push(s.decode_tokens_per_s);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let mut report = serde_json::json!({
        "engine": "flotilla",
        "model": a.model,
        "threads": threads,
        "prompt_tokens": a.prompt_tokens,
        "decode_tokens": a.decode_tokens,
        "runs": a.runs,
        "prefill_tokens_per_s": median(prefill),
        "decode_tokens_per_s": median(decode),
    });
    if a.batch > 0 {
        // Distinct prompts of different lengths, as a shard of questions would be.
        let prompts: Vec<Vec<u32>> = (0..a.batch)
            .map(|i| ids[..ids.len() - (i * 3) % (ids.len() / 2).max(1)].to_vec())
            .collect();
        let t = Instant::now();
        for p in &prompts {
            lm.generate_ids(std::slice::from_ref(p), &params)?;
        }
        let one_by_one = a.batch as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        lm.generate_ids(&prompts, &params)?;
        let batched = a.batch as f64 / t.elapsed().as_secs_f64();
        report["batch"] = serde_json::json!(a.batch);
        report["answers_per_s_one_by_one"] = serde_json::json!(one_by_one);
        report["answers_per_s_batched"] = serde_json::json!(batched);
        report["batched_speedup"] = serde_json::json!(batched / one_by_one);
    }
    report["peak_rss_mib"] = serde_json::json!(peak_rss_mib());
    match out {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => {
            for (k, v) in report.as_object().into_iter().flatten() {
                println!("{k:28} {v}");
            }
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct DispatchArgs {
    /// Simulated workers, each with its own connection and Work stream.
    #[arg(long, default_value_t = 64)]
    pub workers: usize,
    #[arg(long, default_value_t = 20_000)]
    pub shards: usize,
    /// Slots each simulated worker announces.
    #[arg(long, default_value_t = 4)]
    pub slots: u32,
    /// Serve the coordinator's --http here (e.g. 127.0.0.1:0) and scrape /metrics every
    /// second and /api/state every two while shards flow: the cost of being watched.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
}

fn dispatch(a: DispatchArgs, out: OutputFormat) -> anyhow::Result<()> {
    let pb = crate::output::spinner(format!(
        "dispatching {} no-op shards to {} workers",
        a.shards, a.workers
    ));
    let opts = flotilla_coordinator::bench::DispatchOptions {
        workers: a.workers,
        shards: a.shards,
        slots: a.slots,
        data_dir: None,
        http: a.http,
    };
    let report = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(flotilla_coordinator::bench::dispatch(opts))?;
    pb.finish_and_clear();
    let v = serde_json::to_value(&report)?;
    match out {
        OutputFormat::Json => print_json(&v)?,
        OutputFormat::Text => {
            for (k, v) in v.as_object().into_iter().flatten() {
                println!("{k:28} {v}");
            }
        }
    }
    Ok(())
}
