//! `rananeeti gateway`: the gateway on its own, from a config file, in front of nodes started
//! elsewhere; and the handle `up` uses to run one on its own threads.

use anyhow::Context;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use rananeeti_gateway::{Gateway, GatewayConfig};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct GatewayArgs {
    /// TOML file: regions and nodes, routes, health, retries, limits (see docs/config.md).
    #[arg(long)]
    pub config: PathBuf,
    /// Address to listen on; overrides the file's `listen`.
    #[arg(long)]
    pub listen: Option<String>,
    /// File holding the admin bearer token; overrides the file's `admin_token_file`.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Check the configuration and exit: 0 and one line when it is valid, else the error.
    #[arg(long)]
    pub check_config: bool,
}

pub fn load(args: &GatewayArgs) -> anyhow::Result<GatewayConfig> {
    anyhow::ensure!(args.config.exists(), "config file {} does not exist", args.config.display());
    // `RANANEETI_GATEWAY__<FIELD>` variables override the file (`RANANEETI_GATEWAY__REGIONS=[...]`),
    // so one file serves every region of a deployment.
    let defaults =
        GatewayConfig { digest_post_prefixes: crate::apps::digest_post_prefixes(), ..GatewayConfig::default() };
    let mut config: GatewayConfig = Figment::from(Serialized::defaults(defaults))
        .merge(Toml::file(&args.config))
        .merge(Env::prefixed("RANANEETI_GATEWAY__").split("__"))
        .extract()
        .map_err(|error| anyhow::anyhow!("gateway configuration: {error}"))?;
    if let Some(listen) = &args.listen {
        config.listen = listen.clone();
    }
    if let Some(file) = &args.admin_token_file {
        config.admin_token_file = Some(file.clone());
    }
    config.check()?;
    Ok(config)
}

fn read_token(config: &GatewayConfig) -> anyhow::Result<Option<String>> {
    let Some(file) = &config.admin_token_file else {
        tracing::warn!("no admin token file: the gateway's admin API refuses every request");
        return Ok(None);
    };
    let token = std::fs::read_to_string(file).with_context(|| format!("reading token file {}", file.display()))?;
    anyhow::ensure!(!token.trim().is_empty(), "token file {} is empty", file.display());
    Ok(Some(token.trim().to_string()))
}

pub fn run(args: GatewayArgs) -> anyhow::Result<()> {
    if args.check_config {
        let config = load(&args)?;
        let nodes: usize = config.regions.iter().map(|region| region.nodes.len()).sum();
        println!("configuration is valid: {} region(s), {nodes} node(s)", config.regions.len());
        return Ok(());
    }
    rananeeti_node::telemetry::init_json_logs();
    let config = load(&args)?;
    let token = read_token(&config)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = args.workers {
        runtime.worker_threads(workers.max(1));
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let gateway = Gateway::new(config, token);
        rananeeti_gateway::server::serve(listener, gateway, stop_signal()).await
    })
}

async fn stop_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// A gateway running on its own threads; stopped (open requests finished) when dropped.
pub struct GatewayHandle {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GatewayHandle {
    pub fn stop(self) {}
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs a gateway on `listener` with two worker threads of its own.
pub fn spawn_gateway(
    listener: std::net::TcpListener,
    config: GatewayConfig,
    admin_token: Option<String>,
) -> anyhow::Result<GatewayHandle> {
    config.check()?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gateway")
        .enable_all()
        .build()
        .context("building the gateway's runtime")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new().name("gateway".into()).spawn(move || {
        runtime.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::error!(%error, "gateway listener");
                    return;
                }
            };
            let gateway = Gateway::new(config, admin_token);
            let stopped = async move {
                let _ = stopped.await;
            };
            if let Err(error) = rananeeti_gateway::server::serve(listener, gateway, stopped).await {
                tracing::error!(error = format!("{error:#}"), "gateway stopped");
            }
        });
    })?;
    Ok(GatewayHandle { stop: Some(stop), thread: Some(thread) })
}
