//! The journal's write-ahead log: how a batch becomes durable without a redb commit that waits
//! for the disk.
//!
//! A durable redb commit writes every page the batch touched, scattered over the file, and waits
//! for all of them; under a trigger storm that wait was most of the writer's time. Instead, most
//! batches are committed to redb without durability, and what makes them durable is one record
//! appended to this log and synced: a few kilobytes, written in one place. Every
//! [`CHECKPOINT_EVERY`] (or after [`CHECKPOINT_BATCHES`] records or [`CHECKPOINT_BYTES`], or
//! after a failed sync) a batch is committed to redb durably instead, and the log starts over
//! at offset 0.
//!
//! A record is one batch: magic, payload length, sequence number, a digest of the three, and
//! the batch's ops as JSON. The redb transaction of each batch stores the batch's sequence
//! number (`wal_seq`), so at open the log is replayed from the first record after the one redb
//! holds, record by consecutive record, up to the first one that is torn, stale or missing.
//! Records left from before the last checkpoint carry lower numbers and are never replayed.

use super::error::JournalError;
use super::ops::Op;
use super::schema::encode as encode_json;
use sha2::{Digest, Sha256};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest time between two durable redb commits while the log takes the batches.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// Largest log before the next batch is committed durably and the log starts over.
pub const CHECKPOINT_BYTES: u64 = 8 << 20;
/// Most batches the log takes between two durable commits.
pub const CHECKPOINT_BATCHES: u64 = 10_000;

const MAGIC: [u8; 4] = *b"dhw1";
/// Magic, payload length, sequence number, digest.
const HEADER: usize = 4 + 4 + 8 + 16;

/// Where the log lives: a file, or a simulated disk in the fault tests.
pub trait LogFile: Send + Sync + 'static {
    /// The whole content, as a reader would see it now.
    fn read_all(&self) -> io::Result<Vec<u8>>;
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes everything written so far survive a power cut.
    fn sync(&self) -> io::Result<()>;
}

impl LogFile for std::fs::File {
    fn read_all(&self) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let mut out = Vec::new();
        let mut reader = self;
        std::io::Seek::seek(&mut reader, io::SeekFrom::Start(0))?;
        reader.read_to_end(&mut out)?;
        Ok(out)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, data, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
}

fn digest(seq: u64, payload: &[u8]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(seq.to_le_bytes());
    h.update((payload.len() as u32).to_le_bytes());
    h.update(payload);
    let full = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// One record, ready to be written.
pub fn encode(seq: u64, ops: &[&Op]) -> Result<Vec<u8>, JournalError> {
    frame(seq, &encode_json("a write-ahead log record", &ops)?)
}

/// The record of batch `seq` whose ops are `payload`.
fn frame(seq: u64, payload: &[u8]) -> Result<Vec<u8>, JournalError> {
    let len = u32::try_from(payload.len()).map_err(|_| JournalError::BatchTooLarge {
        bytes: payload.len(),
    })?;
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&digest(seq, payload));
    out.extend_from_slice(payload);
    Ok(out)
}

/// The fuzz target `wal_decoder`'s entry point. Reads `bytes` as a whole log and, so that the
/// fuzzer gets past the digest, as a sequence number (8 bytes) and the ops of one well-framed
/// record. Every record decoded must encode and decode to itself, and a replay must be a
/// consecutive run after the number the database holds. Panics when a rule is broken.
#[doc(hidden)]
pub fn fuzz_decode(bytes: &[u8]) {
    let mut records = decode(bytes);
    let (seq, payload) = match bytes.split_first_chunk::<8>() {
        Some((seq, payload)) => (u64::from_le_bytes(*seq), payload),
        None => (0, bytes),
    };
    if let Ok(record) = frame(seq, payload) {
        records.extend(decode(&record));
    }
    for (seq, ops) in &records {
        let refs: Vec<&Op> = ops.iter().collect();
        let again = encode(*seq, &refs).expect("a decoded batch encodes");
        let back = decode(&again);
        assert_eq!(back.len(), 1, "one record decodes to one record");
        assert_eq!(back[0].0, *seq);
        assert_eq!(format!("{:?}", back[0].1), format!("{ops:?}"));
    }
    let held = records.first().map_or(0, |(seq, _)| seq.saturating_sub(1));
    let replay = to_replay(records, held);
    for (i, (seq, _)) in replay.iter().enumerate() {
        assert_eq!(Some(*seq), held.checked_add(1 + i as u64));
    }
}

/// The records of a log's content, in file order, up to the first that is torn or not a
/// record. Each is (sequence number, ops).
pub fn decode(bytes: &[u8]) -> Vec<(u64, Vec<Op>)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while bytes.len() >= at + HEADER {
        let head = &bytes[at..at + HEADER];
        if head[..4] != MAGIC {
            break;
        }
        let len = u32::from_le_bytes(head[4..8].try_into().unwrap_or_default()) as usize;
        let seq = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if head[16..HEADER] != digest(seq, payload) {
            break;
        }
        let Ok(ops) = serde_json::from_slice::<Vec<Op>>(payload) else {
            break;
        };
        out.push((seq, ops));
        at += HEADER + len;
    }
    out
}

/// The records to replay on top of a database that holds batches up to `held`: the
/// consecutive run that starts right after it.
pub fn to_replay(records: Vec<(u64, Vec<Op>)>, held: u64) -> Vec<(u64, Vec<Op>)> {
    // `None` past the last sequence number: nothing can follow it.
    let mut next = held.checked_add(1);
    let mut out = Vec::new();
    for (seq, ops) in records {
        if seq <= held && out.is_empty() {
            continue;
        }
        if Some(seq) != next {
            break;
        }
        out.push((seq, ops));
        next = seq.checked_add(1);
    }
    out
}

/// The writer's end of the log.
pub struct Wal {
    file: Box<dyn LogFile>,
    /// The file's path, for error messages (`None` on a custom backend).
    path: Option<PathBuf>,
    /// Sequence number of the last batch committed to the database.
    pub seq: u64,
    /// Offset of the next record.
    end: u64,
    /// Records since the last durable commit, and the most it may be.
    records: u64,
    pub max_records: u64,
    /// Most time between two durable commits.
    pub every: Duration,
    last_checkpoint: Instant,
    /// A sync failed, so the log may have a hole: the next batch is committed durably.
    must_checkpoint: bool,
}

impl Wal {
    /// The writer's end of `file` (at `path`); [`Wal::checkpointed`] tells it where the
    /// database stands.
    pub fn new(file: Box<dyn LogFile>, path: Option<PathBuf>) -> Wal {
        Wal {
            file,
            path,
            seq: 0,
            end: 0,
            records: 0,
            max_records: CHECKPOINT_BATCHES,
            every: CHECKPOINT_EVERY,
            last_checkpoint: Instant::now(),
            must_checkpoint: false,
        }
    }

    pub fn read_all(&self) -> Result<Vec<u8>, JournalError> {
        self.file.read_all().map_err(|e| self.error("read", e))
    }

    fn error(&self, action: &'static str, source: io::Error) -> JournalError {
        JournalError::LogFile {
            path: self.path.clone(),
            action,
            source: Arc::new(source),
        }
    }

    /// Whether the next batch should be a durable redb commit.
    pub fn checkpoint_due(&self) -> bool {
        self.checkpoint_due_at(Instant::now())
    }

    /// [`Wal::checkpoint_due`] with the clock read by the caller (tests pass their own time).
    fn checkpoint_due_at(&self, now: Instant) -> bool {
        self.must_checkpoint
            || self.records >= self.max_records
            || self.end >= CHECKPOINT_BYTES
            || now.saturating_duration_since(self.last_checkpoint) >= self.every
    }

    /// A durable redb commit holds every batch up to `seq`: the log starts over.
    pub fn checkpointed(&mut self, seq: u64) {
        self.checkpointed_at(seq, Instant::now());
    }

    /// [`Wal::checkpointed`] at the time `now`.
    fn checkpointed_at(&mut self, seq: u64, now: Instant) {
        self.seq = seq;
        self.end = 0;
        self.records = 0;
        self.last_checkpoint = now;
        self.must_checkpoint = false;
    }

    /// Writes `record` at the end of the log, not yet synced. On failure nothing counts: the
    /// next record goes to the same place.
    pub fn write(&mut self, record: &[u8]) -> Result<(), JournalError> {
        self.file
            .write_at(self.end, record)
            .map_err(|e| self.error("write", e))
    }

    /// Syncs the record just written and moves past it.
    pub fn sync(&mut self, record_len: usize) -> Result<(), JournalError> {
        match self.file.sync() {
            Ok(()) => {
                self.end += record_len as u64;
                self.records += 1;
                Ok(())
            }
            Err(e) => {
                self.must_checkpoint = true;
                Err(self.error("sync", e))
            }
        }
    }

    /// Takes back a record written but not committed: its header is overwritten so that it
    /// can never be replayed.
    pub fn unwrite(&mut self) {
        let cleared = self
            .file
            .write_at(self.end, &[0u8; HEADER])
            .and_then(|()| self.file.sync());
        if cleared.is_err() {
            self.must_checkpoint = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(n: u64) -> Op {
        Op::Start {
            job_id: format!("job{n}"),
            now: n,
        }
    }

    fn record(seq: u64) -> Vec<u8> {
        encode(seq, &[&op(seq)]).unwrap()
    }

    fn seqs(records: &[(u64, Vec<Op>)]) -> Vec<u64> {
        records.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_ends_the_log() {
        let mut log = [record(1), record(2), record(3)].concat();
        let records = decode(&log);
        assert_eq!(seqs(&records), [1, 2, 3]);
        assert!(matches!(&records[1].1[0], Op::Start { now: 2, .. }));
        // Torn: the last record lost its final byte.
        log.pop();
        assert_eq!(seqs(&decode(&log)), [1, 2]);
        // Corrupt: one payload byte of the second record flipped.
        let mut bad = [record(1), record(2), record(3)].concat();
        let at = record(1).len() + HEADER + 2;
        bad[at] ^= 1;
        assert_eq!(seqs(&decode(&bad)), [1]);
        // A record taken back.
        let mut cleared = [record(1), record(2)].concat();
        let at = record(1).len();
        cleared[at..at + HEADER].fill(0);
        assert_eq!(seqs(&decode(&cleared)), [1]);
    }

    /// A log in memory whose syncs can be made to fail.
    #[derive(Default)]
    struct MemLog {
        bytes: std::sync::Mutex<Vec<u8>>,
        fail_sync: std::sync::atomic::AtomicBool,
    }

    impl LogFile for std::sync::Arc<MemLog> {
        fn read_all(&self) -> io::Result<Vec<u8>> {
            Ok(self.bytes.lock().unwrap().clone())
        }
        fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            let mut bytes = self.bytes.lock().unwrap();
            let end = offset as usize + data.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[offset as usize..end].copy_from_slice(data);
            Ok(())
        }
        fn sync(&self) -> io::Result<()> {
            match self.fail_sync.load(std::sync::atomic::Ordering::SeqCst) {
                true => Err(io::Error::other("sync failed")),
                false => Ok(()),
            }
        }
    }

    /// Appends record `seq` the way the writer does.
    fn append(wal: &mut Wal, seq: u64) -> Result<(), JournalError> {
        let rec = record(seq);
        wal.write(&rec)?;
        wal.seq = seq;
        wal.sync(rec.len())
    }

    #[test]
    fn checkpoints_come_after_enough_records_time_or_a_failed_sync() {
        let mem = std::sync::Arc::new(MemLog::default());
        let mut wal = Wal::new(Box::new(mem.clone()), None);
        wal.checkpointed(0);
        wal.max_records = 3;
        for seq in 1..=3 {
            assert!(!wal.checkpoint_due(), "before record {seq}");
            append(&mut wal, seq).unwrap();
        }
        assert!(wal.checkpoint_due(), "after max_records");
        assert_eq!(seqs(&decode(&wal.read_all().unwrap())), [1, 2, 3]);
        // After a checkpoint the log starts over at offset 0, over the old records.
        wal.checkpointed(4);
        assert!(!wal.checkpoint_due());
        append(&mut wal, 5).unwrap();
        assert_eq!(seqs(&to_replay(decode(&wal.read_all().unwrap()), 4)), [5]);
        // A failed sync: the record may not be on disk, so the next batch must be durable.
        mem.fail_sync
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(append(&mut wal, 6).is_err());
        assert!(wal.checkpoint_due());
        mem.fail_sync
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let t0 = Instant::now();
        wal.checkpointed_at(7, t0);
        wal.every = Duration::from_millis(30);
        assert!(!wal.checkpoint_due_at(t0));
        assert!(!wal.checkpoint_due_at(t0 + Duration::from_millis(29)));
        assert!(
            wal.checkpoint_due_at(t0 + Duration::from_millis(30)),
            "after `every`"
        );
    }

    #[test]
    fn a_record_taken_back_is_never_replayed() {
        let mem = std::sync::Arc::new(MemLog::default());
        let mut wal = Wal::new(Box::new(mem), None);
        wal.checkpointed(0);
        append(&mut wal, 1).unwrap();
        // Record 2 is written, then its database commit fails.
        wal.write(&record(2)).unwrap();
        wal.unwrite();
        assert_eq!(seqs(&to_replay(decode(&wal.read_all().unwrap()), 0)), [1]);
        // The next batch takes its place.
        append(&mut wal, 2).unwrap();
        assert_eq!(
            seqs(&to_replay(decode(&wal.read_all().unwrap()), 0)),
            [1, 2]
        );
    }

    #[test]
    fn replay_starts_after_the_database_and_stops_at_stale_records() {
        // After a checkpoint at 5 the log restarted: 6 and 7 overwrote the start of the old
        // run, whose records 3..5 are still there after them.
        let records = decode(&[record(6), record(7), record(4), record(5)].concat());
        assert_eq!(seqs(&to_replay(records.clone(), 5)), [6, 7]);
        assert_eq!(seqs(&to_replay(records.clone(), 6)), [7]);
        assert_eq!(seqs(&to_replay(records, 7)), Vec::<u64>::new());
        // Crash right after a checkpoint: only old records, all held already.
        let old = decode(&[record(3), record(4), record(5)].concat());
        assert!(to_replay(old, 5).is_empty());
        // A gap (a record lost) ends the replay.
        let gap = decode(&[record(6), record(8)].concat());
        assert_eq!(seqs(&to_replay(gap, 5)), [6]);
        // So does the last sequence number, without overflowing.
        let last = decode(&[record(u64::MAX), record(0)].concat());
        assert_eq!(seqs(&to_replay(last.clone(), u64::MAX - 1)), [u64::MAX]);
        assert!(to_replay(last, u64::MAX).is_empty());
    }
}
