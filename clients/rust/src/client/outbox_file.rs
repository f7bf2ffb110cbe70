//! The optional persistent outbox: a file of JSON lines, appended and synced before
//! what it records goes on the wire, so that a client started again (after a crash,
//! a restart, an update) resends what courier has not acked, with the same
//! `time_key`s, and does not hand the app a message it had already.
//!
//! Each line is one [`Record`]. The file is rewritten compactly (to a temporary file,
//! then renamed over it) when it is opened and after [`COMPACT_AFTER`] appends. A last
//! line cut short by a crash is ignored; any other unreadable line stops the client
//! from starting (the file is not guessed at). A `<file>.lock` beside it, locked while
//! a client uses the file, keeps two clients from sharing it.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::OutgoingMessage;

/// Appends after which the file is rewritten compactly.
pub const COMPACT_AFTER: usize = 4096;

/// One line of the outbox file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    /// Batch `time_key`s continue above this one.
    Floor {
        /// The last key given out.
        time_key: u64,
    },
    /// The app sent a message; it waits for a batch.
    Queued {
        /// Its chat.
        chat_id: u64,
        /// Its text.
        text: String,
    },
    /// The oldest `count` queued messages form batch `time_key`, sent as `sender_id`.
    Batch {
        /// The batch's key, kept for every resend.
        time_key: u64,
        /// The sender id its messages carry.
        sender_id: u64,
        /// How many queued messages it took.
        count: usize,
    },
    /// Batch `time_key` was acked or refused: it leaves the outbox.
    Done {
        /// The batch's key.
        time_key: u64,
    },
    /// The app acked these delivered message ids.
    Seen {
        /// Message ids, oldest first.
        ids: Vec<u64>,
    },
}

/// What a previous run left in the file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// The last batch `time_key` given out.
    pub last_time_key: u64,
    /// Batches not acked, oldest first: resent first, with their keys.
    pub batches: Vec<(u64, Vec<OutgoingMessage>)>,
    /// Messages not in a batch yet, oldest first.
    pub queued: Vec<(u64, String)>,
    /// Message ids the app acked, oldest first.
    pub seen: Vec<u64>,
}

/// Why the outbox cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A file operation failed.
    #[error("outbox {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// A line is not a record, or contradicts the ones before it.
    #[error("outbox {path}, line {line}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The line number (from 1).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Another client uses the file.
    #[error("outbox {0} is in use by another client")]
    Locked(PathBuf),
}

/// An open outbox file, locked for this client.
#[derive(Debug)]
pub struct OutboxFile {
    path: PathBuf,
    file: File,
    /// Holds the lock until the client ends; dropping it releases the file.
    _lock: File,
    appended: usize,
}

impl OutboxFile {
    /// Locks and reads the file (a missing file is an empty outbox), then rewrites it
    /// compactly. `limit_seen` bounds the seen ids kept.
    pub fn open(path: &Path, limit_seen: usize) -> Result<(Self, Restored), OutboxError> {
        let io_error = |source| OutboxError::Io {
            path: path.to_path_buf(),
            source,
        };
        let lock_path = with_suffix(path, ".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OutboxError::Locked(path.to_path_buf()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_error(e)),
        }
        let mut restored = match File::open(path) {
            Ok(file) => replay(path, BufReader::new(file))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Restored::default(),
            Err(e) => return Err(io_error(e)),
        };
        let excess = restored.seen.len().saturating_sub(limit_seen);
        restored.seen.drain(..excess);
        let records = snapshot_records(
            restored.last_time_key,
            restored.batches.iter().map(|(k, m)| (*k, m.as_slice())),
            restored.queued.iter().map(|(c, t)| (*c, t.as_str())),
            restored.seen.iter().copied(),
        );
        let file = rewrite(path, &records).map_err(io_error)?;
        let outbox = Self {
            path: path.to_path_buf(),
            file,
            _lock: lock,
            appended: 0,
        };
        Ok((outbox, restored))
    }

    /// Appends records and syncs them to disk: when this returns, they survive a
    /// crash of the process or of the machine.
    pub fn append(&mut self, records: &[Record]) -> Result<(), OutboxError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for record in records {
            text.push_str(&encode(record));
        }
        self.appended += records.len();
        self.file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|source| OutboxError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Whether enough was appended to rewrite the file compactly.
    pub fn wants_compaction(&self) -> bool {
        self.appended >= COMPACT_AFTER
    }

    /// Rewrites the file with only these records (a snapshot of the live state).
    pub fn compact(&mut self, records: &[Record]) -> Result<(), OutboxError> {
        self.file = rewrite(&self.path, records).map_err(|source| OutboxError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.appended = 0;
        Ok(())
    }
}

/// The records that rebuild a state: the key floor, each batch as its queued
/// messages plus its batch record, the queued messages, the seen ids.
pub fn snapshot_records<'a>(
    last_time_key: u64,
    batches: impl IntoIterator<Item = (u64, &'a [OutgoingMessage])>,
    queued: impl IntoIterator<Item = (u64, &'a str)>,
    seen: impl IntoIterator<Item = u64>,
) -> Vec<Record> {
    let mut records = vec![Record::Floor {
        time_key: last_time_key,
    }];
    for (time_key, messages) in batches {
        records.extend(messages.iter().map(|m| Record::Queued {
            chat_id: m.chat_id,
            text: m.content_text.clone(),
        }));
        records.push(Record::Batch {
            time_key,
            sender_id: messages.first().map_or(0, |m| m.sender_id),
            count: messages.len(),
        });
    }
    records.extend(queued.into_iter().map(|(chat_id, text)| Record::Queued {
        chat_id,
        text: text.to_string(),
    }));
    let seen: Vec<u64> = seen.into_iter().collect();
    if !seen.is_empty() {
        records.push(Record::Seen { ids: seen });
    }
    records
}

fn encode(record: &Record) -> String {
    // Integers and strings only: serialising cannot fail.
    let mut line = serde_json::to_string(record).unwrap_or_default();
    line.push('\n');
    line
}

/// Rebuilds the state the records describe.
fn replay(path: &Path, reader: impl BufRead) -> Result<Restored, OutboxError> {
    let mut restored = Restored::default();
    let mut queued = VecDeque::new();
    let lines: Vec<String> =
        reader
            .lines()
            .collect::<Result<_, _>>()
            .map_err(|source| OutboxError::Io {
                path: path.to_path_buf(),
                source,
            })?;
    for (index, line) in lines.iter().enumerate() {
        let corrupt = |reason: String| OutboxError::Corrupt {
            path: path.to_path_buf(),
            line: index + 1,
            reason,
        };
        let record = match serde_json::from_str::<Record>(line) {
            Ok(record) => record,
            // A crash in the middle of an append leaves a cut last line: what it
            // recorded had not been acted on yet.
            Err(_) if index + 1 == lines.len() => break,
            Err(e) => return Err(corrupt(e.to_string())),
        };
        match record {
            Record::Floor { time_key } => {
                restored.last_time_key = restored.last_time_key.max(time_key);
            }
            Record::Queued { chat_id, text } => queued.push_back((chat_id, text)),
            Record::Batch {
                time_key,
                sender_id,
                count,
            } => {
                if count == 0 || count > queued.len() {
                    return Err(corrupt(format!(
                        "batch {time_key} takes {count} messages, {} are queued",
                        queued.len()
                    )));
                }
                let messages = queued
                    .drain(..count)
                    .map(|(chat_id, content_text)| OutgoingMessage {
                        sender_id,
                        chat_id,
                        content_text,
                    })
                    .collect();
                restored.batches.push((time_key, messages));
                restored.last_time_key = restored.last_time_key.max(time_key);
            }
            Record::Done { time_key } => restored.batches.retain(|(k, _)| *k != time_key),
            Record::Seen { ids } => restored.seen.extend(ids),
        }
    }
    restored.queued = queued.into();
    Ok(restored)
}

/// Writes `records` to a temporary file, syncs it, renames it over `path` (and syncs
/// the directory, so the rename itself is durable); returns the new file, open for
/// appending.
fn rewrite(path: &Path, records: &[Record]) -> io::Result<File> {
    let temporary = with_suffix(path, ".tmp");
    let mut file = File::create(&temporary)?;
    let text: String = records.iter().map(encode).collect();
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    OpenOptions::new().append(true).open(path)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(sender_id: u64, chat_id: u64, text: &str) -> OutgoingMessage {
        OutgoingMessage {
            sender_id,
            chat_id,
            content_text: text.into(),
        }
    }

    fn queued(chat_id: u64, text: &str) -> Record {
        Record::Queued {
            chat_id,
            text: text.into(),
        }
    }

    #[test]
    fn replaying_rebuilds_batches_queue_keys_and_seen_ids() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("outbox");
        {
            let (mut outbox, restored) = OutboxFile::open(&path, 100).expect("open");
            assert_eq!(restored, Restored::default(), "a missing file is empty");
            outbox
                .append(&[
                    queued(10, "a"),
                    queued(10, "b"),
                    queued(11, "c"),
                    Record::Batch {
                        time_key: 500,
                        sender_id: 1,
                        count: 2,
                    },
                    queued(10, "d"),
                    Record::Batch {
                        time_key: 501,
                        sender_id: 1,
                        count: 1,
                    },
                    Record::Seen { ids: vec![7, 8] },
                    Record::Done { time_key: 500 },
                ])
                .expect("append");
        }
        let (_, restored) = OutboxFile::open(&path, 100).expect("reopen");
        assert_eq!(
            restored,
            Restored {
                last_time_key: 501,
                batches: vec![(501, vec![message(1, 11, "c")])],
                queued: vec![(10, "d".into())],
                seen: vec![7, 8],
            }
        );
    }

    #[test]
    fn opening_compacts_and_keeps_the_state() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("outbox");
        {
            let (mut outbox, _) = OutboxFile::open(&path, 2).expect("open");
            let mut records = Vec::new();
            for i in 0..50 {
                records.push(queued(1, &format!("m{i}")));
                records.push(Record::Batch {
                    time_key: 1000 + i,
                    sender_id: 3,
                    count: 1,
                });
                records.push(Record::Done { time_key: 1000 + i });
            }
            records.push(queued(1, "left"));
            records.push(Record::Batch {
                time_key: 2000,
                sender_id: 3,
                count: 1,
            });
            records.push(Record::Seen { ids: vec![1, 2, 3] });
            outbox.append(&records).expect("append");
        }
        let (_, first) = OutboxFile::open(&path, 2).expect("reopen");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(
            text.lines().count(),
            4,
            "floor, queued, batch, seen:\n{text}"
        );
        assert_eq!(first.seen, [2, 3], "only the newest seen ids are kept");
        let (_, second) = OutboxFile::open(&path, 2).expect("reopen");
        assert_eq!(first, second);
        assert_eq!(second.last_time_key, 2000, "keys continue above the last");
        assert_eq!(second.batches, [(2000, vec![message(3, 1, "left")])]);
    }

    #[test]
    fn a_cut_last_line_is_ignored_and_a_bad_line_elsewhere_is_an_error() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("outbox");
        std::fs::write(
            &path,
            "{\"op\":\"queued\",\"chat_id\":1,\"text\":\"a\"}\n{\"op\":\"que",
        )
        .expect("write");
        let (outbox, restored) = OutboxFile::open(&path, 10).expect("open");
        assert_eq!(restored.queued, [(1, "a".to_string())]);
        drop(outbox);
        std::fs::write(&path, "nonsense\n{\"op\":\"floor\",\"time_key\":1}\n").expect("write");
        let error = OutboxFile::open(&path, 10).expect_err("corrupt");
        assert!(
            matches!(error, OutboxError::Corrupt { line: 1, .. }),
            "{error}"
        );
        std::fs::write(
            &path,
            "{\"op\":\"batch\",\"time_key\":1,\"sender_id\":1,\"count\":1}\n",
        )
        .expect("write");
        let error = OutboxFile::open(&path, 10).expect_err("batch without messages");
        assert!(
            matches!(error, OutboxError::Corrupt { line: 1, .. }),
            "{error}"
        );
    }

    #[test]
    fn a_second_client_cannot_open_the_same_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("outbox");
        let (first, _) = OutboxFile::open(&path, 10).expect("open");
        let error = OutboxFile::open(&path, 10).expect_err("locked");
        assert!(matches!(error, OutboxError::Locked(_)), "{error}");
        drop(first);
        OutboxFile::open(&path, 10).expect("free again");
    }
}
