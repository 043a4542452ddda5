//! The store engine: every rule of the store, once, over both backends.
//!
//! The engine owns the group commit (with a commit leader, below), the
//! dispatch of each write [`Op`], the preconditions, the birth, quota and flag
//! rules, sync application, device revocation, the audit chain (append and
//! verify) and every SQL statement, which both databases accept once a
//! backend has put them in its dialect ([`Sql`]). A backend keeps only what
//! differs between databases: its connections, migrations, dialect, value
//! mapping, error classification, and how a write transaction starts and
//! ends ([`Writer`]: SQLite's `BEGIN IMMEDIATE` write lock, PostgreSQL's lock
//! on the audit head row).
//!
//! # Group commit with a commit leader
//!
//! A write is queued; the first caller that finds no commit in progress
//! becomes the leader: it takes the queue (up to [`MAX_BATCH`] operations,
//! its own first), runs each operation in its own savepoint inside one
//! transaction, commits once (one fsync or WAL flush), hands every waiter its
//! result and wakes it, and passes the lead to the first caller still queued.
//! A caller alone commits its own write on its own thread: no hand-off to a
//! writer thread and back. An operation that fails is rolled back to its
//! savepoint and gets its own error; the others in its batch are unaffected.
//! (Savepoints are taken only once an operation failed after it changed
//! something: [`writes::Isolation`].) A group of births alone is judged on
//! two reads and written in multi-row statements (`bulk`).
//!
//! # Queued writes
//!
//! A caller that must not hold a thread while its commit runs (a server's
//! request, between its signature and its answer) queues its write instead
//! ([`Engine::queue`]) and gets a [`Recording`]: a future, resolved when the
//! commit that carries the write has answered. A caller that finds no commit
//! under way commits its write at once, on its own thread; after that, a
//! leader passes the lead to a caller waiting on a thread when there is one
//! (that caller is blocked anyway), else to the engine's commit thread,
//! started with the first queued write. The thread that signed a request is
//! free for the next request as soon as the write is queued, so a group
//! commit takes every write in flight, not one per blocked thread.

mod bulk;
#[cfg(test)]
pub(crate) mod checks;
pub(crate) mod fleet;
mod reads;
mod writes;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};

use crate::ops::{Done, Op};
use crate::{StoreError, WriterStats};

/// Most operations committed in one transaction.
pub(crate) const MAX_BATCH: usize = 512;

/// A statement's argument.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
    Null,
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(s: &'a str) -> Self {
        Arg::Text(s)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(s: &'a String) -> Self {
        Arg::Text(s)
    }
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl<'a, T: Into<Arg<'a>>> From<Option<T>> for Arg<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Arg::Null, Into::into)
    }
}

/// A column's value as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// One row as read: its columns in order, taken out one by one.
#[derive(Debug)]
pub(crate) struct Row(pub(crate) Vec<Value>);

impl Row {
    fn take(&mut self, i: usize) -> Result<Value, StoreError> {
        self.0
            .get_mut(i)
            .map(|v| std::mem::replace(v, Value::Null))
            .ok_or_else(|| StoreError::Database(format!("column {i} is missing")))
    }

    fn mismatch(i: usize, want: &str, got: &Value) -> StoreError {
        StoreError::Database(format!("column {i}: expected {want}, found {got:?}"))
    }

    pub(crate) fn opt_int(&mut self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.take(i)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(v)),
            v => Err(Self::mismatch(i, "an integer", &v)),
        }
    }

    pub(crate) fn int(&mut self, i: usize) -> Result<i64, StoreError> {
        self.opt_int(i)?.ok_or_else(|| Self::mismatch(i, "an integer", &Value::Null))
    }

    /// A count or other non-negative integer (a negative one is a damaged
    /// row, refused, not read as 0).
    pub(crate) fn count(&mut self, i: usize) -> Result<u64, StoreError> {
        let v = self.int(i)?;
        u64::try_from(v).map_err(|_| Self::mismatch(i, "a non-negative integer", &Value::Int(v)))
    }

    pub(crate) fn opt_text(&mut self, i: usize) -> Result<Option<String>, StoreError> {
        match self.take(i)? {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v)),
            v => Err(Self::mismatch(i, "text", &v)),
        }
    }

    pub(crate) fn text(&mut self, i: usize) -> Result<String, StoreError> {
        self.opt_text(i)?.ok_or_else(|| Self::mismatch(i, "text", &Value::Null))
    }

    pub(crate) fn blob(&mut self, i: usize) -> Result<Vec<u8>, StoreError> {
        match self.take(i)? {
            Value::Blob(v) => Ok(v),
            v => Err(Self::mismatch(i, "bytes", &v)),
        }
    }
}

/// A statement failed.
#[derive(Debug)]
pub(crate) enum SqlError {
    /// A row with this key exists already (the backend's unique constraint).
    Conflict(String),
    /// Anything else, as the store reports it.
    Failed(StoreError),
}

impl SqlError {
    /// What the database said.
    pub(crate) fn detail(&self) -> String {
        match self {
            SqlError::Conflict(m) | SqlError::Failed(StoreError::Database(m)) => m.clone(),
            SqlError::Failed(e) => e.to_string(),
        }
    }
}

impl From<SqlError> for StoreError {
    fn from(e: SqlError) -> Self {
        match e {
            SqlError::Conflict(m) => StoreError::Database(m),
            SqlError::Failed(e) => e,
        }
    }
}

/// One connection. Statements are written once, for both databases: `$1`,
/// `$2`, ... for arguments, `{c}` where a text ordering must be bytewise
/// (PostgreSQL: `COLLATE "C"`), `{lock}` after a `SELECT` whose rows the
/// transaction must lock (PostgreSQL: `FOR UPDATE`), `{key}` for the column a
/// limited listing sorts on before it reads the rows (SQLite: `rowid`).
pub(crate) trait Sql {
    /// Run a statement and read every row it answers.
    fn query(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, SqlError>;
    /// Run a statement; answers how many rows it changed.
    fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, SqlError>;
}

/// What the engine asks of a connection, on top of [`Sql`].
pub(crate) trait SqlExt: Sql {
    /// The first row, if any.
    fn opt(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    fn all(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        Ok(self.query(sql, args)?)
    }

    /// Whether the statement answers a row.
    fn exists(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<bool, StoreError> {
        Ok(!self.query(sql, args)?.is_empty())
    }

    fn run(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        Ok(self.exec(sql, args)?)
    }

    /// Run an insert whose unique constraint means `conflict`.
    fn insert(&mut self, sql: &str, args: &[Arg<'_>], conflict: impl FnOnce() -> StoreError) -> Result<(), StoreError> {
        match self.exec(sql, args) {
            Ok(_) => Ok(()),
            Err(SqlError::Conflict(_)) => Err(conflict()),
            Err(SqlError::Failed(e)) => Err(e),
        }
    }
}

impl<T: Sql + ?Sized> SqlExt for T {}

/// The audit chain's head: taken when a write transaction begins (under the
/// backend's write lock nobody else can append), then advanced in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) seq: i64,
    pub(crate) hash: String,
}

/// The write connection: how a backend begins and ends the one transaction
/// of a group commit.
pub(crate) trait Writer: Sql + Send {
    /// Begin a write transaction that excludes every other writer (of any
    /// process or node) until it ends, read the audit chain's head, and
    /// (with `savepoint`) open the savepoint `op`.
    fn begin(&mut self, savepoint: bool) -> Result<Head, StoreError>;

    /// After one operation: `keep` its writes (release `op` and open it
    /// again for the next one) or undo them (roll back to `op`, which stays open).
    fn savepoint(&mut self, keep: bool) -> Result<(), StoreError>;

    /// Commit, with the chain's head moved from `start` to `end`.
    fn commit(&mut self, start: &Head, end: &Head) -> Result<(), StoreError>;

    /// Abandon the transaction (nothing of it is written).
    fn rollback(&mut self);

    /// Whether a group's multi-row writes go in statements of their exact
    /// size (up to 64 rows each), rather than in chunks of powers of two.
    /// Over a network each statement is a round trip, made while the group's
    /// transaction holds the lock every writer takes (the connection then
    /// prepares up to 64 shapes per table, each once); a database in the
    /// process gains little from fewer statements, and keeps to a few shapes
    /// prepared.
    fn exact_chunks(&self) -> bool {
        false
    }
}

/// A database: its reads, and its write connection.
pub(crate) trait Backend: Send + Sync {
    /// The write connection.
    type Writer: Writer;

    /// Run `f` on a read connection (it sees every committed write).
    fn read<T>(&self, f: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>) -> Result<T, StoreError>;
}

/// What a store is: a backend and the engine's commit queue. The store types
/// ([`crate::sqlite::SqliteStore`], [`crate::postgres::PgStore`]) hold one and
/// get every role of [`crate::Store`] from it.
pub(crate) trait HasEngine: Send + Sync {
    type Backend: Backend + 'static;

    fn engine(&self) -> &Arc<Engine<Self::Backend>>;
}

/// The engine over one backend.
pub(crate) struct Engine<B: Backend> {
    pub(crate) backend: B,
    writer: Mutex<B::Writer>,
    queue: Mutex<Queue>,
    /// Batch sizes and commit latencies, for the metrics.
    pub(crate) stats: Arc<WriterStats>,
    /// The commit thread's call to lead (queued writes).
    call: Arc<Call>,
    /// Whether the commit thread runs (set when the first write is queued).
    committer: OnceLock<bool>,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<(Op, Arc<Slot>)>,
    /// A leader is committing (or has been handed the lead).
    leading: bool,
}

/// Where a queued caller waits for its result.
struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
    /// The task to wake when the result is in (a [`Recording`] polled).
    waker: Mutex<Option<Waker>>,
    /// A thread waits on it, and may be handed the lead; else it is a [`Recording`]'s.
    thread: bool,
}

/// The commit thread's call: lead the queued writes, or stop.
#[derive(Default)]
struct Call {
    state: Mutex<CallState>,
    ready: Condvar,
}

#[derive(Default)]
struct CallState {
    lead: bool,
    stop: bool,
}

impl Call {
    fn set(&self, f: impl FnOnce(&mut CallState)) {
        f(&mut lock(&self.state));
        self.ready.notify_one();
    }

    /// Wait for the call to lead (`true`) or to stop (`false`).
    fn wait(&self) -> bool {
        let mut st = lock(&self.state);
        loop {
            if st.stop {
                return false;
            }
            if std::mem::take(&mut st.lead) {
                return true;
            }
            st = self.ready.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

#[derive(Default)]
enum SlotState {
    #[default]
    Waiting,
    /// This caller leads the next commit.
    Lead,
    Done(Result<Done, StoreError>),
}

/// A lock whose holder cannot have left its data half-changed: the engine
/// holds these locks only to move values in and out.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Slot {
    fn new(thread: bool) -> Arc<Self> {
        Arc::new(Self { state: Mutex::new(SlotState::Waiting), ready: Condvar::new(), waker: Mutex::new(None), thread })
    }

    fn set(&self, s: SlotState) {
        *lock(&self.state) = s;
        self.ready.notify_one();
        if let Some(w) = lock(&self.waker).take() {
            w.wake();
        }
    }

    /// Wait until the result is in, or this caller is to lead.
    fn wait(&self) -> SlotState {
        let mut st = lock(&self.state);
        loop {
            match std::mem::take(&mut *st) {
                SlotState::Waiting => st = self.ready.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner),
                other => return other,
            }
        }
    }
}

/// A write queued by `Engine::queue`: resolves once the group commit that
/// carries it has answered (durable when `Ok`, nothing of it written when
/// `Err`). Dropped unawaited, the write is committed all the same.
pub struct Recording(Arc<Slot>);

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording").finish_non_exhaustive()
    }
}

impl Recording {
    /// A write answered already (committed on the caller's thread, or refused before it was queued).
    pub fn answered(r: Result<(), StoreError>) -> Self {
        let slot = Slot::new(false);
        slot.set(SlotState::Done(r.map(|()| Done::Unit)));
        Self(slot)
    }

    /// Block the calling thread until the commit answers.
    pub fn wait(&mut self) -> Result<(), StoreError> {
        match self.0.wait() {
            SlotState::Done(r) => r.map(|_| ()),
            _ => Err(StoreError::Database("a queued store write was handed the lead".into())),
        }
    }
}

impl Future for Recording {
    type Output = Result<(), StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The waker first, then the state: a result set in between wakes this task.
        *lock(&self.0.waker) = Some(cx.waker().clone());
        let mut st = lock(&self.0.state);
        match std::mem::take(&mut *st) {
            SlotState::Done(r) => Poll::Ready(r.map(|_| ())),
            SlotState::Waiting => Poll::Pending,
            SlotState::Lead => {
                Poll::Ready(Err(StoreError::Database("a queued store write was handed the lead".into())))
            }
        }
    }
}

impl<B: Backend> Drop for Engine<B> {
    fn drop(&mut self) {
        self.call.set(|c| c.stop = true);
    }
}

impl<B: Backend + 'static> Engine<B> {
    pub(crate) fn new(backend: B, writer: B::Writer) -> Arc<Self> {
        Arc::new(Self {
            backend,
            writer: Mutex::new(writer),
            queue: Mutex::new(Queue::default()),
            stats: Arc::new(WriterStats::default()),
            call: Arc::new(Call::default()),
            committer: OnceLock::new(),
        })
    }

    /// Queue `op` for the next group commit, without waiting for it: the
    /// [`Recording`] resolves when its commit answers.
    pub(crate) fn queue(self: &Arc<Self>, op: Op) -> Recording {
        if !self.start_committer() {
            // No commit thread (the system refused one): committed on this thread.
            return Recording::answered(self.submit(op).map(|_| ()));
        }
        // With no commit under way, this caller commits at once, on its own
        // thread (a hand-off to the commit thread would cost two context
        // switches for one write); it passes the lead on after that one batch.
        Recording(self.enqueue(op, false))
    }

    /// Start the commit thread, once (it leads when called to, and ends with
    /// the engine); whether it runs.
    fn start_committer(self: &Arc<Self>) -> bool {
        *self.committer.get_or_init(|| {
            let (engine, call) = (Arc::downgrade(self), Arc::clone(&self.call));
            std::thread::Builder::new()
                .name("iotpki-commit".into())
                .spawn(move || commit_thread(&engine, &call))
                .is_ok()
        })
    }
}

/// The commit thread: leads whenever called to, while the engine lives. A
/// panic in a commit is answered by the leader's [`Handoff`] (and leaves the
/// write connection poisoned: every later write is refused), not the end of
/// the thread.
fn commit_thread<B: Backend + 'static>(engine: &Weak<Engine<B>>, call: &Call) {
    while call.wait() {
        let Some(e) = engine.upgrade() else { return };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| e.lead()));
    }
}

impl<B: Backend> Engine<B> {
    /// The write connection, for a backend's own use (closing it).
    pub(crate) fn writer(&self) -> MutexGuard<'_, B::Writer> {
        lock(&self.writer)
    }

    /// Queue `op`, and lead the commit or wait for it; answers once the op is durable or refused.
    pub(crate) fn submit(&self, op: Op) -> Result<Done, StoreError> {
        let slot = self.enqueue(op, true);
        // Queued writes ahead of this one may fill the batch led: then the
        // lead comes back to this caller (the first thread queued).
        loop {
            match slot.wait() {
                SlotState::Done(r) => return r,
                SlotState::Lead => self.lead(),
                SlotState::Waiting => return Err(StoreError::Database("a store write lost its place".into())),
            }
        }
    }

    /// Queue `op` (waited for on a `thread`, or a [`Recording`]'s) and, if
    /// no commit is under way, lead one now.
    fn enqueue(&self, op: Op, thread: bool) -> Arc<Slot> {
        let slot = Slot::new(thread);
        let lead = {
            let mut q = lock(&self.queue);
            q.pending.push_back((op, Arc::clone(&slot)));
            !std::mem::replace(&mut q.leading, true)
        };
        if lead {
            self.lead();
        }
        slot
    }

    /// Commit the first [`MAX_BATCH`] queued ops, answer them, pass the lead on.
    fn lead(&self) {
        let (ops, slots): (Vec<Op>, Vec<Arc<Slot>>) = {
            let mut q = lock(&self.queue);
            let n = q.pending.len().min(MAX_BATCH);
            q.pending.drain(..n).unzip()
        };
        let mut handoff = Handoff { queue: &self.queue, call: &self.call, slots };
        let results = match self.writer.lock() {
            Ok(mut w) => {
                self.stats.batch_size.observe(ops.len() as f64);
                run_batch(&mut *w, &ops, Some(&self.stats))
            }
            // A leader panicked in the middle of a transaction: the connection's
            // state is unknown, so this store writes no more.
            Err(_) => ops
                .iter()
                .map(|_| Err(StoreError::Database("a store write panicked; reopen the store".into())))
                .collect(),
        };
        for (slot, r) in handoff.slots.drain(..).zip(results) {
            slot.set(SlotState::Done(r));
        }
    }
}

/// Answers what a leader left unanswered (it panicked) and passes the lead:
/// to the first caller still queued on a thread, else (only queued writes
/// left) to the commit thread, else ends it.
struct Handoff<'a> {
    queue: &'a Mutex<Queue>,
    call: &'a Call,
    slots: Vec<Arc<Slot>>,
}

impl Drop for Handoff<'_> {
    fn drop(&mut self) {
        for slot in self.slots.drain(..) {
            slot.set(SlotState::Done(Err(StoreError::Database("a store write panicked".into()))));
        }
        let mut q = lock(self.queue);
        if let Some((_, next)) = q.pending.iter().find(|(_, s)| s.thread) {
            next.set(SlotState::Lead);
        } else if q.pending.is_empty() {
            q.leading = false;
        } else {
            self.call.set(|c| c.lead = true);
        }
    }
}

/// Run `ops` in one transaction, without savepoints first; when an
/// operation fails after it changed something, the transaction is abandoned
/// and the batch runs again with a savepoint per operation
/// ([`writes::Isolation`]). With `stats`, the commit's time (the audit rows
/// and `COMMIT`: the fsync or WAL flush) is counted there.
pub(crate) fn run_batch(w: &mut dyn Writer, ops: &[Op], stats: Option<&WriterStats>) -> Vec<Result<Done, StoreError>> {
    match run_batch_as(w, ops, stats, writes::Isolation::Optimistic) {
        Some(results) => results,
        None => run_batch_as(w, ops, stats, writes::Isolation::Savepoints).unwrap_or_else(|| {
            fail_all(ops, StoreError::Database("a batch asked to be run again with savepoints".into()))
        }),
    }
}

fn fail_all(ops: &[Op], e: StoreError) -> Vec<Result<Done, StoreError>> {
    ops.iter().map(|_| Err(e.clone())).collect()
}

/// [`run_batch`] with `isolation`; `None`: run it again with savepoints.
fn run_batch_as(
    w: &mut dyn Writer,
    ops: &[Op],
    stats: Option<&WriterStats>,
    isolation: writes::Isolation,
) -> Option<Vec<Result<Done, StoreError>>> {
    let start = match w.begin(isolation == writes::Isolation::Savepoints) {
        Ok(h) => h,
        Err(e) => {
            w.rollback();
            return Some(fail_all(ops, e));
        }
    };
    let mut tx = writes::Tx::new(w, start.clone(), isolation);
    let mut results = Vec::with_capacity(ops.len());
    // A group of births alone, judged and written in bulk (`bulk`); a
    // failure there is the one-by-one run's to sort out.
    let births = if isolation == writes::Isolation::Optimistic { bulk::births(ops) } else { None };
    if let Some(births) = births {
        match tx.births_in_bulk(&births) {
            Ok(r) => results = r,
            Err(_) => {
                tx.abandon();
                return None;
            }
        }
    }
    for (i, op) in ops.iter().enumerate().skip(results.len()) {
        match tx.run_one(op, i + 1 == ops.len()) {
            Ok(r) => results.push(r),
            Err(writes::Abort::Redo) => {
                tx.abandon();
                return None;
            }
            Err(writes::Abort::Failed(e)) => {
                tx.abandon();
                return Some(fail_all(ops, e));
            }
        }
    }
    let committing = std::time::Instant::now();
    let r = tx.finish(&start);
    if let Some(s) = stats {
        s.commit_seconds.observe_duration(committing.elapsed());
    }
    if let Err(e) = r {
        return Some(fail_all(ops, e));
    }
    Some(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AuditEvent;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    #[test]
    fn a_negative_count_is_a_damaged_row_not_zero() {
        let mut r = Row(vec![Value::Int(-1), Value::Int(7), Value::Null]);
        let e = r.count(0).unwrap_err();
        assert!(e.to_string().contains("non-negative"), "{e}");
        assert_eq!(r.count(1).unwrap(), 7);
        assert!(r.count(2).is_err(), "a missing count is not 0 either");
    }

    /// A database that only counts: transactions begun, and audit rows per INSERT.
    struct Counting {
        begins: Arc<AtomicUsize>,
        rows: Arc<Mutex<Vec<usize>>>,
        /// The first transaction waits for this.
        gate: Option<mpsc::Receiver<()>>,
        /// The name of the thread each transaction began on.
        on: Threads,
    }

    impl Counting {
        fn new(gate: Option<mpsc::Receiver<()>>) -> Self {
            Self { begins: Arc::default(), rows: Arc::default(), gate, on: Arc::default() }
        }
    }

    impl Sql for Counting {
        fn query(&mut self, _: &str, _: &[Arg<'_>]) -> Result<Vec<Row>, SqlError> {
            Ok(Vec::new())
        }

        fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, SqlError> {
            assert!(sql.starts_with("INSERT INTO audit"), "{sql}");
            lock(&self.rows).push(args.len() / 8);
            Ok(1)
        }
    }

    impl Writer for Counting {
        fn begin(&mut self, _savepoint: bool) -> Result<Head, StoreError> {
            if let Some(gate) = self.gate.take() {
                gate.recv().unwrap();
            }
            lock(&self.on).push(std::thread::current().name().unwrap_or_default().to_string());
            self.begins.fetch_add(1, Ordering::SeqCst);
            Ok(Head { seq: 0, hash: crate::GENESIS_HASH.into() })
        }

        fn savepoint(&mut self, _: bool) -> Result<(), StoreError> {
            Ok(())
        }

        fn commit(&mut self, _: &Head, _: &Head) -> Result<(), StoreError> {
            Ok(())
        }

        fn rollback(&mut self) {}
    }

    struct NoReads;

    impl Backend for NoReads {
        type Writer = Counting;

        fn read<T>(&self, _: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>) -> Result<T, StoreError> {
            Err(StoreError::Closed)
        }
    }

    fn ev() -> AuditEvent {
        AuditEvent { at: 1, actor: "a".into(), action: "x".into(), target: String::new(), detail: String::new() }
    }

    /// Wait until the one write submitted has been taken by its leader: a
    /// commit is led and nothing is queued, read under one lock. An empty
    /// queue alone is also what comes before the write is queued at all; and
    /// writes queued before the leader takes its group would join it.
    fn wait_for_the_lead_to_take_its_own<B: Backend>(engine: &Engine<B>) {
        until(engine, "the leader to take its own write", |q| q.leading && q.pending.is_empty());
    }

    /// Wait until the queue is as `holds` says, read under its lock; a test
    /// whose threads never get there fails, after 30 s, rather than hang.
    fn until<B: Backend>(engine: &Engine<B>, what: &str, holds: impl Fn(&Queue) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !holds(&lock(&engine.queue)) {
            assert!(std::time::Instant::now() < deadline, "waited 30 s for {what}");
            std::thread::yield_now();
        }
    }

    /// The first caller leads; the callers that queue while it commits are
    /// committed together, in one transaction, by the first of them.
    #[test]
    fn callers_queued_behind_a_commit_are_committed_in_one_transaction_by_the_next_leader() {
        let (open, gate) = mpsc::channel();
        let writer = Counting::new(Some(gate));
        let (begins, rows) = (Arc::clone(&writer.begins), Arc::clone(&writer.rows));
        let engine = Engine::new(NoReads, writer);
        let results = std::thread::scope(|sc| {
            // Dropped if this thread panics, so that the leader's wait ends too.
            let open = open;
            let first = sc.spawn(|| engine.submit(Op::Audit(ev())));
            wait_for_the_lead_to_take_its_own(&engine);
            let rest: Vec<_> = (0..20).map(|_| sc.spawn(|| engine.submit(Op::Audit(ev())))).collect();
            until(&engine, "20 writes queued", |q| q.pending.len() >= 20);
            open.send(()).unwrap();
            let mut all = vec![first.join().unwrap()];
            all.extend(rest.into_iter().map(|h| h.join().unwrap()));
            all
        });
        assert!(results.iter().all(|r| *r == Ok(Done::Unit)), "{results:?}");
        assert_eq!(begins.load(Ordering::SeqCst), 2, "one transaction for the leader, one for the 20 queued");
        assert_eq!(*lock(&rows), vec![1, 20], "the group's audit entries in one INSERT");
        assert!(!lock(&engine.queue).leading, "the lead ends with the queue");
    }

    /// Run `f` to its end on this thread (a [`Recording`] polled as an async task is).
    fn block_on<F: Future>(f: F) -> F::Output {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            match f.as_mut().poll(&mut cx) {
                Poll::Ready(v) => return v,
                Poll::Pending => std::thread::park(),
            }
        }
    }

    fn pending(r: &mut Recording) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(r).poll(&mut cx).is_pending()
    }

    /// The names of the threads transactions began on.
    type Threads = Arc<Mutex<Vec<String>>>;

    /// A first write leads and is held in its transaction; `n` writes are queued meanwhile.
    fn held_with_queued(n: usize) -> (Arc<Engine<NoReads>>, mpsc::Sender<()>, Vec<Recording>, Threads) {
        let (open, gate) = mpsc::channel();
        let writer = Counting::new(Some(gate));
        let on = Arc::clone(&writer.on);
        let engine = Engine::new(NoReads, writer);
        let first = Arc::clone(&engine);
        std::thread::Builder::new().name("first".into()).spawn(move || first.submit(Op::Audit(ev()))).unwrap();
        wait_for_the_lead_to_take_its_own(&engine);
        let queued = (0..n).map(|_| engine.queue(Op::Audit(ev()))).collect();
        (engine, open, queued, on)
    }

    /// Writes queued while a commit runs are not waited for on a thread:
    /// once that commit ends, the commit thread commits them, together, and
    /// each recording resolves then, not before.
    #[test]
    fn queued_writes_resolve_once_the_commit_thread_has_committed_them_together() {
        let (engine, open, mut queued, on) = held_with_queued(10);
        assert!(queued.iter_mut().all(pending), "nothing is answered before its commit");
        open.send(()).unwrap();
        for r in queued {
            assert_eq!(block_on(r), Ok(()));
        }
        assert_eq!(
            *lock(&on),
            vec!["first", "iotpki-commit"],
            "the leader's own write, then the 10 in one transaction"
        );
        // The commit thread answers its writes, then gives up the lead.
        until(&engine, "the lead to end with the queue", |q| !q.leading);
    }

    /// A caller waiting on its thread behind queued writes is handed the
    /// lead (it is blocked anyway), and commits them with its own write.
    #[test]
    fn a_thread_waiting_behind_queued_writes_is_handed_the_lead() {
        let (engine, open, queued, on) = held_with_queued(5);
        let late = Arc::clone(&engine);
        let waiting =
            std::thread::Builder::new().name("waiting".into()).spawn(move || late.submit(Op::Audit(ev()))).unwrap();
        until(&engine, "6 writes queued", |q| q.pending.len() >= 6);
        open.send(()).unwrap();
        assert_eq!(waiting.join().unwrap(), Ok(Done::Unit));
        for mut r in queued {
            assert_eq!(r.wait(), Ok(()));
        }
        assert_eq!(*lock(&on), vec!["first", "waiting"], "the waiting thread led the queued writes and its own");
    }

    /// With no commit under way, a queued write is committed at once on the
    /// caller's thread: no hand-off to the commit thread for one write.
    #[test]
    fn with_no_commit_under_way_a_queued_write_is_committed_on_its_callers_thread() {
        let writer = Counting::new(None);
        let on = Arc::clone(&writer.on);
        let engine = Engine::new(NoReads, writer);
        let mut r = engine.queue(Op::Audit(ev()));
        assert!(!pending(&mut r), "answered when queue returns");
        assert_eq!(lock(&on).len(), 1);
        assert_ne!(lock(&on)[0], "iotpki-commit");
    }

    /// The commit thread holds the engine only while it commits: it ends
    /// once the engine is dropped.
    #[test]
    fn the_commit_thread_ends_with_its_engine() {
        let (engine, open, queued, _) = held_with_queued(3);
        open.send(()).unwrap();
        for mut r in queued {
            r.wait().unwrap();
        }
        let call = Arc::clone(&engine.call);
        assert_eq!(Arc::strong_count(&call), 3, "the engine, the commit thread and this test hold the call");
        drop(engine);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while Arc::strong_count(&call) > 1 {
            assert!(std::time::Instant::now() < until, "the commit thread did not end");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
