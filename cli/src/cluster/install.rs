//! `flotilla worker install`: make this PC a worker that starts with it — a systemd unit (the
//! user's, or the system's with `--system`) that runs `flotilla worker` with the given cluster,
//! token file, device and folders, restarted when it stops. `--print` shows the unit and
//! changes nothing. (Windows and macOS: docs/CLUSTER.md, "An office PC joins".)

use crate::output::{print_json, OutputFormat};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// etcd endpoints, comma-separated (http://host:2379).
    #[arg(long, env = "FLOTILLA_ETCD", value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// The shared token's file (copied from the coordinator's machine); the unit reads it
    /// from here, so keep it where it is.
    #[arg(long, env = "FLOTILLA_TOKEN_FILE", required = true)]
    pub token_file: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// Downloads, embedding cache and scratch space (default: $FLOTILLA_HOME/worker).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// The model cache the worker reads (FLOTILLA_HOME; default: ~/.cache/flotilla).
    #[arg(long)]
    pub home: Option<PathBuf>,
    /// Other `flotilla worker` flags, as one string (e.g. "--keep-models 1 --http 0.0.0.0:9091").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub extra: String,
    /// A system unit (/etc/systemd/system, runs at boot without a login; needs root) instead
    /// of the user's (~/.config/systemd/user).
    #[arg(long)]
    pub system: bool,
    /// Write the unit into this folder instead of systemd's.
    #[arg(long)]
    pub unit_dir: Option<PathBuf>,
    /// Print the unit and change nothing.
    #[arg(long)]
    pub print: bool,
    /// Write the unit but do not enable or start it.
    #[arg(long)]
    pub no_enable: bool,
}

/// Quote one argument for a systemd ExecStart line.
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._:,=-@+".contains(c))
    {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

fn absolute(p: &Path, flag: &str) -> Result<PathBuf> {
    std::fs::canonicalize(p).with_context(|| format!("{flag} {}: not found", p.display()))
}

/// The unit's text.
pub fn unit(a: &Args, exe: &Path) -> Result<String> {
    let token = absolute(&a.token_file, "--token-file")?;
    let mut args = vec![
        exe.display().to_string(),
        "worker".into(),
        "--etcd".into(),
        a.etcd.join(","),
        "--token-file".into(),
        token.display().to_string(),
        "--device".into(),
        a.device.clone(),
        "--slots".into(),
        a.slots.to_string(),
    ];
    if let Some(w) = &a.work_dir {
        args.extend(["--work-dir".into(), w.display().to_string()]);
    }
    args.extend(a.extra.split_whitespace().map(str::to_string));
    let exec: Vec<String> = args.iter().map(|s| quote(s)).collect();
    // systemd runs the worker from /: a relative FLOTILLA_HOME would point somewhere else.
    let home = a
        .home
        .clone()
        .unwrap_or_else(flotilla_engine::loader::flotilla_home);
    let home = std::path::absolute(&home)
        .with_context(|| format!("--home {}: cannot make it absolute", home.display()))?;
    Ok(format!(
        "# Written by `flotilla worker install`; `systemctl {scope}status flotilla-worker` shows it.\n\
         [Unit]\n\
         Description=flotilla worker (runs benchmark and training shards for the cluster)\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Environment=FLOTILLA_HOME={home}\n\
         ExecStart={exec}\n\
         Restart=always\n\
         RestartSec=10\n\
         # SIGTERM: the worker hands its running shards back before it exits.\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec=30\n\
         Nice=10\n\
         \n\
         [Install]\n\
         WantedBy={wanted}\n",
        scope = if a.system { "" } else { "--user " },
        home = quote(&home.display().to_string()),
        exec = exec.join(" "),
        wanted = if a.system {
            "multi-user.target"
        } else {
            "default.target"
        },
    ))
}

pub fn run(a: Args, out: OutputFormat) -> Result<()> {
    if a.slots == 0 {
        bail!("--slots must be at least 1");
    }
    flotilla_engine::device::parse_device(&a.device)?;
    let exe = std::env::current_exe().context("cannot find this flotilla binary")?;
    let text = unit(&a, &exe)?;
    if a.print {
        match out {
            OutputFormat::Json => print_json(&serde_json::json!({"unit": text}))?,
            OutputFormat::Text => print!("{text}"),
        }
        return Ok(());
    }
    let dir = match (&a.unit_dir, a.system) {
        (Some(d), _) => d.clone(),
        (None, true) => PathBuf::from("/etc/systemd/system"),
        (None, false) => std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .context("no HOME: give --unit-dir")?
            .join("systemd/user"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("flotilla-worker.service");
    std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    let mut enabled = false;
    if !a.no_enable && a.unit_dir.is_none() {
        let scope: &[&str] = if a.system { &[] } else { &["--user"] };
        let systemctl = |args: &[&str]| -> Result<()> {
            let status = std::process::Command::new("systemctl")
                .args(scope)
                .args(args)
                .status()
                .context("cannot run systemctl (is this a systemd machine?)")?;
            if !status.success() {
                bail!("systemctl {} failed ({status})", args.join(" "));
            }
            Ok(())
        };
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "--now", "flotilla-worker.service"])?;
        enabled = true;
    }
    match out {
        OutputFormat::Json => print_json(&serde_json::json!({
            "unit_file": path, "enabled": enabled,
        }))?,
        OutputFormat::Text => {
            eprintln!("wrote {}", path.display());
            if enabled {
                eprintln!(
                    "enabled and started: systemctl {}status flotilla-worker",
                    if a.system { "" } else { "--user " }
                );
                if !a.system {
                    eprintln!("to keep it running without a login: loginctl enable-linger $USER");
                }
            }
        }
    }
    Ok(())
}
