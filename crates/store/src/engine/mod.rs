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

#[cfg(test)]
pub(crate) mod checks;
pub(crate) mod fleet;
mod reads;
mod writes;

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

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
    type Backend: Backend;

    fn engine(&self) -> &Engine<Self::Backend>;
}

/// The engine over one backend.
pub(crate) struct Engine<B: Backend> {
    pub(crate) backend: B,
    writer: Mutex<B::Writer>,
    queue: Mutex<Queue>,
    /// Batch sizes and commit latencies, for the metrics.
    pub(crate) stats: Arc<WriterStats>,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<(Op, Arc<Slot>)>,
    /// A leader is committing (or has been handed the lead).
    leading: bool,
}

/// Where a queued caller waits for its result.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
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
    fn set(&self, s: SlotState) {
        *lock(&self.state) = s;
        self.ready.notify_one();
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

impl<B: Backend> Engine<B> {
    pub(crate) fn new(backend: B, writer: B::Writer) -> Self {
        Self {
            backend,
            writer: Mutex::new(writer),
            queue: Mutex::new(Queue::default()),
            stats: Arc::new(WriterStats::default()),
        }
    }

    /// The write connection, for a backend's own use (closing it).
    pub(crate) fn writer(&self) -> MutexGuard<'_, B::Writer> {
        lock(&self.writer)
    }

    /// Queue `op`, and lead the commit or wait for it; answers once the op is durable or refused.
    pub(crate) fn submit(&self, op: Op) -> Result<Done, StoreError> {
        let slot = Arc::new(Slot::default());
        let lead = {
            let mut q = lock(&self.queue);
            q.pending.push_back((op, Arc::clone(&slot)));
            !std::mem::replace(&mut q.leading, true)
        };
        if !lead {
            match slot.wait() {
                SlotState::Done(r) => return r,
                SlotState::Lead => {}
                SlotState::Waiting => return Err(StoreError::Database("a store write lost its place".into())),
            }
        }
        // This caller's op is first in the queue: the batch led now carries it.
        self.lead();
        match slot.wait() {
            SlotState::Done(r) => r,
            _ => Err(StoreError::Database("a store write was left out of its commit".into())),
        }
    }

    /// Commit the first [`MAX_BATCH`] queued ops, answer them, pass the lead on.
    fn lead(&self) {
        let (ops, slots): (Vec<Op>, Vec<Arc<Slot>>) = {
            let mut q = lock(&self.queue);
            let n = q.pending.len().min(MAX_BATCH);
            q.pending.drain(..n).unzip()
        };
        let mut handoff = Handoff { queue: &self.queue, slots };
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

/// Answers what a leader left unanswered (it panicked) and passes the lead
/// to the first caller still queued, or ends it.
struct Handoff<'a> {
    queue: &'a Mutex<Queue>,
    slots: Vec<Arc<Slot>>,
}

impl Drop for Handoff<'_> {
    fn drop(&mut self) {
        for slot in self.slots.drain(..) {
            slot.set(SlotState::Done(Err(StoreError::Database("a store write panicked".into()))));
        }
        let mut q = lock(self.queue);
        match q.pending.front() {
            Some((_, next)) => next.set(SlotState::Lead),
            None => q.leading = false,
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
    for (i, op) in ops.iter().enumerate() {
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

    /// The first caller leads; the callers that queue while it commits are
    /// committed together, in one transaction, by the first of them.
    #[test]
    fn callers_queued_behind_a_commit_are_committed_in_one_transaction_by_the_next_leader() {
        let (begins, rows) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
        let (open, gate) = mpsc::channel();
        let writer = Counting { begins: Arc::clone(&begins), rows: Arc::clone(&rows), gate: Some(gate) };
        let engine = Engine::new(NoReads, writer);
        let results = std::thread::scope(|sc| {
            let first = sc.spawn(|| engine.submit(Op::Audit(ev())));
            while !lock(&engine.queue).pending.is_empty() {
                std::thread::yield_now();
            }
            let rest: Vec<_> = (0..20).map(|_| sc.spawn(|| engine.submit(Op::Audit(ev())))).collect();
            while lock(&engine.queue).pending.len() < 20 {
                std::thread::yield_now();
            }
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
}
