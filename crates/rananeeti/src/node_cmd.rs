//! `rananeeti node`: runs one node (platform + apps) until SIGTERM or Ctrl-C.

use std::path::PathBuf;

/// Flags override the config file, which overrides `RANANEETI_*` environment variables' defaults.
#[derive(clap::Args, Debug, Default)]
pub struct NodeArgs {
    /// TOML configuration file (see docs/config.md).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long)]
    pub listen: Option<String>,
    /// Region this node belongs to.
    #[arg(long)]
    pub region: Option<String>,
    /// This node's name, unique in the deployment.
    #[arg(long)]
    pub name: Option<String>,
    /// Directory for the node's own files (the fallback queue).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Writer URL of the store: sqlite://PATH or postgres://...
    #[arg(long)]
    pub store_url: Option<String>,
    /// Optional reader URL (a replica or reader endpoint).
    #[arg(long)]
    pub reader_url: Option<String>,
    /// File holding the admin bearer token.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// After binding, write the listening address (e.g. 127.0.0.1:41234) to this file, atomically.
    #[arg(long)]
    pub addr_file: Option<PathBuf>,
}

pub fn run(_args: NodeArgs) -> anyhow::Result<()> {
    anyhow::bail!("being written")
}
