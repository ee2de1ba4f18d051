//! The durable queue: one redb file (`webhooks.redb` in `--state-dir`).
//!
//! Every write goes through one writer thread that **group-commits**: it takes whatever is
//! waiting (accepts from many requests, attempt results, replays), applies it in one write
//! transaction and commits once. A batch that accepts messages commits with
//! `Durability::Immediate` (fsync) and only then answers the accepts: a `202` means the message
//! is on disk. A batch of attempt results alone commits with `Durability::None` (no fsync) and
//! is made durable by the next immediate commit, at most [`SYNC_EVERY`] later: a crash in
//! between loses only the knowledge that some attempts happened, so those messages are
//! delivered again (at-least-once), never lost.
//!
//! Tables (keys sort by message id, a ULID, so by acceptance time):
//! - `messages`: id → event type and payload, kept while any of its deliveries is pending or
//!   dead (a delivered message's payload is removed once its last delivery succeeds);
//! - `deliveries`: (id, endpoint) → attempts made, next attempt, dead-letter time and last error;
//! - `dead`: (endpoint, id), the dead letters of each endpoint in acceptance order;
//! - `attempts`: (id, endpoint, n) → what attempt n got (kept [`Retention::attempts`], and at
//!   most [`attempt_records_cap`] of them: at thousands of deliveries a second a week of
//!   records would fill any store, so the oldest go first);
//! - `idempotency`, `idempotency_by_id`: key ↔ first id (kept [`Retention::idempotency`]);
//! - `counts`: each endpoint's delivered, failed-attempt and dead-letter counts (kept for good).
//!
//! The size bound is on the pages in use, not on the file's length: redb reuses freed pages
//! but never shrinks the file, so a length at the limit only says the store has *been* that
//! full. See [`Space`].

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::message::{first_id_at, id_time_ms};

const MESSAGES: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("webhook_messages_v1");
const DELIVERIES: TableDefinition<'_, (u128, &str), &[u8]> =
    TableDefinition::new("webhook_deliveries_v1");
const DEAD: TableDefinition<'_, (&str, u128), ()> = TableDefinition::new("webhook_dead_v1");
const ATTEMPTS: TableDefinition<'_, (u128, &str, u32), &[u8]> =
    TableDefinition::new("webhook_attempts_v1");
const IDEMPOTENCY: TableDefinition<'_, &str, u128> = TableDefinition::new("webhook_idempotency_v1");
const IDEMPOTENCY_BY_ID: TableDefinition<'_, u128, &str> =
    TableDefinition::new("webhook_idempotency_by_id_v1");
/// endpoint → (delivered, failed attempts, dead-lettered), since the endpoint's first message
/// on this sidecar: what it reports to the operator for the WebhookEndpoint's status.
const COUNTS: TableDefinition<'_, &str, (u64, u64, u64)> =
    TableDefinition::new("webhook_counts_v1");

/// The file name in `--state-dir`.
pub const FILE_NAME: &str = "webhooks.redb";
/// The longest a non-durable commit waits for the fsync that makes it durable.
pub const SYNC_EVERY: Duration = Duration::from_millis(500);
/// The most writes one transaction takes, so one commit's latency stays bounded.
const MAX_BATCH: usize = 8192;
/// The share of `max_bytes` the pages in use may reach: the rest absorbs fragmentation and
/// the pages a commit frees only once no reader holds the snapshot before it.
const FULL_AT: f64 = 0.9;
/// A B-tree keeps its pages partly empty: what a write is assumed to take, per byte written.
const PAGE_SLACK: u64 = 2;
/// The least time between two counts of the pages in use while the store is full.
const RECOUNT_EVERY: Duration = Duration::from_secs(1);
/// What one attempt record is assumed to take, for [`attempt_records_cap`].
const ATTEMPT_RECORD_BYTES: u64 = 512;

/// The most attempt records kept: about an eighth of the store (1 GiB keeps 262 144).
pub fn attempt_records_cap(max_bytes: u64) -> u64 {
    (max_bytes / 8 / ATTEMPT_RECORD_BYTES).max(1_000)
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The store is at its size limit, or the disk is full: new messages are refused (507)
    /// and the ones it holds stay.
    #[error("the webhook store is full ({0})")]
    Full(String),
    #[error("the webhook store failed: {0}")]
    Failed(String),
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        if let redb::Error::Io(io) = &e
            && io.kind() == std::io::ErrorKind::StorageFull
        {
            return Self::Full("no space left on the device".into());
        }
        Self::Failed(e.to_string())
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                redb::Error::from(e).into()
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// How long what is done stays.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// Attempt records (status, latency, response excerpt).
    pub attempts: Duration,
    /// Dead letters not replayed.
    pub dead_letters: Duration,
    /// Idempotency keys (Svix keeps them 24 h too).
    pub idempotency: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            attempts: Duration::from_secs(7 * 24 * 3600),
            dead_letters: Duration::from_secs(30 * 24 * 3600),
            idempotency: Duration::from_secs(24 * 3600),
        }
    }
}

/// A message to accept, with the endpoints it fans out to and when each first attempt is due.
#[derive(Clone, Debug)]
pub struct Pending {
    pub id: u128,
    pub event_type: String,
    pub payload: Vec<u8>,
    pub idempotency_key: Option<String>,
    pub deliveries: Vec<(String, u64)>,
}

impl Pending {
    /// About what storing it writes: payload, event type, key and each delivery's state.
    fn size(&self) -> u64 {
        let key = self
            .idempotency_key
            .as_ref()
            .map_or(0, |k| 2 * (k.len() + 16));
        let deliveries: usize = self.deliveries.iter().map(|(e, _)| e.len() + 64).sum();
        (self.payload.len() + self.event_type.len() + 18 + key + deliveries) as u64
    }
}

/// What accepting one message did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Stored (with its deliveries).
    New(u128),
    /// Its idempotency key was seen: the first message's id; nothing stored.
    Duplicate(u128),
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub event_type: String,
    pub payload: Vec<u8>,
}

/// A delivery waiting for its next attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub endpoint: String,
    pub id: u128,
    pub due_ms: u64,
    pub attempts: u32,
}

/// The state of one delivery.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryState {
    pub attempts: u32,
    pub next_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What one attempt got.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    pub at_ms: u64,
    /// `2xx`, `5xx`, `timeout`, `network`, `refused`, ...
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub latency_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The start of the response body (at most 1 KiB), for debugging a receiver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

impl AttemptRecord {
    /// About what storing it writes.
    fn size(&self) -> u64 {
        let text = self.error.as_ref().map_or(0, String::len)
            + self.response.as_ref().map_or(0, String::len);
        (96 + self.result.len() + text) as u64
    }
}

/// What becomes of a delivery after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterAttempt {
    Delivered,
    Retry { at_ms: u64 },
    Dead { reason: String },
}

/// One attempt's result, to record.
#[derive(Clone, Debug)]
pub struct AttemptDone {
    pub id: u128,
    pub endpoint: String,
    /// 1 for the first attempt.
    pub number: u32,
    pub record: AttemptRecord,
    pub after: AfterAttempt,
}

/// An endpoint's delivery counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub delivered: u64,
    pub failed_attempts: u64,
    pub dead_lettered: u64,
}

impl Counts {
    /// What one attempt adds.
    pub fn of(after: &AfterAttempt) -> Self {
        match after {
            AfterAttempt::Delivered => Self {
                delivered: 1,
                ..Self::default()
            },
            AfterAttempt::Retry { .. } => Self {
                failed_attempts: 1,
                ..Self::default()
            },
            AfterAttempt::Dead { .. } => Self {
                failed_attempts: 1,
                dead_lettered: 1,
                ..Self::default()
            },
        }
    }
}

/// Which dead letters of an endpoint to replay.
#[derive(Clone, Copy, Debug)]
pub enum ReplaySelector {
    One(u128),
    /// Every dead letter of a message accepted at or after this time.
    Since {
        unix_ms: u64,
    },
}

/// A dead letter, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: u128,
    pub event_type: String,
    pub state: DeliveryState,
}

/// What the store held at open: deliveries to resume, and dead letters per endpoint.
#[derive(Debug, Default)]
pub struct Recovered {
    pub pending: Vec<Due>,
    pub dead: BTreeMap<String, u64>,
}

enum Write {
    Accept(Vec<Pending>, Reply<Vec<Accepted>>),
    Attempt(AttemptDone),
    /// Counts of a shared endpoint's attempts this sidecar made (its queue is in Redis).
    Count(String, Counts),
    Replay {
        endpoint: String,
        which: ReplaySelector,
        now_ms: u64,
        reply: Reply<Vec<u128>>,
    },
    Sweep {
        now_ms: u64,
        reply: Reply<SweepCounts>,
    },
    Flush(Reply<()>),
}

/// What a retention sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepCounts {
    pub attempts: u64,
    pub dead_letters: u64,
    pub idempotency_keys: u64,
}

/// The store: reads from any thread, writes through the writer thread.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    writes: mpsc::Sender<Write>,
    /// Last: when the last clone drops, the writer finishes and the file is closed, so the
    /// same process can open it again (tests) and nothing is written after.
    _writer: Arc<WriterThread>,
}

struct WriterThread(Option<std::thread::JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        // Every sender is gone by now (the clones' `writes` drop before this): the writer sees
        // the channel closed, finishes its batch and returns.
        if let Some(thread) = self.0.take() {
            let _ = thread.join();
        }
    }
}

impl Store {
    /// Opens (or creates) the store and starts its writer. Fails while another process holds
    /// the file (e.g. the old sidecar during an upgrade).
    pub fn open(
        path: &Path,
        max_bytes: u64,
        retention: Retention,
    ) -> Result<(Self, Recovered), StoreError> {
        // Private: payloads are the app's data.
        let db = Arc::new(crate::private_db::open(path)?);
        let txn = db.begin_write()?;
        {
            txn.open_table(MESSAGES)?;
            txn.open_table(DELIVERIES)?;
            txn.open_table(DEAD)?;
            txn.open_table(ATTEMPTS)?;
            txn.open_table(IDEMPOTENCY)?;
            txn.open_table(IDEMPOTENCY_BY_ID)?;
            txn.open_table(COUNTS)?;
        }
        txn.commit()?;
        let recovered = recover(&db)?;
        let (writes, queue) = mpsc::channel();
        let writer = Writer {
            db: db.clone(),
            path: path.to_owned(),
            space: Space::new(max_bytes),
            attempts_cap: attempt_records_cap(max_bytes),
            retention,
        };
        let thread = std::thread::Builder::new()
            .name("bulwark-webhook-store".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| StoreError::Failed(format!("cannot start the store's writer: {e}")))?;
        Ok((
            Self {
                db,
                writes,
                _writer: Arc::new(WriterThread(Some(thread))),
            },
            recovered,
        ))
    }

    /// Stores `messages` durably (one fsync for all that wait together), or none of them.
    pub async fn accept(&self, messages: Vec<Pending>) -> Result<Vec<Accepted>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Write::Accept(messages, reply))?;
        answer.await.map_err(|_| stopped())?
    }

    /// Records an attempt (durable within [`SYNC_EVERY`]).
    pub fn record(&self, done: AttemptDone) {
        // The writer stops only with the process.
        let _ = self.writes.send(Write::Attempt(done));
    }

    /// Adds to an endpoint's counts (durable within [`SYNC_EVERY`]).
    pub fn count(&self, endpoint: &str, delta: Counts) {
        let _ = self.writes.send(Write::Count(endpoint.to_owned(), delta));
    }

    /// Makes dead letters pending again (attempts start over, due now); returns their ids.
    pub async fn replay(
        &self,
        endpoint: &str,
        which: ReplaySelector,
        now_ms: u64,
    ) -> Result<Vec<u128>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Write::Replay {
            endpoint: endpoint.to_owned(),
            which,
            now_ms,
            reply,
        })?;
        answer.await.map_err(|_| stopped())?
    }

    /// Removes what has outlived its retention.
    pub async fn sweep(&self, now_ms: u64) -> Result<SweepCounts, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Write::Sweep { now_ms, reply })?;
        answer.await.map_err(|_| stopped())?
    }

    /// Makes every write so far durable (at shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Write::Flush(reply))?;
        answer.await.map_err(|_| stopped())?
    }

    fn send(&self, write: Write) -> Result<(), StoreError> {
        self.writes.send(write).map_err(|_| stopped())
    }

    pub fn message(&self, id: u128) -> Result<Option<StoredMessage>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MESSAGES)?;
        Ok(table.get(id)?.map(|v| decode_message(v.value())))
    }

    /// An endpoint's dead letters in acceptance order, after `after` (exclusive), at most `limit`.
    pub fn dead_letters(
        &self,
        endpoint: &str,
        after: Option<u128>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let txn = self.db.begin_read()?;
        let dead = txn.open_table(DEAD)?;
        let deliveries = txn.open_table(DELIVERIES)?;
        let messages = txn.open_table(MESSAGES)?;
        let start = after.map_or(0, |a| a.saturating_add(1));
        let mut letters = Vec::new();
        for entry in dead.range((endpoint, start)..=(endpoint, u128::MAX))? {
            if letters.len() >= limit {
                break;
            }
            let (key, _) = entry?;
            let id = key.value().1;
            let state = deliveries
                .get((id, endpoint))?
                .map(|v| decode_state(v.value()))
                .unwrap_or_default();
            let event_type = messages
                .get(id)?
                .map(|v| decode_message(v.value()).event_type)
                .unwrap_or_default();
            letters.push(DeadLetter {
                id,
                event_type,
                state,
            });
        }
        Ok(letters)
    }

    /// A message's attempts, by endpoint and number.
    pub fn attempts(&self, id: u128) -> Result<Vec<(String, u32, AttemptRecord)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ATTEMPTS)?;
        let mut out = Vec::new();
        for entry in table.range((id, "", 0u32)..(id.saturating_add(1), "", 0u32))? {
            let (key, value) = entry?;
            let (_, endpoint, n) = key.value();
            if let Ok(record) = serde_json::from_slice(value.value()) {
                out.push((endpoint.to_owned(), n, record));
            }
        }
        Ok(out)
    }

    /// Delivery counts, by endpoint.
    pub fn counts(&self) -> Result<BTreeMap<String, Counts>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(COUNTS)?;
        let mut counts = BTreeMap::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let (delivered, failed_attempts, dead_lettered) = value.value();
            counts.insert(
                key.value().to_owned(),
                Counts {
                    delivered,
                    failed_attempts,
                    dead_lettered,
                },
            );
        }
        Ok(counts)
    }

    /// Dead letters kept, by endpoint.
    pub fn dead_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let dead = txn.open_table(DEAD)?;
        let mut counts = BTreeMap::new();
        for entry in dead.iter()? {
            let (key, _) = entry?;
            *counts.entry(key.value().0.to_owned()).or_default() += 1;
        }
        Ok(counts)
    }

    /// The delivery state of `(id, endpoint)`, if the store has it.
    pub fn delivery(&self, id: u128, endpoint: &str) -> Result<Option<DeliveryState>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DELIVERIES)?;
        Ok(table.get((id, endpoint))?.map(|v| decode_state(v.value())))
    }
}

fn stopped() -> StoreError {
    StoreError::Failed("the store's writer has stopped".into())
}

fn recover(db: &Database) -> Result<Recovered, StoreError> {
    let txn = db.begin_read()?;
    let deliveries = txn.open_table(DELIVERIES)?;
    let mut recovered = Recovered::default();
    for entry in deliveries.iter()? {
        let (key, value) = entry?;
        let (id, endpoint) = key.value();
        let state = decode_state(value.value());
        if state.dead_at_ms.is_some() {
            *recovered.dead.entry(endpoint.to_owned()).or_default() += 1;
        } else {
            recovered.pending.push(Due {
                endpoint: endpoint.to_owned(),
                id,
                due_ms: state.next_at_ms,
                attempts: state.attempts,
            });
        }
    }
    Ok(recovered)
}

struct Writer {
    db: Arc<Database>,
    path: PathBuf,
    space: Space,
    attempts_cap: u64,
    retention: Retention,
}

/// What the writer knows of the room left under `max_bytes`, which the file must never pass.
///
/// redb grows its file by doubling it (up to 4 GiB) and shrinks it when its tail is free.
/// While the file is at most half the limit, a growth stays within it: there is room. Beyond
/// that the file may not grow any more, so the room is what its pages can take: the pages in
/// use are counted (`WriteTransaction::stats`, a walk of every tree: too slow for every
/// commit), and the bytes written since are tallied against the room that count found; when
/// they have used it up, or the store was found full and something has been removed since,
/// the pages are counted again (at most once a [`RECOUNT_EVERY`] while full). So the store
/// holds between about half and [`FULL_AT`] of the limit before it refuses, depending on
/// where the doubling left the file.
struct Space {
    max_bytes: u64,
    /// Room found at the last count.
    room: u64,
    /// Bytes written (as estimated) since the last count.
    written: u64,
    /// Whether anything was removed since the last count.
    freed: bool,
    /// When the last count found the store full.
    full_since: Option<Instant>,
}

impl Space {
    fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            room: 0,
            written: 0,
            freed: false,
            full_since: None,
        }
    }

    /// Whether new messages must be refused, counting the pages in use when needed.
    fn full(
        &mut self,
        file_len: u64,
        txn: &WriteTransaction,
    ) -> Result<Option<StoreError>, StoreError> {
        if file_len.saturating_mul(2) <= self.max_bytes {
            // The next growth stays within the limit; once the file is this short again
            // (shrunk), the last count is stale.
            (self.room, self.written, self.full_since) = (0, 0, None);
            return Ok(None);
        }
        if self.written < self.room {
            return Ok(None);
        }
        if let Some(since) = self.full_since
            && (!self.freed || since.elapsed() < RECOUNT_EVERY)
        {
            return Ok(Some(self.error(None)));
        }
        let stats = txn.stats()?;
        let used = stats.allocated_pages() * stats.page_size() as u64;
        let capacity = (file_len.min(self.max_bytes) as f64 * FULL_AT) as u64;
        self.room = capacity.saturating_sub(used);
        (self.written, self.freed) = (0, false);
        self.full_since = (self.room == 0).then(Instant::now);
        Ok(self.full_since.map(|_| self.error(Some(used))))
    }

    fn error(&self, used: Option<u64>) -> StoreError {
        let used = used.map_or(String::new(), |u| format!("{u} bytes in use, "));
        StoreError::Full(format!(
            "{used}the file may not grow past {} bytes",
            self.max_bytes
        ))
    }

    fn wrote(&mut self, bytes: u64) {
        self.written += bytes * PAGE_SLACK;
    }

    fn freed(&mut self, freed: bool) {
        self.freed |= freed;
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A reply to send once the batch's transaction has committed (or failed).
type Answer = Box<dyn FnOnce(&Result<(), StoreError>)>;

/// Answers `value` if the transaction commits, its error otherwise.
fn on_commit<T: Send + 'static>(reply: Reply<T>, value: T) -> Answer {
    Box::new(move |outcome| {
        let _ = reply.send(outcome.clone().map(|()| value));
    })
}

impl Writer {
    fn run(mut self, queue: mpsc::Receiver<Write>) {
        let mut unsynced = false;
        loop {
            let first = match queue.recv_timeout(SYNC_EVERY) {
                Ok(write) => write,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if unsynced {
                        match self.commit_empty() {
                            Ok(()) => unsynced = false,
                            Err(e) => tracing::warn!(error = %e, "webhook store sync failed"),
                        }
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(write) => batch.push(write),
                    Err(_) => break,
                }
            }
            let durable = unsynced
                || batch
                    .iter()
                    .any(|w| !matches!(w, Write::Attempt(_) | Write::Count(..)));
            match self.apply(batch, durable) {
                Ok(()) => unsynced = !durable,
                Err(e) => tracing::warn!(error = %e, "webhook store write failed"),
            }
        }
    }

    fn commit_empty(&self) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.commit()?;
        Ok(())
    }

    /// Applies a batch in one transaction; every waiting caller gets the commit's result.
    fn apply(&mut self, batch: Vec<Write>, durable: bool) -> Result<(), StoreError> {
        let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
        let file_len = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        let outcome = (|| -> Result<(), StoreError> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(if durable {
                Durability::Immediate
            } else {
                Durability::None
            })?;
            let full = if batch.iter().any(|w| matches!(w, Write::Accept(..))) {
                self.space.full(file_len, &txn)?
            } else {
                None
            };
            for write in batch {
                match write {
                    Write::Accept(messages, reply) => match &full {
                        Some(e) => {
                            let e = e.clone();
                            answers.push(Box::new(move |_| {
                                let _ = reply.send(Err(e));
                            }));
                        }
                        None => {
                            self.space.wrote(messages.iter().map(Pending::size).sum());
                            answers.push(on_commit(reply, accept(&txn, messages)?));
                        }
                    },
                    Write::Attempt(done) => {
                        self.space.wrote(done.record.size());
                        self.space.freed(record(&txn, done)?);
                    }
                    Write::Count(endpoint, delta) => add_counts(&txn, &endpoint, delta)?,
                    Write::Replay {
                        endpoint,
                        which,
                        now_ms,
                        reply,
                    } => answers.push(on_commit(reply, replay(&txn, &endpoint, which, now_ms)?)),
                    Write::Sweep { now_ms, reply } => {
                        let swept = sweep(&txn, now_ms, &self.retention)?;
                        self.space.freed(swept != SweepCounts::default());
                        answers.push(on_commit(reply, swept));
                    }
                    Write::Flush(reply) => answers.push(on_commit(reply, ())),
                }
            }
            self.space
                .freed(evict_oldest_attempts(&txn, self.attempts_cap)? > 0);
            txn.commit()?;
            Ok(())
        })();
        // After the commit: an accept is answered only once it is durable.
        for answer in answers {
            answer(&outcome);
        }
        outcome
    }
}

fn accept(txn: &WriteTransaction, messages: Vec<Pending>) -> Result<Vec<Accepted>, StoreError> {
    let mut stored = txn.open_table(MESSAGES)?;
    let mut deliveries = txn.open_table(DELIVERIES)?;
    let mut keys = txn.open_table(IDEMPOTENCY)?;
    let mut keys_by_id = txn.open_table(IDEMPOTENCY_BY_ID)?;
    let mut accepted = Vec::with_capacity(messages.len());
    for message in messages {
        if let Some(key) = &message.idempotency_key {
            if let Some(first) = keys.get(key.as_str())? {
                accepted.push(Accepted::Duplicate(first.value()));
                continue;
            }
            keys.insert(key.as_str(), message.id)?;
            keys_by_id.insert(message.id, key.as_str())?;
        }
        if !message.deliveries.is_empty() {
            stored.insert(
                message.id,
                encode_message(&message.event_type, &message.payload).as_slice(),
            )?;
            for (endpoint, due_ms) in &message.deliveries {
                let state = DeliveryState {
                    next_at_ms: *due_ms,
                    ..DeliveryState::default()
                };
                deliveries.insert(
                    (message.id, endpoint.as_str()),
                    encode_state(&state).as_slice(),
                )?;
            }
        }
        accepted.push(Accepted::New(message.id));
    }
    Ok(accepted)
}

/// Records an attempt; whether that removed anything (a delivered delivery and its message).
fn record(txn: &WriteTransaction, done: AttemptDone) -> Result<bool, StoreError> {
    let mut deliveries = txn.open_table(DELIVERIES)?;
    let endpoint = done.endpoint.as_str();
    // A delivery removed meanwhile (its dead letter swept) is not brought back.
    let Some(mut state) = deliveries
        .get((done.id, endpoint))?
        .map(|v| decode_state(v.value()))
    else {
        return Ok(false);
    };
    let mut attempts = txn.open_table(ATTEMPTS)?;
    attempts.insert(
        (done.id, endpoint, done.number),
        serde_json::to_vec(&done.record)
            .expect("attempt records serialise")
            .as_slice(),
    )?;
    state.attempts = done.number;
    state.last_error = done.record.error.clone();
    add_counts(txn, endpoint, Counts::of(&done.after))?;
    let delivered = done.after == AfterAttempt::Delivered;
    match done.after {
        AfterAttempt::Delivered => {
            deliveries.remove((done.id, endpoint))?;
            let others = deliveries
                .range((done.id, "")..(done.id.saturating_add(1), ""))?
                .next()
                .is_some();
            if !others {
                txn.open_table(MESSAGES)?.remove(done.id)?;
            }
        }
        AfterAttempt::Retry { at_ms } => {
            state.next_at_ms = at_ms;
            deliveries.insert((done.id, endpoint), encode_state(&state).as_slice())?;
        }
        AfterAttempt::Dead { reason } => {
            state.dead_at_ms = Some(done.record.at_ms);
            state.last_error = Some(reason);
            deliveries.insert((done.id, endpoint), encode_state(&state).as_slice())?;
            txn.open_table(DEAD)?.insert((endpoint, done.id), ())?;
        }
    }
    Ok(delivered)
}

/// Removes the oldest attempt records beyond `cap`, a tenth of it at a time so the cost is
/// spread; how many it removed.
fn evict_oldest_attempts(txn: &WriteTransaction, cap: u64) -> Result<u64, StoreError> {
    let mut attempts = txn.open_table(ATTEMPTS)?;
    let len = attempts.len()?;
    if len <= cap + cap / 10 {
        return Ok(0);
    }
    let excess = len - cap;
    for _ in 0..excess {
        attempts.pop_first()?;
    }
    Ok(excess)
}

fn add_counts(txn: &WriteTransaction, endpoint: &str, delta: Counts) -> Result<(), StoreError> {
    let mut table = txn.open_table(COUNTS)?;
    let (delivered, failed, dead) = table.get(endpoint)?.map_or((0, 0, 0), |v| v.value());
    table.insert(
        endpoint,
        (
            delivered + delta.delivered,
            failed + delta.failed_attempts,
            dead + delta.dead_lettered,
        ),
    )?;
    Ok(())
}

fn replay(
    txn: &WriteTransaction,
    endpoint: &str,
    which: ReplaySelector,
    now_ms: u64,
) -> Result<Vec<u128>, StoreError> {
    let mut dead = txn.open_table(DEAD)?;
    let (from, to) = match which {
        ReplaySelector::One(id) => (id, id),
        ReplaySelector::Since { unix_ms } => (first_id_at(unix_ms), u128::MAX),
    };
    let ids: Vec<u128> = dead
        .range((endpoint, from)..=(endpoint, to))?
        .map(|e| e.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    let mut deliveries = txn.open_table(DELIVERIES)?;
    for &id in &ids {
        dead.remove((endpoint, id))?;
        let state = DeliveryState {
            attempts: 0,
            next_at_ms: now_ms,
            dead_at_ms: None,
            last_error: None,
        };
        deliveries.insert((id, endpoint), encode_state(&state).as_slice())?;
    }
    Ok(ids)
}

fn sweep(
    txn: &WriteTransaction,
    now_ms: u64,
    retention: &Retention,
) -> Result<SweepCounts, StoreError> {
    let cutoff = |keep: Duration| first_id_at(now_ms.saturating_sub(keep.as_millis() as u64));
    let mut counts = SweepCounts::default();

    let mut attempts = txn.open_table(ATTEMPTS)?;
    let old_attempts = cutoff(retention.attempts);
    attempts.retain_in(..(old_attempts, "", 0u32), |_, _| {
        counts.attempts += 1;
        false
    })?;

    let mut keys = txn.open_table(IDEMPOTENCY)?;
    let mut keys_by_id = txn.open_table(IDEMPOTENCY_BY_ID)?;
    let expired: Vec<(u128, String)> = keys_by_id
        .range(..cutoff(retention.idempotency))?
        .map(|e| e.map(|(id, key)| (id.value(), key.value().to_owned())))
        .collect::<Result<_, _>>()?;
    for (id, key) in expired {
        keys_by_id.remove(id)?;
        keys.remove(key.as_str())?;
        counts.idempotency_keys += 1;
    }

    let mut dead = txn.open_table(DEAD)?;
    let old_dead = cutoff(retention.dead_letters);
    let expired: Vec<(String, u128)> = dead
        .iter()?
        .filter_map(|e| {
            e.map(|(k, _)| {
                let (endpoint, id) = k.value();
                (id < old_dead).then(|| (endpoint.to_owned(), id))
            })
            .transpose()
        })
        .collect::<Result<_, _>>()?;
    let mut deliveries = txn.open_table(DELIVERIES)?;
    let mut messages = txn.open_table(MESSAGES)?;
    for (endpoint, id) in expired {
        dead.remove((endpoint.as_str(), id))?;
        deliveries.remove((id, endpoint.as_str()))?;
        if deliveries
            .range((id, "")..(id.saturating_add(1), ""))?
            .next()
            .is_none()
        {
            messages.remove(id)?;
        }
        counts.dead_letters += 1;
    }
    Ok(counts)
}

fn encode_message(event_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + event_type.len() + payload.len());
    out.extend_from_slice(&(event_type.len() as u16).to_le_bytes());
    out.extend_from_slice(event_type.as_bytes());
    out.extend_from_slice(payload);
    out
}

fn decode_message(bytes: &[u8]) -> StoredMessage {
    let len = bytes
        .get(..2)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let event_type = bytes.get(2..2 + len).unwrap_or_default();
    StoredMessage {
        event_type: String::from_utf8_lossy(event_type).into_owned(),
        payload: bytes.get(2 + len..).unwrap_or_default().to_vec(),
    }
}

fn encode_state(state: &DeliveryState) -> Vec<u8> {
    serde_json::to_vec(state).expect("delivery states serialise")
}

fn decode_state(bytes: &[u8]) -> DeliveryState {
    serde_json::from_slice(bytes).unwrap_or_default()
}

/// The acceptance time of a message, from its id.
pub fn accepted_at_ms(id: u128) -> u64 {
    id_time_ms(id)
}
