//! The gateway's state: its configuration, the nodes behind it, its upstream client, limits,
//! retry budget and metrics, and who holds the admin token. Every part of the crate takes it;
//! it depends on no part that takes it (`proxy`, `admin`, `console` serve with it).

use crate::backends::Backends;
use crate::config::{GatewayConfig, Policy, RouteConfig};
use crate::metrics::GatewayMetrics;
use crate::upstream::{upstream_client, UpstreamClient};
use governor::{DefaultKeyedRateLimiter, Quota};
use hyper::body::Incoming;
use hyper::Request;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use subtle::ConstantTimeEq;

/// Retries may add `ratio` of the requests plus `min_per_sec`; each retry spends one token.
pub(crate) struct RetryBudget {
    state: Mutex<(f64, Instant)>,
    ratio: f64,
    min_per_sec: f64,
}

impl RetryBudget {
    const TOKENS_MAX: f64 = 100.0;

    pub(crate) fn deposit(&self) {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.0 = (state.0 + self.ratio).min(Self::TOKENS_MAX);
    }

    pub(crate) fn withdraw(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(state.1).as_secs_f64() * self.min_per_sec;
        state.0 = (state.0 + refill).min(Self::TOKENS_MAX);
        state.1 = now;
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

pub struct Gateway {
    pub config: GatewayConfig,
    pub backends: Arc<Backends>,
    pub(crate) client: UpstreamClient,
    pub metrics: GatewayMetrics,
    pub registry: prometheus_client::registry::Registry,
    /// `rananeeti_backup_*`, exported while the backup status file says a schedule runs.
    pub backup_registry: Option<prometheus_client::registry::Registry>,
    pub(crate) limiter: DefaultKeyedRateLimiter<IpAddr>,
    pub(crate) retry_budget: RetryBudget,
    pub(crate) default_route: RouteConfig,
    pub admin_token: Option<String>,
    /// The console's samples of the nodes (filled in the background while an admin token is set).
    pub console: Arc<crate::console::sample::History>,
    /// `config.trusted_proxies`, parsed.
    pub(crate) trusted_proxies: Vec<ipnet::IpNet>,
    pub(crate) request_id_prefix: u64,
    pub(crate) request_ids: std::sync::atomic::AtomicU64,
}

impl Gateway {
    pub fn new(config: GatewayConfig, admin_token: Option<String>) -> Arc<Gateway> {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = GatewayMetrics::new(&mut registry);
        let backup_registry = config.console.backup_status_file.as_ref().map(|_| {
            let mut backup_registry = prometheus_client::registry::Registry::default();
            metrics.register_backup(&mut backup_registry);
            backup_registry
        });
        let client = upstream_client(&config);
        let backends = Backends::new(&config.regions, config.health.clone(), metrics.clone(), client.clone());
        let console = Arc::new(crate::console::sample::History::new(config.console.history_samples_max.max(1)));
        if let Some(token) = &admin_token {
            let sampler = crate::console::sample::Sampler {
                backends: Arc::clone(&backends),
                metrics: metrics.clone(),
                client: client.clone(),
                admin_token: token.clone(),
                config: config.console.clone(),
            };
            sampler.start(Arc::downgrade(&console));
        }
        let quota = Quota::per_second(NonZeroU32::new(config.limits.rate_per_ip_per_sec).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(config.limits.rate_burst_per_ip).unwrap_or(NonZeroU32::MIN));
        let default_route = RouteConfig {
            prefix: "/".into(),
            policy: Policy::Failover,
            regions: Vec::new(),
            weights: Default::default(),
        };
        let retry_budget = RetryBudget {
            state: Mutex::new((RetryBudget::TOKENS_MAX / 10.0, Instant::now())),
            ratio: config.retries.budget_ratio,
            min_per_sec: config.retries.budget_min_per_sec,
        };
        // `check` refuses a configuration whose networks do not parse.
        let trusted_proxies = config.trusted_networks().unwrap_or_default();
        Arc::new(Gateway {
            trusted_proxies,
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            retry_budget,
            default_route,
            client,
            backends,
            metrics,
            registry,
            backup_registry,
            admin_token,
            console,
            request_id_prefix: rand::random(),
            request_ids: std::sync::atomic::AtomicU64::new(0),
            config,
        })
    }

    /// A new request id: this gateway's random prefix and a counter (no system call per request,
    /// unlike a random UUID).
    pub(crate) fn next_request_id(&self) -> String {
        let n = self.request_ids.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n:x}", self.request_id_prefix)
    }

    /// Forgets rate-limit state of clients not seen lately (call now and then).
    pub fn sweep(&self) {
        self.limiter.retain_recent();
    }
}

/// Whether the request carries this gateway's admin token (`Authorization: Bearer`), compared
/// in constant time; never when the gateway has none.
pub(crate) fn authorized(gateway: &Gateway, request: &Request<Incoming>) -> bool {
    let Some(token) = &gateway.admin_token else { return false };
    let presented =
        request.headers().get(hyper::header::AUTHORIZATION).and_then(|value| value.to_str().ok()).and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
        });
    presented.is_some_and(|presented| bool::from(token.as_bytes().ct_eq(presented.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_budget_runs_out_and_refills() {
        let budget = RetryBudget { state: Mutex::new((2.0, Instant::now())), ratio: 0.0, min_per_sec: 0.0 };
        assert!(budget.withdraw() && budget.withdraw());
        assert!(!budget.withdraw(), "two tokens, two retries");
        let budget = RetryBudget { state: Mutex::new((0.0, Instant::now())), ratio: 0.5, min_per_sec: 0.0 };
        budget.deposit();
        budget.deposit();
        assert!(budget.withdraw(), "two requests at 0.5 earn one retry");
    }
}
