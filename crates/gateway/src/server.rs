//! Accepts connections and serves each with hyper's HTTP/1.1 server (keep-alive), with a bound
//! on the time a client may take to send its request head (slowloris) and on its size.

use crate::proxy::Gateway;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Serves `listener` on `shards` threads until `shutdown` resolves, then lets open requests
/// finish. Each shard is a single-threaded runtime accepting from the same socket, with its own
/// upstream connections (`Gateway` keeps a client per shard): a request is read, forwarded and
/// answered on one thread, with no hand-off between threads, as nginx's workers do. The state
/// the shards share (nodes, health, in-flight counts, limits) is behind atomics and locks in
/// `Gateway`. Health checks and the sweeper run on the caller's runtime.
pub async fn serve_sharded(
    listener: std::net::TcpListener,
    gateway: Arc<Gateway>,
    shards: usize,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    tracing::info!(address = %listener.local_addr()?, shards, "gateway listening");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut threads = Vec::new();
    for shard in 0..shards.max(1) {
        let listener = listener.try_clone()?;
        let gateway = Arc::clone(&gateway);
        let mut stopped = stopped.clone();
        let thread = std::thread::Builder::new().name(format!("gateway-{shard}")).spawn(move || {
            crate::proxy::SHARD.with(|current| current.set(shard));
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let stop = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                serve_shard(listener, gateway, stop).await
            })
        })?;
        threads.push(thread);
    }
    let sweeper = {
        let gateway = Arc::clone(&gateway);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_INTERVAL).await;
                gateway.sweep();
            }
        })
    };
    shutdown.await;
    sweeper.abort();
    let _ = stop.send(true);
    let results = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .map(|thread| thread.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a gateway shard panicked"))))
            .collect::<Vec<_>>()
    })
    .await?;
    results.into_iter().collect()
}

/// One shard: accepts and serves connections until `shutdown`, then lets open requests finish.
async fn serve_shard(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(gateway.config.limits.header_read_timeout_ms))
        .max_buf_size(gateway.config.limits.header_bytes_max)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let gateway = Arc::clone(&gateway);
        let service = service_fn(move |request| {
            let gateway = Arc::clone(&gateway);
            async move { Ok::<_, Infallible>(gateway.handle(request, peer).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection closed with an error");
            }
        });
    }
    tracing::info!("gateway stopping: finishing open requests");
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await.is_err() {
        tracing::warn!("gateway stopped with requests still open");
    }
    Ok(())
}
