//! `rananeeti witness`: runs the ownership witness on its own (`up` runs one in its process).

use anyhow::Context;
use rananeeti_node::admin::AdminToken;
use rananeeti_node::witness::{self, Witness};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct WitnessArgs {
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:8079")]
    pub listen: String,
    /// File the witness keeps the ownership table in (created when missing).
    #[arg(long)]
    pub state: PathBuf,
    /// File holding the cluster token the nodes present.
    #[arg(long)]
    pub cluster_token_file: PathBuf,
}

pub fn run(args: WitnessArgs) -> anyhow::Result<()> {
    crate::files::keep_private();
    rananeeti_node::telemetry::init_json_logs();
    let token = std::fs::read_to_string(&args.cluster_token_file)
        .with_context(|| format!("reading token file {}", args.cluster_token_file.display()))?;
    anyhow::ensure!(!token.trim().is_empty(), "token file {} is empty", args.cluster_token_file.display());
    let token = AdminToken::new(token.trim());
    let witness = Witness::open(args.state)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        witness::serve(listener, witness, token, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    })
}
