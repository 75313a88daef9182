//! Measures how many bytes of a torn journal tail fjall's recovery dropped when opening.
//!
//! fjall keeps its write-ahead journal as numbered files in `<dir>/journals`. A new journal file
//! is preallocated with zeros (32 MiB), so its length says nothing about what was written; what
//! was written ends at the last non-zero byte (every complete batch ends with fjall's non-zero
//! trailer magic). When opening, recovery (`RecoveryMode::TolerateCorruptTail`) truncates a file
//! to the end of its last complete batch, dropping both the zero padding and any torn batch. So
//! the bytes of a torn tail are: the written end before opening, less the length after.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The folder under the keyspace directory where fjall 2 keeps its journal files.
pub(crate) const JOURNALS_FOLDER: &str = "journals";

/// Bytes read at a time while scanning a journal file backwards for its last non-zero byte.
const SCAN_CHUNK_BYTES: usize = 64 * 1024;

/// Most journal files looked at; fjall rotates and deletes them, so more means something is off.
const JOURNAL_FILES_MAX: usize = 1024;

/// Where the written bytes of each journal file end, keyed by file path.
pub(crate) type WrittenEnds = BTreeMap<PathBuf, u64>;

/// Records the written end of every journal file under `journals`, before fjall opens them.
pub(crate) fn written_ends(journals: &Path) -> io::Result<WrittenEnds> {
    let mut ends = WrittenEnds::new();
    let dirents = match std::fs::read_dir(journals) {
        Ok(dirents) => dirents,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(ends),
        Err(error) => return Err(error),
    };
    for dirent in dirents {
        let dirent = dirent?;
        if !dirent.file_type()?.is_file() {
            continue;
        }
        if ends.len() == JOURNAL_FILES_MAX {
            return Err(io::Error::other(format!(
                "more than {JOURNAL_FILES_MAX} journal files in {}",
                journals.display()
            )));
        }
        let path = dirent.path();
        let end = written_end(&path)?;
        ends.insert(path, end);
    }
    Ok(ends)
}

/// Bytes that opening dropped from the written part of the journal files recorded in `before`.
/// A file gone after opening was a sealed journal whose data fjall had already flushed.
pub(crate) fn bytes_dropped(before: &WrittenEnds) -> io::Result<u64> {
    let mut dropped = 0;
    for (path, written_end) in before {
        let length_after = match std::fs::metadata(path) {
            Ok(metadata) => metadata.len(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        dropped += written_end.saturating_sub(length_after);
    }
    Ok(dropped)
}

/// The offset just past the last non-zero byte of the file (0 for a file of zeros).
pub(crate) fn written_end(path: &Path) -> io::Result<u64> {
    let mut file = File::open(path)?;
    let mut end = file.metadata()?.len();
    let mut chunk = vec![0; SCAN_CHUNK_BYTES];
    while end > 0 {
        let chunk_bytes = end.min(SCAN_CHUNK_BYTES as u64);
        let start = end - chunk_bytes;
        let chunk = &mut chunk[..chunk_bytes as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(last_non_zero) = chunk.iter().rposition(|&byte| byte != 0) {
            return Ok(start + last_non_zero as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_end_skips_zero_padding_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1");
        let mut bytes = vec![0u8; 3 * SCAN_CHUNK_BYTES + 10];
        bytes[5] = 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(written_end(&path).unwrap(), 6);
        std::fs::write(&path, vec![0u8; 100]).unwrap();
        assert_eq!(written_end(&path).unwrap(), 0);
    }
}
