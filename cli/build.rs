//! Records the commit the binary is built from (`FLOTILLA_COMMIT`, results' provenance): the
//! `FLOTILLA_COMMIT` environment variable when set (a Docker build has no `.git`: the
//! Dockerfiles pass it as a build argument), else git's HEAD, else `unknown`.

use std::process::Command;

fn main() {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    println!("cargo:rerun-if-env-changed=FLOTILLA_COMMIT");
    let commit = std::env::var("FLOTILLA_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git(&["rev-parse", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=FLOTILLA_COMMIT={commit}");
    // Again when HEAD moves (a commit, a checkout); not on every edit.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{head}");
        }
    }
}
