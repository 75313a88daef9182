//! Reading on a second thread: `restore` and `verify` decrypt and decompress a backup there while
//! the import parses and inserts on its own, so the two use two cores instead of taking turns on
//! one. A bounded channel of chunks keeps memory flat (`depth` x `chunk` bytes at most in flight).

use std::io::Read;
use std::sync::mpsc::{sync_channel, Receiver};

/// A reader that yields what `source` yields, read ahead by a thread of its own.
pub struct ReadAhead {
    chunks: Receiver<std::io::Result<Vec<u8>>>,
    current: Vec<u8>,
    at: usize,
    done: bool,
}

/// Starts the thread: it reads `source` in pieces of up to `chunk` bytes, at most `depth` of them
/// ahead of the reader, and stops at the end, at an error (passed on), or when the reader is
/// dropped.
pub fn read_ahead<R: Read + Send + 'static>(mut source: R, chunk: usize, depth: usize) -> std::io::Result<ReadAhead> {
    let (sender, chunks) = sync_channel(depth);
    std::thread::Builder::new().name("read-ahead".into()).spawn(move || loop {
        let mut buffer = vec![0u8; chunk];
        let mut filled = 0;
        // Fill the chunk (sources such as decompressors answer in small pieces).
        let read = loop {
            match source.read(&mut buffer[filled..]) {
                Ok(0) => break Ok(filled),
                Ok(count) => {
                    filled += count;
                    if filled == chunk {
                        break Ok(filled);
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => break Err(error),
            }
        };
        match read {
            Ok(0) => return,
            Ok(filled) => {
                buffer.truncate(filled);
                if sender.send(Ok(buffer)).is_err() {
                    return;
                }
            }
            Err(error) => {
                let _ = sender.send(Err(error));
                return;
            }
        }
    })?;
    Ok(ReadAhead { chunks, current: Vec::new(), at: 0, done: false })
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            if self.done {
                return Ok(0);
            }
            match self.chunks.recv() {
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.at = 0;
                }
                Ok(Err(error)) => {
                    self.done = true;
                    return Err(error);
                }
                // The thread finished: everything was read.
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let count = out.len().min(self.current.len() - self.at);
        out[..count].copy_from_slice(&self.current[self.at..self.at + count]);
        self.at += count;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yields_the_same_bytes_in_order() {
        let data: Vec<u8> = (0..1_000_003u32).map(|n| (n % 251) as u8).collect();
        let mut ahead = read_ahead(std::io::Cursor::new(data.clone()), 4096, 2).unwrap();
        let mut read = Vec::new();
        ahead.read_to_end(&mut read).unwrap();
        assert_eq!(read, data);
    }

    #[test]
    fn passes_on_an_error_after_what_came_before() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("damaged"));
                }
                let count = out.len().min(self.0);
                out[..count].fill(7);
                self.0 -= count;
                Ok(count)
            }
        }
        let mut ahead = read_ahead(Failing(10), 4, 1).unwrap();
        let mut read = Vec::new();
        let error = ahead.read_to_end(&mut read).unwrap_err();
        assert_eq!(error.to_string(), "damaged");
        assert_eq!(read, vec![7; 8], "the full chunks before the error");
    }
}
