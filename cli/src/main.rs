//! `flotilla`: the one binary. Each subcommand lives in its own module; this file parses the
//! command line, sets up logging and threads, and reports errors as one clear sentence.

mod adapter;
mod args;
mod bench;
mod bench_train;
mod cluster;
mod dataset;
mod embed;
mod eval;
mod generate;
mod model;
mod output;
mod provenance;
mod report;
mod serve;
mod train;

use clap::{Parser, Subcommand};
use output::OutputFormat;

/// `flotilla --version`: the release and the commit it was built from (an image's build
/// argument, or git's HEAD; see build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FLOTILLA_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "flotilla",
    version = VERSION,
    about = "A bench for small open LLMs on the PCs you already have"
)]
struct Cli {
    /// CPU threads for model work (default: every core but one).
    #[arg(long, global = true, env = "FLOTILLA_THREADS")]
    threads: Option<usize>,
    /// Output format: human-readable text, or JSON for scripts.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text with a language model.
    Generate(generate::Args),
    /// Embed texts with an embedding model; prints vectors or similarities.
    Embed(embed::Args),
    /// Run a model over benchmark cases: generate, judge, score, compare variants.
    Eval(eval::Args),
    /// Write report.html for earlier results, or one page comparing several runs.
    Report(report::Args),
    /// Inspect and convert models.
    Model {
        #[command(subcommand)]
        command: model::Command,
    },
    /// Serve a model over an OpenAI-compatible HTTP API.
    Serve(serve::Args),
    /// Measure speed.
    Bench {
        #[command(subcommand)]
        command: bench::Command,
    },
    /// Fine-tune a model with LoRA (see docs/TRAINING.md).
    Train(train::Args),
    /// Inspect LoRA adapters and merge them into their base model.
    Adapter {
        #[command(subcommand)]
        command: adapter::Command,
    },
    /// Build fine-tuning datasets.
    Dataset {
        #[command(subcommand)]
        command: dataset::Command,
    },
    /// Run a sweep on this machine: coordinator and workers in one process (no etcd).
    Run(cluster::run::Args),
    /// Serve sweeps to workers (leader election and membership in etcd).
    Coordinator(cluster::coordinator::Args),
    /// Register this machine and run shards for the coordinator.
    Worker(cluster::worker::Args),
    /// Submit, follow, cancel sweeps on a coordinator and read their results.
    Sweep {
        #[command(subcommand)]
        command: cluster::sweep::Command,
    },
    /// List the cluster's workers and what they have.
    Workers(cluster::workers::Args),
}

fn main() {
    // SIGPIPE stays ignored (Rust's default): a write to a socket its peer closed must be an
    // error to handle, never the end of a coordinator or worker. A closed stdout (`flotilla
    // ... | head`) ends the process quietly instead, as the default signal action would.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info);
    }));
    // Logs to stderr; traces over OTLP where OTEL_EXPORTER_OTLP_ENDPOINT asks for them.
    let mut telemetry = match flotilla_client::telemetry::init() {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let asked_json = std::env::args()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w[0] == "--output" && w[1] == "json")
                || std::env::args().any(|a| a == "--output=json");
            if asked_json && !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
            {
                let message = e.render().to_string();
                let first = message.lines().next().unwrap_or_default();
                println!(
                    "{}",
                    serde_json::json!({"error": first.trim_start_matches("error: "), "usage": message})
                );
            }
            e.exit()
        }
    };
    let json = cli.output == OutputFormat::Json;
    // One trace per command (the servers' spans hang off what their clients send instead).
    let command = command_name();
    let root = match command.as_str() {
        "coordinator" | "worker" | "serve" => tracing::Span::none(),
        _ => {
            tracing::info_span!(target: flotilla_client::telemetry::TARGET, "flotilla", command = %command)
        }
    };
    let result = root.in_scope(|| run(cli));
    drop(root);
    // Flush the spans before any exit below.
    if let Some(mut t) = telemetry.take() {
        t.shutdown();
    }
    if let Err(e) = result {
        if json {
            // Scripts asked for JSON: the error is one JSON document on stdout too.
            let causes: Vec<String> = e.chain().skip(1).map(|c| c.to_string()).collect();
            println!(
                "{}",
                serde_json::json!({"error": format!("{e:#}"), "message": e.to_string(), "causes": causes})
            );
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The subcommand as typed (`sweep submit`, `run`), for the trace's root span: the
/// arguments that name subcommands of the one before.
fn command_name() -> String {
    use clap::CommandFactory;
    let mut current = Cli::command();
    let mut names = Vec::new();
    for arg in std::env::args().skip(1) {
        let Some(sub) = current.find_subcommand(&arg).cloned() else {
            continue;
        };
        names.push(sub.get_name().to_string());
        current = sub;
    }
    names.join(" ")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let threads = cli
        .threads
        .unwrap_or_else(flotilla_engine::device::default_threads);
    flotilla_engine::device::set_threads(threads)?;
    tracing::debug!(threads, "engine threads");
    let out = cli.output;
    match cli.command {
        Command::Generate(a) => generate::run(a, out),
        Command::Embed(a) => embed::run(a, out),
        Command::Report(a) => report::run(a, out),
        Command::Eval(a) => eval::run(a, out),
        Command::Serve(a) => serve::run(a),
        Command::Model { command } => model::run(command, out),
        Command::Bench { command } => bench::run(command, out, threads),
        Command::Dataset { command } => dataset::run(command, out),
        Command::Train(a) => train::run(a, out),
        Command::Adapter { command } => adapter::run(command, out),
        Command::Run(a) => cluster::run::run(a, out),
        Command::Coordinator(a) => cluster::coordinator::run(a, out),
        Command::Worker(a) => cluster::worker::run(a, out),
        Command::Sweep { command } => cluster::sweep::run(command, out),
        Command::Workers(a) => cluster::workers::run(a, out),
    }
}
