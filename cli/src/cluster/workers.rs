//! `flotilla workers`: who is in the cluster, what each machine has, what it is doing.

use super::connect::{status_error, ConnectArgs};
use super::render::{workers_json, workers_text};
use crate::output::{print_json, OutputFormat};
use anyhow::Result;
use flotilla_proto::v1 as pb;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub fn run(a: Args, out: OutputFormat) -> Result<()> {
    super::runtime()?.block_on(async move {
        let mut grpc = a.connect.connect().await?.grpc();
        let workers = grpc
            .list_workers(pb::ListWorkersRequest {})
            .await
            .map_err(status_error)?
            .into_inner()
            .workers;
        match out {
            OutputFormat::Json => print_json(&workers_json(&workers)),
            OutputFormat::Text => {
                print!("{}", workers_text(&workers));
                Ok(())
            }
        }
    })
}
