//! The repository: where backups live, through `object_store` (a local directory by default,
//! S3 and the like by URL). A backup is `backups/<id>/` holding one object per region and
//! `manifest.json`, written last: a backup without a manifest is incomplete and never listed.

use crate::format::Manifest;
use anyhow::Context;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub const MANIFEST: &str = "manifest.json";
/// Retries of one request to a remote repository before the command fails, and the longest all
/// of them may take: an unreachable repository fails the command in seconds, not minutes
/// (object_store's defaults are 10 retries within 3 minutes).
const RETRY_ATTEMPTS_MAX: usize = 3;
const RETRY_BUDGET_MS: u64 = 20_000;
const RETRY_BACKOFF_FIRST_MS: u64 = 100;
const RETRY_BACKOFF_MAX_MS: u64 = 2_000;
/// Connecting to a remote repository, and one request (a multipart part is 10 MB).
const CONNECT_TIMEOUT_MS: u64 = 5_000;
const REQUEST_TIMEOUT_MS: u64 = 300_000;
/// Threads zstd compresses on while the export is read (its multithreaded mode; the calling
/// thread only hands input over).
const COMPRESSION_WORKERS_MAX: usize = 2;
/// Input zstd gives each worker at a time. Its default for level 3 is 8 MB, and a worker holds
/// several of them (input, output, the next job): 2 MB keeps the create under 100 MB of memory
/// for a negligible loss of ratio.
const COMPRESSION_JOB_BYTES: u32 = 2 << 20;
/// Parts of a multipart upload in flight at once (object_store's default is 8 of 10 MB each).
const UPLOAD_PARTS_IN_FLIGHT_MAX: usize = 2;

/// `AWS_<KEY>_FILE` names a file holding that key (a Kubernetes Secret mounted as files), so the
/// secret itself is in no process's environment. It wins over `AWS_<KEY>`.
const S3_KEYS_FROM_FILES: [(&str, object_store::aws::AmazonS3ConfigKey); 3] = [
    ("AWS_ACCESS_KEY_ID_FILE", object_store::aws::AmazonS3ConfigKey::AccessKeyId),
    ("AWS_SECRET_ACCESS_KEY_FILE", object_store::aws::AmazonS3ConfigKey::SecretAccessKey),
    ("AWS_SESSION_TOKEN_FILE", object_store::aws::AmazonS3ConfigKey::Token),
];

/// The trimmed content of the file `variable` names, if it is set. Errors name the variable and
/// the file, never what the file holds.
fn secret_from_file(variable: &str) -> anyhow::Result<Option<String>> {
    let Some(path) = std::env::var_os(variable) else {
        return Ok(None);
    };
    let path = std::path::PathBuf::from(path);
    let value = std::fs::read_to_string(&path).with_context(|| format!("{variable}: reading {}", path.display()))?;
    let value = value.trim();
    anyhow::ensure!(!value.is_empty(), "{variable}: {} is empty", path.display());
    Ok(Some(value.to_string()))
}

pub struct Repo {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// For messages: the URL without credentials.
    pub display: String,
}

impl Repo {
    /// `file:///path` (created if missing) or `s3://bucket/prefix` (credentials and region from
    /// the usual AWS environment variables), to write backups to.
    pub fn open(url: &str) -> anyhow::Result<Repo> {
        Repo::open_with(url, true)
    }

    /// A repository to read from (list, verify, restore, prune): a local directory that does not
    /// exist is an error (most likely a mistyped path), not an empty repository made on the spot.
    pub fn open_existing(url: &str) -> anyhow::Result<Repo> {
        Repo::open_with(url, false)
    }

    fn open_with(url: &str, create: bool) -> anyhow::Result<Repo> {
        let parsed = url::Url::parse(url)
            .with_context(|| "the repository must be a URL: file:///path or s3://bucket/prefix".to_string())?;
        let display = format!("{}://{}{}", parsed.scheme(), parsed.host_str().unwrap_or(""), parsed.path());
        match parsed.scheme() {
            "file" => {
                let dir = parsed.to_file_path().map_err(|_| anyhow::anyhow!("{display}: not a local path"))?;
                if create {
                    std::fs::create_dir_all(&dir).with_context(|| format!("creating repository {}", dir.display()))?;
                } else {
                    anyhow::ensure!(dir.is_dir(), "repository {display}: no such directory");
                }
                let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .with_context(|| format!("opening repository {}", dir.display()))?;
                Ok(Repo { store: Arc::new(store), prefix: ObjectPath::from("backups"), display })
            }
            "s3" => {
                let bucket = parsed.host_str().context("s3:// URL without a bucket")?;
                let retry = object_store::RetryConfig {
                    backoff: object_store::BackoffConfig {
                        init_backoff: Duration::from_millis(RETRY_BACKOFF_FIRST_MS),
                        max_backoff: Duration::from_millis(RETRY_BACKOFF_MAX_MS),
                        base: 2.0,
                    },
                    max_retries: RETRY_ATTEMPTS_MAX,
                    retry_timeout: Duration::from_millis(RETRY_BUDGET_MS),
                };
                let mut builder = object_store::aws::AmazonS3Builder::from_env();
                for (variable, key) in S3_KEYS_FROM_FILES {
                    if let Some(value) = secret_from_file(variable)? {
                        builder = builder.with_config(key, value);
                    }
                }
                // Timeouts unless the environment sets them (AWS_CONNECT_TIMEOUT, AWS_TIMEOUT);
                // set key by key, as `with_client_options` would drop AWS_ALLOW_HTTP and the like.
                for (key, value) in [
                    (object_store::ClientConfigKey::ConnectTimeout, CONNECT_TIMEOUT_MS),
                    (object_store::ClientConfigKey::Timeout, REQUEST_TIMEOUT_MS),
                ] {
                    let key = object_store::aws::AmazonS3ConfigKey::Client(key);
                    if builder.get_config_value(&key).is_none() {
                        builder = builder.with_config(key, format!("{value}ms"));
                    }
                }
                let store = builder
                    .with_bucket_name(bucket)
                    .with_retry(retry)
                    .build()
                    .with_context(|| format!("opening repository {display}"))?;
                let prefix =
                    ObjectPath::from(format!("{}/backups", parsed.path().trim_matches('/')).trim_start_matches('/'));
                Ok(Repo { store: Arc::new(store), prefix, display })
            }
            other => anyhow::bail!("unsupported repository scheme {other}: use file:///path or s3://bucket/prefix"),
        }
    }

    /// Asks the repository for its backups once: fails (within the retry budget) when it
    /// cannot be reached, before any work is done.
    pub async fn check_reachable(&self) -> anyhow::Result<()> {
        self.store
            .list_with_delimiter(Some(&self.prefix))
            .await
            .with_context(|| format!("repository {} is unreachable", self.display))?;
        Ok(())
    }

    pub fn object_path(&self, backup: &str, name: &str) -> ObjectPath {
        self.prefix.child(backup).child(name)
    }

    /// Every complete backup (with a manifest that parses), oldest first.
    pub async fn list(&self) -> anyhow::Result<Vec<Manifest>> {
        let listing = self
            .store
            .list_with_delimiter(Some(&self.prefix))
            .await
            .with_context(|| format!("listing repository {}", self.display))?;
        let mut manifests = Vec::new();
        for dir in listing.common_prefixes {
            let Some(id) = dir.filename() else { continue };
            match self.manifest(id).await {
                Ok(manifest) => manifests.push(manifest),
                Err(error) => tracing::debug!(backup = id, error = format!("{error:#}"), "not a complete backup"),
            }
        }
        manifests.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(manifests)
    }

    /// Backup directories with no manifest (being written, or abandoned) and when they were
    /// last written to, in ms.
    pub async fn incomplete(&self) -> anyhow::Result<Vec<(String, u64)>> {
        let listing = self.store.list_with_delimiter(Some(&self.prefix)).await?;
        let mut found = Vec::new();
        for dir in listing.common_prefixes {
            let Some(id) = dir.filename() else { continue };
            let objects: Vec<_> = self.store.list(Some(&dir)).try_collect().await?;
            if objects.iter().any(|object| object.location.filename() == Some(MANIFEST)) {
                continue;
            }
            let newest =
                objects.iter().map(|object| object.last_modified.timestamp_millis().max(0) as u64).max().unwrap_or(0);
            found.push((id.to_string(), newest));
        }
        Ok(found)
    }

    pub async fn manifest(&self, backup: &str) -> anyhow::Result<Manifest> {
        let bytes = self
            .store
            .get(&self.object_path(backup, MANIFEST))
            .await
            .with_context(|| format!("backup {backup}: no manifest (incomplete or missing)"))?
            .bytes()
            .await?;
        serde_json::from_slice(&bytes).with_context(|| format!("backup {backup}: the manifest does not parse"))
    }

    /// The backup named, or the newest.
    pub async fn find(&self, backup: Option<&str>) -> anyhow::Result<Manifest> {
        match backup {
            Some(id) => self.manifest(id).await,
            None => self
                .list()
                .await?
                .pop()
                .with_context(|| format!("repository {} holds no complete backup", self.display)),
        }
    }

    /// Writes the manifest: the backup is complete from here on.
    pub async fn put_manifest(&self, manifest: &Manifest) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(manifest)?;
        self.store
            .put(&self.object_path(&manifest.id, MANIFEST), bytes.into())
            .await
            .with_context(|| format!("writing the manifest of {}", manifest.id))?;
        Ok(())
    }

    /// Deletes a backup: the manifest first (so it stops being listed), then its objects.
    pub async fn delete(&self, backup: &str) -> anyhow::Result<()> {
        let _ = self.store.delete(&self.object_path(backup, MANIFEST)).await;
        let objects: Vec<_> = self.store.list(Some(&self.prefix.child(backup))).try_collect().await?;
        for object in objects {
            self.store.delete(&object.location).await.with_context(|| format!("deleting {}", object.location))?;
        }
        Ok(())
    }

    /// Downloads an object to `file`, checking its size and SHA-256 against what the manifest
    /// says. Streams: memory stays flat whatever the size.
    pub async fn download_checked(
        &self,
        backup: &str,
        name: &str,
        sha256: &str,
        bytes: u64,
        file: &std::path::Path,
    ) -> anyhow::Result<()> {
        let path = self.object_path(backup, name);
        let mut stream = self
            .store
            .get(&path)
            .await
            .with_context(|| format!("object {name} of backup {backup} is missing"))?
            .into_stream();
        let mut out = tokio::fs::File::create(file).await.with_context(|| format!("creating {}", file.display()))?;
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        while let Some(chunk) = stream.try_next().await.with_context(|| format!("reading object {name}"))? {
            hasher.update(&chunk);
            received += chunk.len() as u64;
            out.write_all(&chunk).await.with_context(|| format!("writing {} (disk full?)", file.display()))?;
        }
        out.flush().await?;
        let actual = hex::encode(hasher.finalize());
        if received != bytes || actual != sha256 {
            anyhow::bail!(
                "object {name} of backup {backup} is damaged: {received} bytes with SHA-256 {actual}, the manifest says {bytes} bytes with {sha256}"
            );
        }
        Ok(())
    }
}

/// Shared byte buffer the encoders write into and the uploader drains.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes an object compressed (zstd) and encrypted (age), uploading as it goes and hashing
/// what is uploaded.
pub struct SealedWriter {
    chain: Option<zstd::stream::write::Encoder<'static, age::stream::StreamWriter<Shared>>>,
    shared: Shared,
    upload: object_store::buffered::BufWriter,
    hasher: Sha256,
    pub bytes: u64,
    pub plain_bytes: u64,
}

impl SealedWriter {
    pub fn new(
        repo: &Repo,
        backup: &str,
        name: &str,
        recipients: &[age::x25519::Recipient],
        level: i32,
    ) -> anyhow::Result<SealedWriter> {
        let shared = Shared::default();
        let encryptor =
            age::Encryptor::with_recipients(recipients.iter().map(|recipient| recipient as &dyn age::Recipient))
                .map_err(|error| anyhow::anyhow!("encryption: {error}"))?;
        let age = encryptor.wrap_output(shared.clone())?;
        let mut chain = zstd::stream::write::Encoder::new(age, level)?;
        let workers = std::thread::available_parallelism().map_or(1, |cores| cores.get()).min(COMPRESSION_WORKERS_MAX);
        chain.multithread(workers as u32)?;
        chain.set_parameter(zstd::zstd_safe::CParameter::JobSize(COMPRESSION_JOB_BYTES))?;
        let upload = object_store::buffered::BufWriter::new(Arc::clone(&repo.store), repo.object_path(backup, name))
            .with_max_concurrency(UPLOAD_PARTS_IN_FLIGHT_MAX);
        Ok(SealedWriter { chain: Some(chain), shared, upload, hasher: Sha256::new(), bytes: 0, plain_bytes: 0 })
    }

    pub async fn write(&mut self, data: &[u8]) -> anyhow::Result<()> {
        self.chain.as_mut().expect("not finished").write_all(data)?;
        self.plain_bytes += data.len() as u64;
        self.drain().await
    }

    async fn drain(&mut self) -> anyhow::Result<()> {
        let chunk = std::mem::take(&mut *self.shared.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        if !chunk.is_empty() {
            self.hasher.update(&chunk);
            self.bytes += chunk.len() as u64;
            self.upload
                .write_all(&chunk)
                .await
                .context("uploading (is the repository reachable, the disk not full?)")?;
        }
        Ok(())
    }

    /// Finishes the streams and the upload; answers the object's SHA-256 and size.
    pub async fn finish(mut self) -> anyhow::Result<(String, u64)> {
        let age = self.chain.take().expect("finished once").finish()?;
        age.finish()?;
        self.drain().await?;
        self.upload.shutdown().await.context("completing the upload")?;
        Ok((hex::encode(self.hasher.clone().finalize()), self.bytes))
    }
}
