//! Queued commands on their way into or out of a backup, kept in a scratch file, one JSON value
//! per line, so memory stays flat however long an outage made the queues. The export writes them
//! as `{"queue":[...]}` lines of at most `QUEUE_LINE_COMMANDS_MAX` commands.

use anyhow::Context;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, Write};

/// Commands per `{"queue":[...]}` line of an export (a restore reads one line at a time).
pub const QUEUE_LINE_COMMANDS_MAX: usize = 1000;

/// Commands written so far, in a scratch file deleted when dropped.
#[derive(Debug)]
pub struct QueueSpool {
    file: BufWriter<File>,
    commands: u64,
}

impl QueueSpool {
    pub fn new() -> anyhow::Result<QueueSpool> {
        let file = tempfile::tempfile().context("creating a scratch file for queued commands")?;
        Ok(QueueSpool { file: BufWriter::new(file), commands: 0 })
    }

    /// Adds one command given as its JSON text (checked to be one JSON value).
    pub fn push_json(&mut self, json: &[u8]) -> anyhow::Result<()> {
        let json = json.trim_ascii();
        serde_json::from_slice::<serde::de::IgnoredAny>(json).context("a queued command is not JSON")?;
        anyhow::ensure!(!json.contains(&b'\n'), "a queued command spans lines");
        self.file.write_all(json)?;
        self.file.write_all(b"\n")?;
        self.commands += 1;
        Ok(())
    }

    pub fn push(&mut self, command: &serde_json::Value) -> anyhow::Result<()> {
        self.push_json(&serde_json::to_vec(command)?)
    }

    /// Commands held.
    pub fn len(&self) -> u64 {
        self.commands
    }

    pub fn is_empty(&self) -> bool {
        self.commands == 0
    }

    /// Reads the commands back, in the order they were added.
    pub fn commands(self) -> anyhow::Result<SpooledCommands> {
        let mut file = self.file.into_inner().map_err(|error| error.into_error())?;
        file.rewind()?;
        Ok(SpooledCommands { lines: BufReader::new(file), line: Vec::new() })
    }
}

/// The commands of a spool, one JSON text at a time.
pub struct SpooledCommands {
    lines: BufReader<File>,
    line: Vec<u8>,
}

impl SpooledCommands {
    /// The next command's JSON text, or `None` after the last.
    pub fn next_json(&mut self) -> anyhow::Result<Option<&[u8]>> {
        self.line.clear();
        if self.lines.read_until(b'\n', &mut self.line)? == 0 {
            return Ok(None);
        }
        Ok(Some(self.line.trim_ascii_end()))
    }

    /// The next export line `{"queue":[...]}\n` of at most `QUEUE_LINE_COMMANDS_MAX` commands,
    /// or `None` once every command was in one.
    pub fn next_queue_line(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        let mut commands = 0;
        while commands < QUEUE_LINE_COMMANDS_MAX {
            let Some(json) = self.next_json()? else { break };
            line.extend_from_slice(if commands == 0 { b"{\"queue\":[" } else { b"," });
            line.extend_from_slice(json);
            commands += 1;
        }
        if commands == 0 {
            return Ok(None);
        }
        line.extend_from_slice(b"]}\n");
        Ok(Some(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Line;

    #[test]
    fn commands_come_back_in_order_as_bounded_queue_lines_the_import_reads() {
        let mut spool = QueueSpool::new().unwrap();
        for n in 0..(QUEUE_LINE_COMMANDS_MAX + 5) {
            spool.push(&serde_json::json!({ "kind": "k", "n": n })).unwrap();
        }
        assert!(spool.push_json(b"{not json").is_err());
        assert_eq!(spool.len(), QUEUE_LINE_COMMANDS_MAX as u64 + 5);
        let mut commands = spool.commands().unwrap();
        let mut lines = Vec::new();
        while let Some(line) = commands.next_queue_line().unwrap() {
            lines.push(line);
        }
        assert_eq!(lines.len(), 2);
        let mut seen = Vec::new();
        for line in &lines {
            match serde_json::from_slice::<Line>(line).unwrap() {
                Line::Queue { queue } => seen.extend(queue.into_iter().map(|command| command["n"].as_u64().unwrap())),
                _ => panic!("a queue line"),
            }
        }
        assert_eq!(seen, (0..(QUEUE_LINE_COMMANDS_MAX as u64 + 5)).collect::<Vec<_>>());
    }

    #[test]
    fn an_empty_spool_writes_no_line() {
        assert_eq!(QueueSpool::new().unwrap().commands().unwrap().next_queue_line().unwrap(), None);
    }
}
