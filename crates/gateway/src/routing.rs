//! Which node serves a request: the route's policy orders the regions, then power-of-two-choices
//! picks a node in the first region that has one available.

use crate::backends::{Node, Region};
use crate::config::{Policy, RouteConfig};
use hyper::header::{HeaderMap, COOKIE};
use rand::Rng;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub const REGION_HEADER: &str = "x-rananeeti-region";
pub const HOME_HEADER: &str = "x-rananeeti-home";

/// The route for `path`: the longest matching prefix; the default is failover over all regions.
pub fn route_for<'a>(routes: &'a [RouteConfig], path: &str, default: &'a RouteConfig) -> &'a RouteConfig {
    routes
        .iter()
        .filter(|route| path.starts_with(&route.prefix))
        .max_by_key(|route| route.prefix.len())
        .unwrap_or(default)
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
}

fn named<'a>(headers: &'a HeaderMap, header: &str, cookie_name: &str) -> Option<&'a str> {
    headers.get(header).and_then(|value| value.to_str().ok()).or_else(|| cookie(headers, cookie_name))
}

/// The regions to try, best first, for this route and request.
pub fn region_order<'a>(route: &RouteConfig, regions: &'a [Region], headers: &HeaderMap) -> Vec<&'a Region> {
    let listed: Vec<&Region> = if route.regions.is_empty() {
        regions.iter().collect()
    } else {
        route.regions.iter().filter_map(|name| regions.iter().find(|region| &region.name == name)).collect()
    };
    let mut order = listed.clone();
    let prefer = |order: &mut Vec<&'a Region>, name: Option<&str>| {
        if let Some(position) = name.and_then(|name| order.iter().position(|region| region.name == name)) {
            let region = order.remove(position);
            order.insert(0, region);
        }
    };
    match route.policy {
        Policy::Failover => {}
        Policy::Home => prefer(&mut order, named(headers, HOME_HEADER, "rananeeti_home")),
        Policy::Nearest => {
            // Lowest latency first (a region's best available node), then the client's own region.
            order.sort_by_key(|region| {
                region.nodes.iter().filter(|node| node.available()).map(|node| node.ewma_us()).min().unwrap_or(u64::MAX)
            });
            prefer(&mut order, named(headers, REGION_HEADER, "rananeeti_region"));
        }
        Policy::Weighted => {
            // Draw regions without replacement in proportion to their weights.
            let mut rng = rand::thread_rng();
            let mut pool: Vec<(&Region, u32)> = listed
                .iter()
                .map(|region| (*region, route.weights.get(&region.name).copied().unwrap_or(1)))
                .filter(|(_, weight)| *weight > 0)
                .collect();
            order.clear();
            while !pool.is_empty() {
                let total: u32 = pool.iter().map(|(_, weight)| weight).sum();
                let mut draw = rng.gen_range(0..total.max(1));
                let index = pool
                    .iter()
                    .position(|(_, weight)| {
                        if draw < *weight {
                            true
                        } else {
                            draw -= weight;
                            false
                        }
                    })
                    .unwrap_or(0);
                order.push(pool.remove(index).0);
            }
        }
    }
    order
}

/// Power of two choices by requests in flight (then latency) among `candidates`.
fn two_choices(candidates: &[&Arc<Node>]) -> Option<Arc<Node>> {
    match candidates.len() {
        0 => None,
        1 => Some(Arc::clone(candidates[0])),
        len => {
            let mut rng = rand::thread_rng();
            let first = rng.gen_range(0..len);
            let mut second = rng.gen_range(0..len - 1);
            if second >= first {
                second += 1;
            }
            let (a, b) = (candidates[first], candidates[second]);
            let load = |node: &Node| (node.in_flight.load(Ordering::Relaxed), node.ewma_us());
            Some(Arc::clone(if load(a) <= load(b) { a } else { b }))
        }
    }
}

/// The node for the next attempt: the first region in `order` with an available node not yet
/// tried. When no node anywhere is available, a node not tried that is not drained (checks can
/// lag behind a node that came back).
pub fn pick(order: &[&Region], tried: &HashSet<String>) -> Option<Arc<Node>> {
    for region in order {
        let candidates: Vec<&Arc<Node>> =
            region.nodes.iter().filter(|node| node.available() && !tried.contains(&node.name)).collect();
        if let Some(node) = two_choices(&candidates) {
            return Some(node);
        }
    }
    let last_resort: Vec<&Arc<Node>> = order
        .iter()
        .flat_map(|region| &region.nodes)
        .filter(|node| !node.drained() && !node.removed() && !tried.contains(&node.name))
        .collect();
    if order.iter().all(|region| !region.nodes.iter().any(|node| node.available())) {
        return two_choices(&last_resort);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn cookies_and_headers_name_a_region() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_static("a=1; rananeeti_home=r2; b=3"));
        assert_eq!(named(&headers, HOME_HEADER, "rananeeti_home"), Some("r2"));
        headers.insert(HOME_HEADER, HeaderValue::from_static("r3"));
        assert_eq!(named(&headers, HOME_HEADER, "rananeeti_home"), Some("r3"), "the header wins");
    }

    #[test]
    fn the_longest_prefix_wins() {
        let route = |prefix: &str| RouteConfig {
            prefix: prefix.into(),
            policy: Policy::Failover,
            regions: vec![],
            weights: Default::default(),
        };
        let routes = vec![route("/"), route("/api/"), route("/api/cafe/")];
        let default = route("/");
        assert_eq!(route_for(&routes, "/api/cafe/reservations", &default).prefix, "/api/cafe/");
        assert_eq!(route_for(&routes, "/cafe", &default).prefix, "/");
    }
}
