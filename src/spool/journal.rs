//! The delivered journal: which recipients a next hop accepted, written
//! the moment its 250 arrives, before the attempt's record is committed.
//!
//! Between a peer's 250 and the commit of our record lie the rest of the
//! attempt and a group commit; a crash there used to deliver the message
//! again after restart. One `write` per transaction closes most of that
//! window: without a sync, it survives the process being killed (the page
//! cache is the kernel's), which is what Postfix's queue-file marks
//! survive too. At start the entries are applied before the queue is
//! loaded (idempotently: a recipient already recorded is skipped), then
//! the journal is emptied.
//!
//! Two files take turns so that the journal stays small under constant
//! load: once the current one is large, writing moves to the other,
//! emptied first, when no attempt that began before the last switch is
//! still running (each attempt holds a [`Ticket`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::message::QueueId;

/// A file is left for the other once it holds this much.
const SWITCH_AT: u64 = 1 << 20;

/// One accepted transaction: the message, the domain's job, who took it,
/// and the recipients (their index in the message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: QueueId,
    pub domain: String,
    pub remote: String,
    pub recipients: Vec<u32>,
}

impl Entry {
    /// One line; the fields hold no space or line break (domains and
    /// `host[ip]` are checked names), so a space separates them.
    fn line(&self) -> String {
        let indexes: Vec<String> = self.recipients.iter().map(u32::to_string).collect();
        format!(
            "{} {} {} {}\n",
            self.id,
            self.domain,
            self.remote,
            indexes.join(",")
        )
    }

    /// A line back, or `None` for what a crash cut short or garbage.
    fn parse(line: &str) -> Option<Entry> {
        let mut fields = line.split(' ');
        let id = fields.next()?.parse().ok()?;
        let domain = fields.next()?.to_string();
        let remote = fields.next()?.to_string();
        let recipients = fields
            .next()?
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<u32>, _>>()
            .ok()?;
        (fields.next().is_none() && !domain.is_empty() && !recipients.is_empty()).then_some(Entry {
            id,
            domain,
            remote,
            recipients,
        })
    }
}

struct State {
    file: File,
    /// Turns so far; the file in use is `generation % 2`.
    generation: u64,
    written: u64,
    /// Attempts running, by the parity of the turn they began in.
    running: [usize; 2],
}

pub struct Journal {
    paths: [PathBuf; 2],
    state: Mutex<State>,
}

/// Held by an attempt from before it delivers until its record is
/// committed: the journal file it may have written to is kept till then.
pub struct Ticket {
    journal: Arc<Journal>,
    parity: usize,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.journal.lock();
        state.running[self.parity] -= 1;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("delivered journal {path}: {source}")]
pub struct JournalError {
    path: PathBuf,
    source: std::io::Error,
}

impl Journal {
    /// Opens the journal in `dir`, returning what it holds from before
    /// (empty after a clean stop). Call [`Journal::clear`] once those
    /// entries are recorded.
    pub fn open(dir: &Path) -> Result<(Arc<Journal>, Vec<Entry>), JournalError> {
        let paths = [
            dir.join("delivered-journal.0"),
            dir.join("delivered-journal.1"),
        ];
        let mut entries = Vec::new();
        for path in &paths {
            match std::fs::read(path) {
                Ok(bytes) => entries.extend(
                    String::from_utf8_lossy(&bytes)
                        .lines()
                        .filter_map(Entry::parse),
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(JournalError {
                        path: path.clone(),
                        source,
                    });
                }
            }
        }
        let file = append(&paths[0])?;
        let journal = Journal {
            paths,
            state: Mutex::new(State {
                file,
                generation: 0,
                written: 0,
                running: [0, 0],
            }),
        };
        Ok((Arc::new(journal), entries))
    }

    /// Empties both files: what they held is recorded in the spool.
    pub fn clear(&self) -> Result<(), JournalError> {
        let mut state = self.lock();
        for path in &self.paths {
            truncate(path)?;
        }
        state.file = append(&self.paths[0])?;
        state.generation = 0;
        state.written = 0;
        Ok(())
    }

    /// Called before an attempt may deliver; switches files when the
    /// current one is large and the other is no longer needed.
    pub fn begin(self: &Arc<Self>) -> Ticket {
        let mut state = self.lock();
        let other = ((state.generation + 1) % 2) as usize;
        if state.written >= SWITCH_AT && state.running[other] == 0 {
            match truncate(&self.paths[other]).and_then(|()| append(&self.paths[other])) {
                Ok(file) => {
                    state.file = file;
                    state.generation += 1;
                    state.written = 0;
                }
                Err(e) => tracing::error!("cannot switch the delivered journal: {e}"),
            }
        }
        let parity = (state.generation % 2) as usize;
        state.running[parity] += 1;
        Ticket {
            journal: self.clone(),
            parity,
        }
    }

    /// Notes an accepted transaction: one `write`, no sync. A failure is
    /// logged and costs only the protection against a duplicate.
    pub fn note(&self, entry: &Entry) {
        let line = entry.line();
        let mut state = self.lock();
        match state.file.write_all(line.as_bytes()) {
            Ok(()) => state.written += line.len() as u64,
            Err(e) => {
                tracing::warn!(id = %entry.id, "cannot note the delivery in the journal: {e}")
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves nothing half-written that
        // matters here: the journal only ever appends whole lines.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn append(path: &Path) -> Result<File, JournalError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| JournalError {
            path: path.to_path_buf(),
            source,
        })
}

fn truncate(path: &Path) -> Result<(), JournalError> {
    match File::create(path) {
        Ok(_) => Ok(()),
        Err(source) => Err(JournalError {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, recipients: Vec<u32>) -> Entry {
        Entry {
            id: QueueId(id),
            domain: "dst.test".into(),
            remote: "mx.dst.test[192.0.2.1]".into(),
            recipients,
        }
    }

    #[test]
    fn entries_survive_a_reopen_and_a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, old) = Journal::open(dir.path()).unwrap();
        assert!(old.is_empty());
        journal.note(&entry(1, vec![0]));
        journal.note(&entry(2, vec![1, 3]));
        drop(journal);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("delivered-journal.0"))
            .unwrap();
        f.write_all(b"0000000000000003 dst.te").unwrap();
        let (journal, old) = Journal::open(dir.path()).unwrap();
        assert_eq!(old, vec![entry(1, vec![0]), entry(2, vec![1, 3])]);
        journal.clear().unwrap();
        assert!(Journal::open(dir.path()).unwrap().1.is_empty());
    }

    #[test]
    fn a_file_is_emptied_only_when_no_attempt_from_its_turn_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path()).unwrap();
        let early = journal.begin();
        let big = entry(7, (0..200_000).collect());
        journal.note(&big);
        // File 0 is large: the next attempt switches to file 1.
        let second = journal.begin();
        journal.note(&entry(8, vec![0]));
        drop(second);
        // File 1 is small, and file 0's attempt still runs: file 0 stays.
        journal.note(&entry(9, (0..200_000).collect()));
        let third = journal.begin();
        assert_eq!(Journal::open(dir.path()).unwrap().1.len(), 3);
        drop((early, third));
        // Now nothing from file 0's turn runs: it is emptied and reused.
        let _fourth = journal.begin();
        let left = Journal::open(dir.path()).unwrap().1;
        assert_eq!(
            left.iter().map(|e| e.id.0).collect::<Vec<_>>(),
            vec![8, 9],
            "file 0 emptied, file 1 kept"
        );
    }
}
