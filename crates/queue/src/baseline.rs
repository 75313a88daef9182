//! The benchmark baseline: an append-only file that fsyncs once per record, no group commit.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Appends records to one file and calls `sync_data` after each, so every append pays one fsync.
/// A record is the body's length (u32, little-endian), its CRC-32, then the body.
pub struct FsyncPerWrite {
    path: PathBuf,
    file: File,
    appends_total: u64,
}

impl FsyncPerWrite {
    /// Opens `path` for appending, creating it if needed.
    pub fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(FsyncPerWrite { path, file, appends_total: 0 })
    }

    /// Appends one record and fsyncs it; durable when it returns `Ok`.
    pub fn append(&mut self, body: &[u8]) -> io::Result<()> {
        let body_bytes = u32::try_from(body.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: body of {} bytes is too large", self.path.display(), body.len()),
            )
        })?;
        let mut record = Vec::with_capacity(8 + body.len());
        record.extend_from_slice(&body_bytes.to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        record.extend_from_slice(body);
        self.file.write_all(&record)?;
        self.file.sync_data()?;
        self.appends_total += 1;
        Ok(())
    }

    /// Records appended (and so fsyncs done) through this writer.
    pub fn appends_total(&self) -> u64 {
        self.appends_total
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
