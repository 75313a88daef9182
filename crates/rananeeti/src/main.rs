//! `rananeeti`: one binary that runs a node, a whole local deployment, and the operator tools.

use clap::{Parser, Subcommand};

use rananeeti::VERSION;

#[derive(Parser)]
#[command(name = "rananeeti", version = VERSION, about = "Full-stack resiliency for web applications")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole local deployment in the foreground (nodes, and PostgreSQL with --store postgres).
    Up(rananeeti::up::UpArgs),
    /// Roll every node of a running `up` onto a new binary, one at a time, without downtime.
    Deploy(rananeeti::deploy_cmd::DeployArgs),
    /// Run one node: the platform and the apps, serving HTTP.
    Node(Box<rananeeti::node_cmd::NodeArgs>),
    /// Run the gateway in front of nodes started elsewhere, from a config file.
    Gateway(rananeeti::gateway_cmd::GatewayArgs),
    /// Backups: keygen, create, list, verify, restore, prune.
    Backup(rananeeti::backup_cmd::BackupArgs),
    /// Run a witness: the third voter on ownership for a two-region deployment.
    Witness(rananeeti::witness_cmd::WitnessArgs),
    /// Drills: a workload, a fault, then every acknowledged write checked; RTO, RPO, lost, duplicated.
    Drill(rananeeti::drill_cmd::DrillArgs),
    /// Print an nginx or HAProxy configuration for the nodes of a deployment (topology.json).
    ExportLb(rananeeti::export_lb::ExportLbArgs),
    /// Print a Prometheus configuration that scrapes every process of a deployment (topology.json).
    PrometheusConfig(rananeeti::prometheus_config::PrometheusConfigArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up(args) => rananeeti::up::run(args),
        Command::Deploy(args) => rananeeti::deploy_cmd::run(args),
        Command::Node(args) => rananeeti::node_cmd::run(*args),
        Command::Gateway(args) => rananeeti::gateway_cmd::run(args),
        Command::Backup(args) => rananeeti::backup_cmd::run(args),
        Command::Witness(args) => rananeeti::witness_cmd::run(args),
        Command::Drill(args) => rananeeti::drill_cmd::run(args),
        Command::ExportLb(args) => rananeeti::export_lb::run(args),
        Command::PrometheusConfig(args) => rananeeti::prometheus_config::run(args),
    }
}
