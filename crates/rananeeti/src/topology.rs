//! `DIR/topology.json`: what `rananeeti up` runs (gateway, nodes, databases), rewritten atomically.
//!
//! Tools, drills and tests read this file to find the processes to talk to or to kill. It holds
//! addresses and process ids only: never a token or a password.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The whole local deployment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Where clients should send traffic; `None` until a gateway runs in front of the nodes.
    pub gateway_url: Option<String>,
    /// The witness that votes on ownership with the regions (deployments of two or more regions).
    #[serde(default)]
    pub witness_url: Option<String>,
    /// Every gateway in front of the nodes (`up --gateways N`), the first at `gateway_url`.
    #[serde(default)]
    pub gateways: Vec<GatewayTopology>,
    pub regions: Vec<RegionTopology>,
}

/// One gateway. They hold no state that matters, so clients may use any of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayTopology {
    pub name: String,
    pub url: String,
    /// Process id of a gateway running as its own process; `None` for the one inside `up`
    /// (killing that one would stop the whole deployment) and while one is being restarted.
    pub pid: Option<u32>,
}

/// One region: its nodes and the database they share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionTopology {
    pub name: String,
    pub nodes: Vec<NodeTopology>,
    pub database: DatabaseTopology,
}

/// One node process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTopology {
    pub name: String,
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Process id of the running node; `None` while it is being restarted.
    pub pid: Option<u32>,
}

/// The store a region's nodes write to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseTopology {
    pub kind: DatabaseKind,
    /// Connection URL without credentials.
    pub url: String,
    /// Process id of the PostgreSQL postmaster when `up` started it; `None` for SQLite.
    pub pid: Option<u32>,
    /// The file (mode 0600) holding the password of the URL's user, when it has one: where the
    /// secret is, never the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<std::path::PathBuf>,
}

impl DatabaseTopology {
    /// The URL with its password, for a connection made in this process (backups, tests, drills
    /// that look into a region's database). A secret: never log it or pass it to a program.
    pub fn connect_url(&self) -> anyhow::Result<String> {
        crate::postgres::connect_url(&self.url, self.password_file.as_deref())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}

impl Topology {
    /// Replaces `path` so that a reader sees either the old file or the new one, whole, even if the
    /// machine stops halfway: write a temporary file in the same directory, fsync it, rename it over
    /// `path`, fsync the directory.
    pub fn write_atomically(&self, path: &Path) -> anyhow::Result<()> {
        let directory = parent_directory(path);
        let file_name =
            path.file_name().with_context(|| format!("topology path {} has no file name", path.display()))?;
        let mut temporary_name = file_name.to_os_string();
        temporary_name.push(format!(".tmp-{}", std::process::id()));
        let temporary_path = directory.join(temporary_name);

        let mut json = serde_json::to_vec_pretty(self).context("serialising topology")?;
        json.push(b'\n');
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&temporary_path)?;
            file.write_all(&json)?;
            file.sync_all()?;
            fs::rename(&temporary_path, path)?;
            File::open(directory)?.sync_all()
        };
        write().map_err(|error| {
            let _ = fs::remove_file(&temporary_path);
            anyhow::Error::new(error).context(format!("writing topology {}", path.display()))
        })
    }

    pub fn read(path: &Path) -> anyhow::Result<Topology> {
        let bytes = fs::read(path).with_context(|| format!("reading topology {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing topology {}", path.display()))
    }
}

/// The directory holding `path`; `.` for a bare file name.
fn parent_directory(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_round_trips_through_its_file_with_null_gateway_and_lowercase_kind() {
        let directory = std::env::temp_dir().join(format!("topology-test-{}", std::process::id()));
        fs::create_dir_all(&directory).unwrap();
        let path = directory.join("topology.json");
        let topology = Topology {
            gateway_url: None,
            witness_url: Some("http://127.0.0.1:8084".into()),
            gateways: vec![GatewayTopology { name: "g2".into(), url: "http://127.0.0.1:8085".into(), pid: Some(43) }],
            regions: vec![RegionTopology {
                name: "r1".into(),
                nodes: vec![NodeTopology { name: "r1-n1".into(), url: "http://127.0.0.1:8080".into(), pid: Some(42) }],
                database: DatabaseTopology {
                    password_file: None,
                    kind: DatabaseKind::Postgres,
                    url: "postgres://rananeeti@127.0.0.1:5433/rananeeti".into(),
                    pid: Some(7),
                },
            }],
        };
        topology.write_atomically(&path).unwrap();
        topology.write_atomically(&path).unwrap();
        assert_eq!(Topology::read(&path).unwrap(), topology);
        let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert!(json["gateway_url"].is_null());
        assert_eq!(json["regions"][0]["database"]["kind"], "postgres");
        let leftovers: Vec<_> = fs::read_dir(&directory).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file may stay behind");
        fs::remove_dir_all(&directory).unwrap();
    }
}
