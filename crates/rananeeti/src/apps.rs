//! The apps a node serves, in one place. Adding an app is one entry in [`APPS`]: its name, its
//! tables, the POST prefixes the gateway may retry, and how the node builds it. The node mounts
//! and migrates what is listed here, a restore creates these tables, and the gateway and the
//! exported load balancers learn the retryable prefixes from here (not from a list of their own).

use crate::config::Config;
use rananeeti_node::security::Security;
use rananeeti_node::App;
use rananeeti_platform::Migration;

/// What building an app may use of the node.
pub struct AppWiring<'a> {
    pub config: &'a Config,
    pub session_key: rananeeti_bookstore::auth::SessionKey,
    pub security: Security,
}

/// One app, as the binary knows it.
pub struct AppEntry {
    pub name: &'static str,
    /// Its tables: what a node migrates and what a restore must create.
    pub migrations: fn() -> Vec<Migration>,
    /// POST path prefixes whose commands take their id from a digest of the request's content,
    /// so that a second try is a duplicate: the gateway may send such a POST again to another
    /// node when the first may have reached one.
    pub digest_post_prefixes: &'static [&'static str],
    pub build: fn(&AppWiring) -> Box<dyn App>,
}

pub const APPS: &[AppEntry] = &[
    AppEntry {
        name: "cafe",
        migrations: rananeeti_cafe::migrations,
        digest_post_prefixes: rananeeti_cafe::DIGEST_POST_PREFIXES,
        build: |wiring| {
            Box::new(rananeeti_cafe::CafeApp {
                config: rananeeti_cafe::CafeConfig { seats_per_slot: wiring.config.cafe.seats_per_slot },
            })
        },
    },
    AppEntry {
        name: "bookstore",
        migrations: rananeeti_bookstore::catalog::migrations,
        digest_post_prefixes: rananeeti_bookstore::DIGEST_POST_PREFIXES,
        build: |wiring| {
            Box::new(rananeeti_bookstore::BookstoreApp {
                key: wiring.session_key.clone(),
                security: wiring.security.clone(),
            })
        },
    },
];

/// Every migration a node runs: the platform's, then each app's (what a restore must create).
pub fn migrations() -> Vec<Migration> {
    let mut migrations = rananeeti_platform::schema::MIGRATIONS.to_vec();
    for app in APPS {
        migrations.extend((app.migrations)());
    }
    migrations
}

/// Every app's digest-idempotent POST prefixes (the gateway's `digest_post_prefixes`).
pub fn digest_post_prefixes() -> Vec<String> {
    APPS.iter().flat_map(|app| app.digest_post_prefixes.iter().map(|prefix| prefix.to_string())).collect()
}

/// Every app, built for this node.
pub fn build(wiring: &AppWiring) -> Vec<Box<dyn App>> {
    APPS.iter().map(|app| (app.build)(wiring)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_are_unique_and_the_cafe_bookings_are_retryable() {
        let mut names: Vec<&str> = APPS.iter().map(|app| app.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), APPS.len());
        assert!(digest_post_prefixes().contains(&"/api/cafe/reservations".to_string()));
    }
}
