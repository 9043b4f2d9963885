//! The one writer of a log directory: appends batches (written and fsynced before it returns),
//! seals, rotates by size and prunes by age.
//!
//! Opening continues the chain from the newest file: a last line cut by a crash mid-write (no
//! newline, or a line that does not read) is truncated away, and the (instance, batch) pairs of
//! that file are loaded so a batch re-sent after a restart is still appended once. A new file
//! (`audit-<first seq, 12 digits>.log`) starts with a signed checkpoint that seals the previous
//! file's last entry, so a file set whose oldest files were pruned still verifies from its first
//! file. Nothing here checks the older files: that is [`crate::verify`]'s job.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::entry::{self, Body, Entry, GENESIS, Hash, Line, Record};
use crate::seal::{SealError, Sealer};

/// How many (instance → last batch) pairs the writer remembers; beyond, the least recently
/// seen half is forgotten (an instance is one start of one proxy).
pub const DEDUP_CAPACITY: usize = 65_536;

/// Why the log could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot {action} {path}: {source}; check the audit directory's disk and permissions")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot encode an entry: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("cannot seal the log: {0}")]
    Seal(#[from] SealError),
}

/// The file name of the file whose first entry is `seq`.
pub fn file_name(seq: u64) -> String {
    format!("audit-{seq:012}.log")
}

/// The log files of `dir`, oldest first, with the first sequence number their names carry.
pub fn list_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(seq) = name
            .strip_prefix("audit-")
            .and_then(|s| s.strip_suffix(".log"))
            .filter(|s| s.len() == 12)
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        files.push((seq, item.path()));
    }
    files.sort();
    Ok(files)
}

/// Limits of the writer.
#[derive(Clone, Debug)]
pub struct WriterSettings {
    /// A file reaching this size is closed; the next entry starts a new file.
    pub max_file_bytes: u64,
}

impl Default for WriterSettings {
    fn default() -> Self {
        Self {
            max_file_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What opening found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Opened {
    /// Bytes cut from the end of the newest file (a torn last line).
    pub truncated_bytes: u64,
    /// The next sequence number.
    pub next_seq: u64,
}

/// The writer of one directory.
pub struct Writer {
    dir: PathBuf,
    settings: WriterSettings,
    sealer: Sealer,
    file: Option<(File, PathBuf, u64)>,
    last_hash: Hash,
    next_seq: u64,
    /// Entries written since the last checkpoint.
    unsealed: bool,
    dedup: HashMap<String, Seen>,
    tick: u64,
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    batch: u64,
    last_seq: u64,
    tick: u64,
}

/// One proxy's batch.
#[derive(Clone, Debug)]
pub struct Batch {
    pub instance: String,
    pub batch: u64,
    pub records: Vec<Record>,
}

impl Batch {
    pub fn new(instance: &str, batch: u64, records: Vec<Record>) -> Self {
        Self {
            instance: instance.to_string(),
            batch,
            records,
        }
    }
}

/// The outcome of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Written; the sequence number of its last record (0: an empty batch).
    Written(u64),
    /// That (instance, batch) was appended before (or is older than one that was): nothing
    /// written; the last sequence number known for the instance.
    Duplicate(u64),
}

impl Appended {
    pub fn sequence(self) -> u64 {
        match self {
            Appended::Written(s) | Appended::Duplicate(s) => s,
        }
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

impl Writer {
    /// Opens (creating it when absent) the log in `dir`, continuing its chain.
    pub fn open(
        dir: &Path,
        settings: WriterSettings,
        sealer: Sealer,
    ) -> Result<(Self, Opened), WriteError> {
        // Private to the control plane's user: records name callers and (masked) paths.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create", dir))?;
        let files = list_files(dir).map_err(io_err("list", dir))?;
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            settings,
            sealer,
            file: None,
            last_hash: GENESIS,
            next_seq: 1,
            unsealed: false,
            dedup: HashMap::new(),
            tick: 0,
        };
        let mut opened = Opened::default();
        // The newest file that holds a whole entry (an empty one, made by a crash right after a
        // rotation, is deleted: its checkpoint is written again).
        for (i, (_, path)) in files.iter().enumerate().rev() {
            opened.truncated_bytes += writer.recover(path)?;
            if writer.file.is_some() {
                // A batch re-sent just after a rotation was appended to the file before.
                if let Some((_, previous)) = i.checked_sub(1).and_then(|p| files.get(p)) {
                    writer.remember_file(previous);
                }
                break;
            }
            std::fs::remove_file(path).map_err(io_err("delete", path))?;
        }
        opened.next_seq = writer.next_seq;
        Ok((writer, opened))
    }

    /// Reads the newest file, cuts a torn tail, and takes its last hash, sequence number and
    /// batches.
    fn recover(&mut self, path: &Path) -> Result<u64, WriteError> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
            .map_err(io_err("open", path))?;
        // Read line by line: a file may be as large as `max_file_bytes`, more than the control
        // plane's memory should hold at once. Only the tail can be torn: bytes after the last
        // newline, or a last line that does not read. A bad line in the middle is left for
        // `verify` to report, never cut.
        let (mut good, mut total) = (0u64, 0u64);
        {
            let mut reader = BufReader::new(&file);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                let n = reader
                    .read_until(b'\n', &mut raw)
                    .map_err(io_err("read", path))?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                let Some(line) = raw.strip_suffix(b"\n") else {
                    // No newline: cut mid-write.
                    break;
                };
                // A line that does not read is cut unless a good line follows it.
                if let Ok((stored, entry)) =
                    Line::split(line).and_then(|l| Ok((l.stored, l.entry()?)))
                {
                    self.last_hash = stored;
                    self.next_seq = entry.seq + 1;
                    match &entry.body {
                        Body::Record(r) => {
                            self.unsealed = true;
                            self.remember(&r.instance, r.batch, entry.seq);
                        }
                        Body::Checkpoint(_) => self.unsealed = false,
                    }
                    good = total;
                }
            }
        }
        // `good` ends after the last line that reads: a bad line followed by good ones stays,
        // a bad or partial tail goes.
        let cut = total - good;
        if cut > 0 {
            file.set_len(good).map_err(io_err("truncate", path))?;
            file.sync_all().map_err(io_err("sync", path))?;
        }
        file.seek(SeekFrom::End(0)).map_err(io_err("seek", path))?;
        if good > 0 {
            self.file = Some((file, path.to_path_buf(), good));
        }
        Ok(cut)
    }

    /// Loads the batches of an older file (best effort: dedup only), line by line.
    fn remember_file(&mut self, path: &Path) {
        let Ok(file) = File::open(path) else {
            return;
        };
        let mut reader = BufReader::new(file);
        let mut raw = Vec::new();
        while matches!(reader.read_until(b'\n', &mut raw), Ok(n) if n > 0) {
            if let Ok(Entry {
                seq,
                body: Body::Record(r),
            }) = Line::split(raw.strip_suffix(b"\n").unwrap_or(&raw)).and_then(|l| l.entry())
            {
                self.remember(&r.instance, r.batch, seq);
            }
            raw.clear();
        }
    }

    fn remember(&mut self, instance: &str, batch: u64, seq: u64) {
        self.tick += 1;
        let tick = self.tick;
        let seen = self.dedup.entry(instance.to_string()).or_insert(Seen {
            batch,
            last_seq: seq,
            tick,
        });
        if batch >= seen.batch {
            seen.batch = batch;
            seen.last_seq = seq;
        }
        seen.tick = tick;
        if self.dedup.len() > DEDUP_CAPACITY {
            let mut ticks: Vec<u64> = self.dedup.values().map(|s| s.tick).collect();
            ticks.sort_unstable();
            let cutoff = ticks[ticks.len() / 2];
            self.dedup.retain(|_, s| s.tick > cutoff);
        }
    }

    /// Replaces the sealer (the control plane's certificate was renewed).
    pub fn set_sealer(&mut self, sealer: Sealer) {
        self.sealer = sealer;
    }

    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// The next sequence number.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether entries were written since the last checkpoint.
    pub fn unsealed(&self) -> bool {
        self.unsealed
    }

    /// Appends the records of batch `batch` of proxy `instance` (each record's `instance` and
    /// `batch` are set here), once: a batch already appended is answered from memory. Written and
    /// synced before it returns; on an error nothing of the batch stays in the file.
    pub fn append(
        &mut self,
        instance: &str,
        batch: u64,
        records: Vec<Record>,
        now_ms: i64,
    ) -> Result<Appended, WriteError> {
        let mut out = self.append_all(vec![Batch::new(instance, batch, records)], now_ms)?;
        Ok(out.pop().unwrap_or(Appended::Written(0)))
    }

    /// Appends several batches with one write and one sync (group commit: the writer thread
    /// takes every batch waiting at once), each once; answers in order. On an error nothing of
    /// them stays in the file.
    pub fn append_all(
        &mut self,
        batches: Vec<Batch>,
        now_ms: i64,
    ) -> Result<Vec<Appended>, WriteError> {
        let mut answers = Vec::with_capacity(batches.len());
        // What this group appends, for the dedup of a batch sent twice within it.
        let mut group: HashMap<String, (u64, u64)> = HashMap::new();
        let mut buf = Vec::new();
        let (mut hash, mut seq) = (self.last_hash, self.next_seq);
        let mut rotated = false;
        for Batch {
            instance,
            batch,
            records,
        } in batches
        {
            let seen = group
                .get(&instance)
                .copied()
                .or_else(|| self.dedup.get(&instance).map(|s| (s.batch, s.last_seq)));
            if let Some((last_batch, last_seq)) = seen
                && batch <= last_batch
            {
                answers.push(Appended::Duplicate(last_seq));
                continue;
            }
            if records.is_empty() {
                answers.push(Appended::Written(0));
                continue;
            }
            if !rotated {
                // Before the first line of the group: a rotation writes its own checkpoint.
                self.rotate_if_full(now_ms)?;
                (hash, seq) = (self.last_hash, self.next_seq);
                rotated = true;
            }
            for mut record in records {
                record.instance.clone_from(&instance);
                record.batch = batch;
                let (line, h) = entry::encode(
                    &hash,
                    &Entry {
                        seq,
                        body: Body::Record(record),
                    },
                )?;
                buf.extend_from_slice(&line);
                hash = h;
                seq += 1;
            }
            group.insert(instance, (batch, seq - 1));
            answers.push(Appended::Written(seq - 1));
        }
        if !buf.is_empty() {
            self.write(&buf, hash, seq)?;
            self.unsealed = true;
            for (instance, (batch, last_seq)) in group {
                self.remember(&instance, batch, last_seq);
            }
        }
        Ok(answers)
    }

    /// Appends a signed checkpoint sealing everything before it, when something was written since
    /// the last one; returns its sequence number.
    pub fn seal(&mut self, now_ms: i64) -> Result<Option<u64>, WriteError> {
        if !self.unsealed {
            return Ok(None);
        }
        self.rotate_if_full(now_ms)?;
        if !self.unsealed {
            // The rotation's checkpoint sealed it all.
            return Ok(Some(self.next_seq - 1));
        }
        let seq = self.next_seq;
        self.append_checkpoint(now_ms)?;
        Ok(Some(seq))
    }

    fn append_checkpoint(&mut self, now_ms: i64) -> Result<(), WriteError> {
        let seq = self.next_seq;
        let cp = self
            .sealer
            .checkpoint(seq, seq - 1, &self.last_hash, now_ms)?;
        let (line, hash) = entry::encode(
            &self.last_hash,
            &Entry {
                seq,
                body: Body::Checkpoint(cp),
            },
        )?;
        self.write(&line, hash, seq + 1)?;
        self.unsealed = false;
        Ok(())
    }

    /// Starts a new file when the current one is full (or there is none): its first entry is a
    /// checkpoint sealing the previous file's last entry (or, for the very first file, the
    /// empty log: the chain then starts from zeros).
    fn rotate_if_full(&mut self, now_ms: i64) -> Result<(), WriteError> {
        if let Some((_, _, len)) = &self.file
            && *len < self.settings.max_file_bytes
        {
            return Ok(());
        }
        let path = self.dir.join(file_name(self.next_seq));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("create", &path))?;
        let len = file.metadata().map_err(io_err("stat", &path))?.len();
        if let Some((old, _, _)) = self.file.replace((file, path, len)) {
            drop(old);
        }
        if let Ok(dir) = File::open(&self.dir) {
            // The new file's name must survive a crash too.
            let _ = dir.sync_all();
        }
        self.append_checkpoint(now_ms)
    }

    fn write(&mut self, bytes: &[u8], hash: Hash, next_seq: u64) -> Result<(), WriteError> {
        let Some((file, path, len)) = &mut self.file else {
            return Err(WriteError::Io {
                action: "write",
                path: self.dir.clone(),
                source: io::Error::other("no open file"),
            });
        };
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_data())
            .map_err(io_err("write", path));
        if let Err(e) = written {
            // Leave no half batch behind: the next write must continue a whole chain.
            let _ = file.set_len(*len);
            return Err(e);
        }
        *len += bytes.len() as u64;
        self.last_hash = hash;
        self.next_seq = next_seq;
        Ok(())
    }

    /// Deletes the files, oldest first, whose every entry is older than `retention` before
    /// `now_ms` (known from the first checkpoint of the file after it, written when it was
    /// closed). The newest file is never deleted. Returns the deleted paths.
    pub fn prune(&mut self, now_ms: i64, retention: Duration) -> Result<Vec<PathBuf>, WriteError> {
        let cutoff =
            now_ms.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let files = list_files(&self.dir).map_err(io_err("list", &self.dir))?;
        let mut deleted = Vec::new();
        for pair in files.windows(2) {
            let closed_at = first_checkpoint_time(&pair[1].1);
            match closed_at {
                Some(t) if t < cutoff => {
                    std::fs::remove_file(&pair[0].1).map_err(io_err("delete", &pair[0].1))?;
                    deleted.push(pair[0].1.clone());
                }
                _ => break,
            }
        }
        Ok(deleted)
    }
}

/// The time of a file's first entry when it is a checkpoint.
fn first_checkpoint_time(path: &Path) -> Option<i64> {
    let mut file = File::open(path).ok()?;
    let mut buf = vec![0; 16 * 1024];
    let mut filled = 0;
    loop {
        let n = file.read(&mut buf[filled..]).ok()?;
        filled += n;
        if let Some(end) = buf[..filled].iter().position(|&b| b == b'\n') {
            let line = Line::split(&buf[..end]).ok()?;
            return match line.entry().ok()?.body {
                Body::Checkpoint(cp) => Some(cp.time_ms),
                Body::Record(_) => None,
            };
        }
        if n == 0 {
            return None;
        }
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
}
