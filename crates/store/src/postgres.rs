//! The shared store: PostgreSQL, for several authority nodes on one database.
//!
//! Same contract as [`crate::sqlite::SqliteStore`], checked by the same
//! conformance suite. The design follows it closely:
//!
//! - **Writes** go to one writer thread per store, which owns one connection
//!   and commits in groups: it takes the first queued operation, drains what
//!   else is waiting (up to [`MAX_BATCH`]), runs each in its own SAVEPOINT
//!   inside one READ COMMITTED transaction, commits once (one WAL flush,
//!   `synchronous_commit = on`), and only then answers every caller. An
//!   operation whose precondition fails is rolled back to its savepoint and
//!   gets its own error; the others are unaffected.
//! - **Concurrency across processes: row locks, not SERIALIZABLE.** Every
//!   writing transaction first locks the one row of `audit_head` (the audit
//!   chain's head) with `SELECT ... FOR UPDATE`. Every write operation appends
//!   to the audit log, so this single lock orders all writers of all nodes one
//!   after the other, exactly like SQLite's write lock. Under READ COMMITTED
//!   each later statement takes a fresh snapshot, so once the lock is held every
//!   check (token unused, quota left, serial unborn, certificate good, sync
//!   position) sees every write committed before it, and no other writer can
//!   change what was checked before this transaction commits. The unique
//!   constraints (serials, births, tokens, delegations), `issued <= quota` and
//!   the `used_at IS NULL` guard stay as a second line. Why not SERIALIZABLE
//!   with retries: the audit chain is a single point every write touches, so
//!   optimistic transactions would conflict on nearly every concurrent write
//!   and retry storms would replace waiting; and a retried group would have to
//!   re-run operations whose callers cannot tell. One lock is simpler to reason
//!   about and gives the same order SQLite gives.
//! - **The audit chain** stays linear: its head is read under the lock, each
//!   append links to it, the head row is advanced in the same transaction, and
//!   `audit.seq` is a primary key (a fork would be refused, not stored).
//! - **Reads** use a small pool of connections (at most [`READERS`] open,
//!   idle ones kept): our own `Mutex` + `Condvar`, about forty lines, because
//!   the store needs nothing of a general pool (no async, no health checks
//!   beyond dropping a closed connection) and one dependency less is worth it.
//!   Reads run on the caller's thread and see every committed write.
//!   Text ties in listings sort bytewise (`COLLATE "C"`), as SQLite sorts
//!   them, whatever the database's locale.
//!
//! The `postgres` client is synchronous: it runs a small tokio runtime of its
//! own and must not be called on a thread that drives async tasks (the
//! server calls the authority through `spawn_blocking`). Dropping the store
//! closes its connections on threads of their own, so that the last handle
//! may be dropped anywhere.
//!
//! Connections are plain TCP (no TLS yet): keep the database on loopback, a
//! private network or behind a TLS tunnel; `sslmode=require` is refused with
//! that advice rather than failing in the handshake.
//!
//! Migrations (`migrations/postgres/`, one file per file of
//! `migrations/sqlite/`) are applied when the store is opened, each in its own
//! transaction under an advisory lock (two nodes starting at once apply each
//! once), and tracked in `schema_migrations`.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, GenericClient, IsolationLevel, NoTls, Row, Statement, Transaction};

use crate::ops::{Done, Job, Op};
use crate::{
    audit_hash, check_claim, Artifact, AuditEntry, AuditEvent, AuditReport, BatchRecord, BatchStatus, CertQuery,
    CertRecord, CertStatus, Claim, DeviceRevocation, DeviceRevoked, Flag, Issuance, ManufacturerRecord, Ownership,
    OwnershipStatus, Precondition, RevokedCert, StationRecord, StationStatus, Store, StoreError, SyncOutcome,
    SyncUpload, TokenRecord, GENESIS_HASH,
};

/// Most operations committed in one transaction.
pub const MAX_BATCH: usize = 512;

/// Most read connections open at once (per store).
pub const READERS: usize = 4;

/// How long connecting may take unless the URL says (`?connect_timeout=SECONDS`).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Key of the advisory lock migrations take ("iotpki" in ASCII).
const MIGRATION_LOCK: i64 = 0x696f_7470_6b69;

/// The migrations, by version; file names mirror `migrations/sqlite/`.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "0001_init.sql", include_str!("../migrations/postgres/0001_init.sql")),
    (2, "0002_factory.sql", include_str!("../migrations/postgres/0002_factory.sql")),
    (3, "0003_offline.sql", include_str!("../migrations/postgres/0003_offline.sql")),
    (4, "0004_revocation.sql", include_str!("../migrations/postgres/0004_revocation.sql")),
    (5, "0005_ownership.sql", include_str!("../migrations/postgres/0005_ownership.sql")),
    (6, "0006_artifacts.sql", include_str!("../migrations/postgres/0006_artifacts.sql")),
    (7, "0007_current.sql", include_str!("../migrations/postgres/0007_current.sql")),
    (8, "0008_claims.sql", include_str!("../migrations/postgres/0008_claims.sql")),
];

/// Whether `url` names a PostgreSQL database (`postgres://` or `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// `url` with its password (if any) replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return url.to_string() };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => url.to_string(),
    }
}

fn msg(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}

fn db(e: postgres::Error) -> StoreError {
    unavailable(&e).unwrap_or_else(|| StoreError::Database(msg(&e)))
}

fn ctx(what: &'static str) -> impl Fn(postgres::Error) -> StoreError {
    move |e| unavailable(&e).unwrap_or_else(|| StoreError::Database(format!("{what}: {}", msg(&e))))
}

/// A full disk, a read-only database, a lost connection or a server shutting
/// down: the write can succeed later (the connection is opened again).
fn unavailable(e: &postgres::Error) -> Option<StoreError> {
    use postgres::error::SqlState;
    if e.is_closed()
        || (e.as_db_error().is_none() && std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()))
    {
        return Some(StoreError::Unavailable(
            "the connection to the database was lost; a write in flight may have been recorded".into(),
        ));
    }
    let code = e.code()?;
    if [SqlState::ADMIN_SHUTDOWN, SqlState::CRASH_SHUTDOWN, SqlState::CANNOT_CONNECT_NOW].contains(code) {
        return Some(StoreError::Unavailable(
            "the database server is shutting down or starting; a write in flight may have been recorded".into(),
        ));
    }
    if *code == SqlState::DISK_FULL || *code == SqlState::OUT_OF_MEMORY {
        Some(StoreError::Unavailable("the database server is out of space; nothing was recorded".into()))
    } else if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
        Some(StoreError::Unavailable("the database is read-only; nothing was recorded".into()))
    } else {
        None
    }
}

fn is_unique(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// A column of a row, with a type mismatch as an error (never a panic).
fn col<'a, T: postgres::types::FromSql<'a>>(r: &'a Row, i: usize) -> Result<T, StoreError> {
    r.try_get(i).map_err(|e| StoreError::Database(format!("column {i}: {e}")))
}

fn count(r: &Row, i: usize) -> Result<u64, StoreError> {
    Ok(u64::try_from(col::<i64>(r, i)?).unwrap_or(0))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A connection and the statements prepared on it.
struct Conn {
    client: Client,
    stmts: HashMap<String, Statement>,
}

fn connect(url: &str, writer: bool) -> Result<Conn, StoreError> {
    let cannot = |e: String| StoreError::Database(format!("cannot connect to {}: {e}", redact(url)));
    let mut cfg: postgres::Config = url.parse().map_err(|e: postgres::Error| cannot(msg(&e)))?;
    if cfg.get_ssl_mode() == postgres::config::SslMode::Require {
        return Err(cannot(
            "sslmode=require asks for TLS, which this build does not speak to PostgreSQL yet: reach the database \
             over loopback, a private network or a TLS tunnel, and drop sslmode=require"
                .into(),
        ));
    }
    // An unreachable server is an error after a while, not a hang (the URL's connect_timeout wins).
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(CONNECT_TIMEOUT);
    }
    let mut client = cfg.connect(NoTls).map_err(|e| cannot(msg(&e)))?;
    // Commits must be durable before a caller hears of them, whatever the server's default.
    // NOTICEs ("already exists, skipping") are not worth a log line.
    let setup = if writer {
        "SET synchronous_commit = on; SET default_transaction_isolation = 'read committed'; \
         SET client_min_messages = warning"
    } else {
        "SET default_transaction_isolation = 'read committed'; SET client_min_messages = warning"
    };
    client.batch_execute(setup).map_err(ctx("session setup"))?;
    Ok(Conn { client, stmts: HashMap::new() })
}

/// Statements against a client or transaction, prepared once per connection.
struct Db<'a, C: GenericClient> {
    c: &'a mut C,
    stmts: &'a mut HashMap<String, Statement>,
}

type P<'a> = &'a (dyn ToSql + Sync);

impl<C: GenericClient> Db<'_, C> {
    fn stmt(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.c.prepare(sql)?;
        self.stmts.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    fn opt(&mut self, sql: &str, params: &[P<'_>]) -> Result<Option<Row>, postgres::Error> {
        let s = self.stmt(sql)?;
        self.c.query_opt(&s, params)
    }

    fn one(&mut self, sql: &str, params: &[P<'_>]) -> Result<Row, postgres::Error> {
        let s = self.stmt(sql)?;
        self.c.query_one(&s, params)
    }

    fn all(&mut self, sql: &str, params: &[P<'_>]) -> Result<Vec<Row>, postgres::Error> {
        let s = self.stmt(sql)?;
        self.c.query(&s, params)
    }

    fn exec(&mut self, sql: &str, params: &[P<'_>]) -> Result<u64, postgres::Error> {
        let s = self.stmt(sql)?;
        self.c.execute(&s, params)
    }
}

fn migrate(c: &mut Client) -> Result<(), StoreError> {
    for (version, name, sql) in MIGRATIONS {
        let mut tx = c.transaction().map_err(ctx("begin migration"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).map_err(ctx("migration lock"))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .map_err(ctx("migrations table"))?;
        let done = tx
            .query_opt("SELECT version FROM schema_migrations WHERE version = $1", &[version])
            .map_err(ctx("migrations table"))?;
        if done.is_none() {
            tx.batch_execute(sql)
                .map_err(|e| StoreError::Database(format!("migration {version} ({name}): {}", msg(&e))))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            tx.execute("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)", &[version, &now])
                .map_err(ctx("record migration"))?;
        }
        tx.commit().map_err(ctx("commit migration"))?;
    }
    Ok(())
}

/// Read connections: at most [`READERS`] open, idle ones kept for the next read.
struct Pool {
    url: String,
    state: Mutex<PoolState>,
    freed: Condvar,
}

struct PoolState {
    idle: Vec<Conn>,
    open: usize,
}

impl Pool {
    fn take(&self) -> Result<Conn, StoreError> {
        let poisoned = || StoreError::Database("the connection pool's lock is poisoned".into());
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        loop {
            if let Some(c) = st.idle.pop() {
                if !c.client.is_closed() {
                    return Ok(c);
                }
                st.open -= 1;
                close(vec![c]);
                continue;
            }
            if st.open < READERS {
                st.open += 1;
                drop(st);
                let c = connect(&self.url, false).map_err(reconnect_failed);
                if c.is_err() {
                    if let Ok(mut st) = self.state.lock() {
                        st.open -= 1;
                    }
                    self.freed.notify_one();
                }
                return c;
            }
            st = self.freed.wait(st).map_err(|_| poisoned())?;
        }
    }

    fn give(&self, c: Conn) {
        if let Ok(mut st) = self.state.lock() {
            if c.client.is_closed() {
                st.open -= 1;
                close(vec![c]);
            } else {
                st.idle.push(c);
            }
        }
        self.freed.notify_one();
    }
}

/// A connection opened again while serving failed: the database is away for
/// now. (Clients see this message: it names neither the database nor the
/// cause; `serve` said where the database is when it started.)
fn reconnect_failed(e: StoreError) -> StoreError {
    match e {
        StoreError::Database(_) => {
            StoreError::Unavailable("the database is not reachable; nothing was recorded".into())
        }
        other => other,
    }
}

/// Close connections on a thread of their own: closing runs the client's own
/// runtime, which must not happen on a thread that drives async tasks.
fn close(conns: Vec<Conn>) {
    if conns.is_empty() {
        return;
    }
    let _ = std::thread::Builder::new().name("iotpki-pg-close".into()).spawn(move || drop(conns)).map(|h| h.join());
}

/// The PostgreSQL store.
pub struct PgStore {
    url: String,
    writer: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pool: Pool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("url", &redact(&self.url)).finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connect to the database at `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`),
    /// apply the migrations it lacks, and start the writer.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        if !is_postgres_url(url) {
            return Err(StoreError::Database(format!(
                "{} is not a PostgreSQL URL (expected postgres://USER@HOST:PORT/DATABASE)",
                redact(url)
            )));
        }
        let mut w = connect(url, true)?;
        if let Err(e) = migrate(&mut w.client) {
            close(vec![w]);
            return Err(e);
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let url_w = url.to_string();
        let thread = std::thread::Builder::new()
            .name("iotpki-store-writer".into())
            .spawn(move || writer_loop(url_w, Some(w), rx))
            .map_err(|e| StoreError::Database(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            url: url.to_string(),
            writer: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            pool: Pool {
                url: url.to_string(),
                state: Mutex::new(PoolState { idle: Vec::new(), open: 0 }),
                freed: Condvar::new(),
            },
        })
    }

    /// The highest migration applied.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.read(|d| col(&d.one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[]).map_err(db)?, 0))
    }

    fn submit_unit(&self, op: Op) -> Result<(), StoreError> {
        self.submit(op).map(|_| ())
    }

    fn submit(&self, op: Op) -> Result<Done, StoreError> {
        let (reply, rx) = mpsc::sync_channel(1);
        {
            let guard = self.writer.lock().map_err(|_| StoreError::Closed)?;
            guard.as_ref().ok_or(StoreError::Closed)?.send(Job { op, reply }).map_err(|_| StoreError::Closed)?;
        }
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    fn read<T>(&self, f: impl FnOnce(&mut Db<'_, Client>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut conn = self.pool.take()?;
        let r = {
            let Conn { client, stmts } = &mut conn;
            f(&mut Db { c: client, stmts })
        };
        self.pool.give(conn);
        r
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Ok(mut w) = self.writer.lock() {
            w.take(); // closing the channel ends the writer loop
        }
        if let Ok(mut t) = self.thread.lock() {
            if let Some(h) = t.take() {
                let _ = h.join();
            }
        }
        if let Ok(mut st) = self.pool.state.lock() {
            let idle = std::mem::take(&mut st.idle);
            close(idle);
        }
    }
}

fn writer_loop(url: String, mut conn: Option<Conn>, rx: Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        if conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            conn = None;
            match connect(&url, true).map_err(reconnect_failed) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    for job in batch {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let results = run_batch(c, &batch);
        for (job, r) in batch.into_iter().zip(results) {
            let _ = job.reply.send(r);
        }
    }
}

/// The audit chain's head, as locked at the start of a transaction and advanced in memory.
#[derive(Clone, PartialEq, Eq)]
struct Head {
    seq: i64,
    hash: String,
}

type Tx<'a, 'b> = Db<'a, Transaction<'b>>;

/// Lock the chain's head row: from here on, this transaction is the only writer.
fn lock_head(tx: &mut Tx<'_, '_>) -> Result<Head, StoreError> {
    let row = tx.opt("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE", &[]).map_err(ctx("audit head"))?;
    let row = row.ok_or_else(|| StoreError::Database("the audit head row is missing (audit_head, id 1)".into()))?;
    Ok(Head { seq: col(&row, 0)?, hash: col(&row, 1)? })
}

/// One transaction for the whole batch; one savepoint per operation.
fn run_batch(conn: &mut Conn, batch: &[Job]) -> Vec<Result<Done, StoreError>> {
    let fail_all = |e: StoreError| batch.iter().map(|_| Err(e.clone())).collect();
    let Conn { client, stmts } = conn;
    let mut txn = match client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start() {
        Ok(t) => t,
        Err(e) => return fail_all(ctx("begin")(e)),
    };
    let mut tx = Db { c: &mut txn, stmts };
    let start = match lock_head(&mut tx) {
        Ok(h) => h,
        Err(e) => return fail_all(e),
    };
    let mut head = start.clone();
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        match run_one(&mut tx, &job.op, &mut head) {
            Ok(r) => results.push(r),
            // The savepoint machinery itself failed: what this op left behind is
            // unknown, so nothing of the batch may be committed (dropping the
            // transaction rolls it all back).
            Err(e) => return fail_all(e),
        }
    }
    if head != start {
        let seq = head.seq;
        if let Err(e) = tx.exec("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1", &[&seq, &head.hash]) {
            return fail_all(ctx("advance audit head")(e));
        }
    }
    if let Err(e) = txn.commit() {
        return fail_all(ctx("commit")(e));
    }
    results
}

/// Run one operation in its own savepoint. The inner result is the operation's
/// own (on error its writes are rolled back and `head` restored); the outer
/// error means the savepoint could not be opened, rolled back or released, and
/// the whole transaction must be abandoned.
fn run_one(tx: &mut Tx<'_, '_>, op: &Op, head: &mut Head) -> Result<Result<Done, StoreError>, StoreError> {
    tx.c.batch_execute("SAVEPOINT op").map_err(ctx("savepoint"))?;
    let saved = head.clone();
    let unit = |r: Result<(), StoreError>| r.map(|()| Done::Unit);
    let r = match op {
        Op::Issue(i) => unit(issue(tx, i, head)),
        Op::Token(t, a) => unit(token(tx, t).and_then(|()| append(tx, a, head))),
        Op::Audit(a) => unit(append(tx, a, head)),
        Op::CreateBatch(b, serials, a) => unit(create_batch(tx, b, serials).and_then(|()| append(tx, a, head))),
        Op::CloseBatch(id, a) => unit(close_batch(tx, id).and_then(|()| append(tx, a, head))),
        Op::AddStation(st, cert, a) => unit(add_station(tx, st, cert).and_then(|()| append(tx, a, head))),
        Op::RevokeStation(name, at, a) => unit(revoke_station(tx, name, *at).and_then(|()| append(tx, a, head))),
        Op::Refusal(batch, a) => unit(refusal(tx, batch.as_deref()).and_then(|()| append(tx, a, head))),
        Op::Delegation(station, batch, cert, a) => {
            unit(delegation(tx, station, batch, cert).and_then(|()| append(tx, a, head)))
        }
        Op::Revoke(serial, reason, at, a) => unit(revoke(tx, serial, *reason, *at).and_then(|()| append(tx, a, head))),
        Op::RevokeDevice(r) => revoke_device(tx, r, head).map(Done::DeviceRevoked),
        Op::CrlNumber(ca, a) => crl_number(tx, ca).and_then(|n| append(tx, a, head).map(|()| Done::CrlNumber(n))),
        Op::Sync(sync) => apply_sync(tx, sync).and_then(|o| append(tx, &sync.audit, head).map(|()| Done::Synced(o))),
        Op::AddManufacturer(m, a) => unit(add_manufacturer(tx, m).and_then(|()| append(tx, a, head))),
        Op::Claim(serials, via, at, a) => {
            claim(tx, serials, via, *at).and_then(|n| append(tx, a, head).map(|()| Done::Count(n)))
        }
        Op::Release(serial, status, at, a) => {
            unit(release(tx, serial, *status, *at).and_then(|()| append(tx, a, head)))
        }
        Op::Publish(art, a) => unit(publish(tx, art).and_then(|()| append(tx, a, head))),
        Op::OwnByVoucher(serial, via, art, held, a) => unit(
            own_by_voucher(tx, serial, via, art, held)
                .and_then(|()| publish(tx, art))
                .and_then(|()| append(tx, a, head)),
        ),
    };
    if r.is_err() {
        tx.c.batch_execute("ROLLBACK TO SAVEPOINT op").map_err(ctx("rollback to savepoint"))?;
        *head = saved;
    }
    tx.c.batch_execute("RELEASE SAVEPOINT op").map_err(ctx("release savepoint"))?;
    Ok(r)
}

fn check(tx: &mut Tx<'_, '_>, p: &Precondition, cert_serial: &str) -> Result<(), StoreError> {
    match p {
        Precondition::ConsumeToken { token_hash, device_serial, now } => {
            let row = tx
                .opt("SELECT device_serial, expires_at, used_at FROM tokens WHERE token_hash = $1", &[token_hash])
                .map_err(db)?;
            let row = row.ok_or(StoreError::TokenUnknown)?;
            let (serial, expires_at, used_at): (String, i64, Option<i64>) =
                (col(&row, 0)?, col(&row, 1)?, col(&row, 2)?);
            if &serial != device_serial {
                return Err(StoreError::TokenWrongSerial);
            }
            if let Some(used_at) = used_at {
                return Err(StoreError::TokenUsed { used_at });
            }
            if expires_at <= *now {
                return Err(StoreError::TokenExpired { expires_at });
            }
            let n = tx
                .exec(
                    "UPDATE tokens SET used_at = $1, cert_serial = $2 WHERE token_hash = $3 AND used_at IS NULL",
                    &[now, &cert_serial, token_hash],
                )
                .map_err(db)?;
            if n != 1 {
                return Err(StoreError::TokenUsed { used_at: *now });
            }
            Ok(())
        }
        Precondition::Birth { batch, station, device_serial, now } => {
            birth(tx, batch, station, device_serial, *now, cert_serial)
        }
        Precondition::Owned { device_serial } => owned(tx, device_serial),
        Precondition::VoucherHeld { device_serial, sha256 } => {
            let kind = format!("voucher/{device_serial}");
            let row = tx
                .opt("SELECT body FROM artifacts WHERE kind = $1 ORDER BY version DESC LIMIT 1", &[&kind])
                .map_err(db)?;
            let body: Option<Vec<u8>> = row.as_ref().map(|r| col(r, 0)).transpose()?;
            crate::audit::voucher_held(device_serial, sha256.as_deref(), body.as_deref())
        }
        Precondition::Supersede { serial, now } => {
            let row = tx
                .opt("SELECT status, replaced_by FROM certificates WHERE serial = $1 FOR UPDATE", &[serial])
                .map_err(db)?;
            let row: Option<(String, Option<String>)> =
                row.map(|r| Ok::<_, StoreError>((col(&r, 0)?, col(&r, 1)?))).transpose()?;
            match row {
                None => Err(StoreError::CertUnknown { serial: serial.clone() }),
                Some((_, Some(by))) => Err(StoreError::Superseded { serial: serial.clone(), by }),
                Some((status, None)) if status != "good" => Err(StoreError::CertRevoked { serial: serial.clone() }),
                Some(_) => {
                    tx.exec(
                        "UPDATE certificates SET status = 'revoked', revoked_at = $1, revocation_reason = 4,
                         replaced_by = $2 WHERE serial = $3",
                        &[now, &cert_serial, serial],
                    )
                    .map_err(db)?;
                    Ok(())
                }
            }
        }
        Precondition::CertIsGood { serial } => {
            let row = tx.opt("SELECT status FROM certificates WHERE serial = $1", &[serial]).map_err(db)?;
            let status: Option<String> = row.map(|r| col(&r, 0)).transpose()?;
            match status.as_deref() {
                None => Err(StoreError::CertUnknown { serial: serial.clone() }),
                Some("good") => Ok(()),
                Some(_) => Err(StoreError::CertRevoked { serial: serial.clone() }),
            }
        }
    }
}

/// The station exists and is not revoked.
fn station_active(tx: &mut Tx<'_, '_>, station: &str) -> Result<(), StoreError> {
    let row = tx.opt("SELECT status FROM stations WHERE name = $1", &[&station]).map_err(db)?;
    let st: Option<String> = row.map(|r| col(&r, 0)).transpose()?;
    match st.as_deref() {
        None => Err(StoreError::StationUnknown { station: station.into() }),
        Some("active") => Ok(()),
        Some(_) => Err(StoreError::StationRevoked { station: station.into() }),
    }
}

/// The station may serve the batch.
fn station_authorized(tx: &mut Tx<'_, '_>, station: &str, batch: &str) -> Result<(), StoreError> {
    let row = tx
        .opt("SELECT 1 FROM station_batches WHERE station = $1 AND batch_id = $2", &[&station, &batch])
        .map_err(db)?;
    match row {
        Some(_) => Ok(()),
        None => Err(StoreError::StationNotAuthorized { station: station.into(), batch: batch.into() }),
    }
}

fn listed(tx: &mut Tx<'_, '_>, batch: &str, serial: &str) -> Result<bool, StoreError> {
    let row = tx
        .opt("SELECT 1 FROM batch_serials WHERE batch_id = $1 AND device_serial = $2", &[&batch, &serial])
        .map_err(db)?;
    Ok(row.is_some())
}

fn born(tx: &mut Tx<'_, '_>, serial: &str) -> Result<Option<String>, StoreError> {
    let row = tx.opt("SELECT cert_serial FROM births WHERE device_serial = $1", &[&serial]).map_err(db)?;
    row.map(|r| col(&r, 0)).transpose()
}

/// The factory-line checks, in the order a station would want to hear them.
fn birth(
    tx: &mut Tx<'_, '_>,
    batch: &str,
    station: &str,
    serial: &str,
    now: i64,
    cert: &str,
) -> Result<(), StoreError> {
    station_active(tx, station)?;
    let row = tx
        .opt("SELECT quota, issued, valid_from, valid_until, status FROM batches WHERE id = $1", &[&batch])
        .map_err(db)?;
    let Some(row) = row else { return Err(StoreError::BatchUnknown { batch: batch.into() }) };
    let (quota, issued, from, until, status): (i64, i64, i64, i64, String) =
        (col(&row, 0)?, col(&row, 1)?, col(&row, 2)?, col(&row, 3)?, col(&row, 4)?);
    station_authorized(tx, station, batch)?;
    if status != "open" {
        return Err(StoreError::BatchClosed { batch: batch.into() });
    }
    if now < from || now >= until {
        return Err(StoreError::BatchOutsideWindow { batch: batch.into(), from, until });
    }
    let exhausted = || StoreError::QuotaExhausted { batch: batch.into(), quota: u64::try_from(quota).unwrap_or(0) };
    if issued >= quota {
        return Err(exhausted());
    }
    if !listed(tx, batch, serial)? {
        return Err(StoreError::SerialNotAllowed { batch: batch.into(), serial: serial.into() });
    }
    if let Some(cert) = born(tx, serial)? {
        return Err(StoreError::AlreadyBorn { serial: serial.into(), cert });
    }
    let n =
        tx.exec("UPDATE batches SET issued = issued + 1 WHERE id = $1 AND issued < quota", &[&batch]).map_err(db)?;
    if n != 1 {
        return Err(exhausted());
    }
    tx.exec(
        "INSERT INTO births (device_serial, cert_serial, batch_id, station, born_at) VALUES ($1, $2, $3, $4, $5)",
        &[&serial, &cert, &batch, &station, &now],
    )
    .map_err(|e| {
        if is_unique(&e) {
            StoreError::AlreadyBorn { serial: serial.into(), cert: String::new() }
        } else {
            db(e)
        }
    })?;
    Ok(())
}

fn create_batch(tx: &mut Tx<'_, '_>, b: &BatchRecord, serials: &[String]) -> Result<(), StoreError> {
    let status = if b.status == BatchStatus::Open { "open" } else { "closed" };
    tx.exec(
        "INSERT INTO batches (id, product, quota, issued, refused, flagged, valid_from, valid_until, status, created_at)
         VALUES ($1, $2, $3, 0, 0, 0, $4, $5, $6, $7)",
        &[&b.id, &b.product, &to_i64(b.quota), &b.valid_from, &b.valid_until, &status, &b.created_at],
    )
    .map_err(|e| if is_unique(&e) { StoreError::BatchExists { batch: b.id.clone() } } else { ctx("insert batch")(e) })?;
    for (i, s) in serials.iter().enumerate() {
        tx.exec(
            "INSERT INTO batch_serials (batch_id, device_serial, position) VALUES ($1, $2, $3)",
            &[&b.id, s, &i64::try_from(i).unwrap_or(i64::MAX)],
        )
        .map_err(|e| StoreError::Database(format!("allowlist serial {s}: {}", msg(&e))))?;
    }
    Ok(())
}

fn close_batch(tx: &mut Tx<'_, '_>, id: &str) -> Result<(), StoreError> {
    let n = tx.exec("UPDATE batches SET status = 'closed' WHERE id = $1", &[&id]).map_err(db)?;
    if n == 0 {
        return Err(StoreError::BatchUnknown { batch: id.into() });
    }
    Ok(())
}

fn add_station(tx: &mut Tx<'_, '_>, st: &StationRecord, cert: &CertRecord) -> Result<(), StoreError> {
    for b in &st.batches {
        if tx.opt("SELECT 1 FROM batches WHERE id = $1", &[b]).map_err(db)?.is_none() {
            return Err(StoreError::BatchUnknown { batch: b.clone() });
        }
    }
    tx.exec(
        "INSERT INTO stations (name, cert_serial, status, created_at) VALUES ($1, $2, 'active', $3)",
        &[&st.name, &st.cert_serial, &st.created_at],
    )
    .map_err(|e| if is_unique(&e) { StoreError::StationExists { station: st.name.clone() } } else { db(e) })?;
    for b in &st.batches {
        tx.exec(
            "INSERT INTO station_batches (station, batch_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&st.name, b],
        )
        .map_err(db)?;
    }
    insert_cert(tx, cert)
}

fn revoke_station(tx: &mut Tx<'_, '_>, name: &str, at: i64) -> Result<(), StoreError> {
    let row = tx.opt("SELECT status, cert_serial FROM stations WHERE name = $1", &[&name]).map_err(db)?;
    let Some(row) = row else { return Err(StoreError::StationUnknown { station: name.into() }) };
    let (status, cert): (String, String) = (col(&row, 0)?, col(&row, 1)?);
    if status != "active" {
        return Err(StoreError::StationRevoked { station: name.into() });
    }
    tx.exec("UPDATE stations SET status = 'revoked', revoked_at = $1 WHERE name = $2", &[&at, &name]).map_err(db)?;
    // RFC 5280 CRLReason cessationOfOperation (5).
    tx.exec(
        "UPDATE certificates SET status = 'revoked', revoked_at = $1, revocation_reason = 5 WHERE serial = $2",
        &[&at, &cert],
    )
    .map_err(db)?;
    Ok(())
}

fn refusal(tx: &mut Tx<'_, '_>, batch: Option<&str>) -> Result<(), StoreError> {
    if let Some(b) = batch {
        tx.exec("UPDATE batches SET refused = refused + 1 WHERE id = $1", &[&b]).map_err(db)?;
    }
    Ok(())
}

fn delegation(tx: &mut Tx<'_, '_>, station: &str, batch: &str, cert: &CertRecord) -> Result<(), StoreError> {
    station_active(tx, station)?;
    station_authorized(tx, station, batch)?;
    insert_cert(tx, cert)?;
    tx.exec(
        "INSERT INTO delegations (cert_serial, station, batch_id, created_at) VALUES ($1, $2, $3, $4)",
        &[&cert.serial, &station, &batch, &cert.issued_at],
    )
    .map_err(|e| {
        if is_unique(&e) {
            StoreError::DelegationExists { station: station.into(), batch: batch.into() }
        } else {
            db(e)
        }
    })?;
    Ok(())
}

fn sync_state_of<C: GenericClient>(d: &mut Db<'_, C>, station: &str, batch: &str) -> Result<(u64, String), StoreError> {
    let row = d
        .opt("SELECT last_seq, head FROM syncs WHERE station = $1 AND batch_id = $2", &[&station, &batch])
        .map_err(db)?;
    Ok(match row {
        Some(r) => (u64::try_from(col::<i64>(&r, 0)?).unwrap_or(0), col(&r, 1)?),
        None => (0, GENESIS_HASH.to_string()),
    })
}

/// Record a production record upload: see [`Store::apply_sync`].
fn apply_sync(tx: &mut Tx<'_, '_>, s: &SyncUpload) -> Result<SyncOutcome, StoreError> {
    let (last, head) = sync_state_of(tx, &s.station, &s.batch)?;
    if s.from_seq != last + 1 || s.from_head != head {
        return Err(StoreError::SyncOutOfOrder { expected_seq: last + 1, got_seq: s.from_seq });
    }
    let row = tx.opt("SELECT quota, issued FROM batches WHERE id = $1", &[&s.batch]).map_err(db)?;
    let Some(row) = row else { return Err(StoreError::BatchUnknown { batch: s.batch.clone() }) };
    let (quota, mut issued): (i64, i64) = (col(&row, 0)?, col(&row, 1)?);
    let mut out = SyncOutcome::default();
    for e in &s.entries {
        let on_list = listed(tx, &s.batch, &e.device_serial)?;
        let was_born = born(tx, &e.device_serial)?.is_some();
        let flag = if !on_list || e.outside_delegation {
            Some(Flag::OffAllowlist)
        } else if was_born {
            Some(Flag::Clone)
        } else if issued >= quota {
            Some(Flag::Overbuild)
        } else {
            None
        };
        let mut cert = e.cert.clone();
        match flag {
            None => {
                insert_cert(tx, &cert)?;
                tx.exec(
                    "INSERT INTO births (device_serial, cert_serial, batch_id, station, born_at) VALUES ($1, $2, $3, $4, $5)",
                    &[&e.device_serial, &cert.serial, &s.batch, &s.station, &cert.issued_at],
                )
                .map_err(db)?;
                issued += 1;
                out.born += 1;
            }
            Some(f) => {
                // Recorded (the store knows every certificate) and revoked at once (RFC 5280: unspecified).
                cert.status = CertStatus::Revoked { at: s.now, reason: 0 };
                insert_cert(tx, &cert)?;
                tx.exec(
                    "INSERT INTO flags (cert_serial, batch_id, reason, flagged_at) VALUES ($1, $2, $3, $4)",
                    &[&cert.serial, &s.batch, &f.name(), &s.now],
                )
                .map_err(db)?;
                out.flagged.push((cert.serial.clone(), f));
            }
        }
    }
    let flagged = i64::try_from(out.flagged.len()).unwrap_or(i64::MAX);
    tx.exec("UPDATE batches SET issued = $1, flagged = flagged + $2 WHERE id = $3", &[&issued, &flagged, &s.batch])
        .map_err(db)?;
    tx.exec(
        "INSERT INTO syncs (station, batch_id, last_seq, head) VALUES ($1, $2, $3, $4)
         ON CONFLICT (station, batch_id) DO UPDATE SET last_seq = excluded.last_seq, head = excluded.head",
        &[&s.station, &s.batch, &to_i64(s.to_seq), &s.to_head],
    )
    .map_err(db)?;
    Ok(out)
}

fn revoke(tx: &mut Tx<'_, '_>, serial: &str, reason: u8, at: i64) -> Result<(), StoreError> {
    let row = tx.opt("SELECT status FROM certificates WHERE serial = $1", &[&serial]).map_err(db)?;
    let status: Option<String> = row.map(|r| col(&r, 0)).transpose()?;
    match status.as_deref() {
        None => Err(StoreError::CertUnknown { serial: serial.into() }),
        Some("good") => {
            tx.exec(
                "UPDATE certificates SET status = 'revoked', revoked_at = $1, revocation_reason = $2 WHERE serial = $3",
                &[&at, &i32::from(reason), &serial],
            )
            .map_err(db)?;
            Ok(())
        }
        Some(_) => Err(StoreError::CertRevoked { serial: serial.into() }),
    }
}

/// Every good certificate of the device, and its ownership when owned, in
/// this transaction (which holds the audit head lock: no issuance of any node
/// commits between the listing and the revocations).
fn revoke_device(tx: &mut Tx<'_, '_>, r: &DeviceRevocation, head: &mut Head) -> Result<DeviceRevoked, StoreError> {
    let rows = tx
        .all(
            "SELECT serial FROM certificates WHERE device_serial = $1 AND status = 'good'
             ORDER BY issued_at, serial COLLATE \"C\" FOR UPDATE",
            &[&r.device_serial],
        )
        .map_err(db)?;
    let serials = rows.iter().map(|row| col(row, 0)).collect::<Result<Vec<String>, _>>()?;
    let owned = ownership_of(tx, &r.device_serial)?.is_some_and(|o| o.status == OwnershipStatus::Owned);
    if serials.is_empty() && !owned {
        return Err(StoreError::NothingToRevoke { device: r.device_serial.clone() });
    }
    if owned {
        release(tx, &r.device_serial, OwnershipStatus::Revoked, r.at)?;
        append(tx, &r.device_event(), head)?;
    }
    for s in &serials {
        revoke(tx, s, r.reason, r.at)?;
        append(tx, &r.cert_event(s), head)?;
    }
    Ok(DeviceRevoked { serials, released: owned })
}

fn add_manufacturer(tx: &mut Tx<'_, '_>, m: &ManufacturerRecord) -> Result<(), StoreError> {
    let row = tx
        .opt("SELECT name FROM manufacturers WHERE name = $1 OR spki_sha256 = $2", &[&m.name, &m.spki_sha256])
        .map_err(db)?;
    if let Some(r) = row {
        return Err(StoreError::ManufacturerExists { name: col(&r, 0)? });
    }
    tx.exec(
        "INSERT INTO manufacturers (name, cert_der, spki_sha256, added_at) VALUES ($1, $2, $3, $4)",
        &[&m.name, &m.cert_der, &m.spki_sha256, &m.added_at],
    )
    .map_err(|e| if is_unique(&e) { StoreError::ManufacturerExists { name: m.name.clone() } } else { db(e) })?;
    Ok(())
}

fn claim(tx: &mut Tx<'_, '_>, claims: &[Claim], via: &str, at: i64) -> Result<u64, StoreError> {
    let mut n = 0;
    for c in claims {
        let new = tx
            .exec(
                "INSERT INTO owned_devices (device_serial, via, since, manufacturer_spki, birth_sha256) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_serial) DO NOTHING",
                &[&c.device_serial, &via, &at, &c.manufacturer_spki, &c.birth_sha256],
            )
            .map_err(db)?;
        if new == 1 {
            n += 1;
            continue;
        }
        // A claim made by bare serial before claims named the birth: bound now.
        tx.exec(
            "UPDATE owned_devices SET manufacturer_spki = $1, birth_sha256 = $2 \
             WHERE device_serial = $3 AND via = 'claim' AND birth_sha256 IS NULL",
            &[&c.manufacturer_spki, &c.birth_sha256, &c.device_serial],
        )
        .map_err(db)?;
        if let Some(o) = ownership_of(tx, &c.device_serial)? {
            check_claim(&o, c)?;
        }
    }
    Ok(n)
}

fn ownership_of<C: GenericClient>(d: &mut Db<'_, C>, serial: &str) -> Result<Option<Ownership>, StoreError> {
    let row = d
        .opt(
            "SELECT device_serial, via, since, status, changed_at, manufacturer_spki, birth_sha256 \
             FROM owned_devices WHERE device_serial = $1",
            &[&serial],
        )
        .map_err(db)?;
    row.map(|r| {
        Ok(Ownership {
            device_serial: col(&r, 0)?,
            via: col(&r, 1)?,
            since: col(&r, 2)?,
            status: OwnershipStatus::parse(&col::<String>(&r, 3)?)?,
            changed_at: col(&r, 4)?,
            manufacturer_spki: col(&r, 5)?,
            birth_sha256: col(&r, 6)?,
        })
    })
    .transpose()
}

fn owned(tx: &mut Tx<'_, '_>, serial: &str) -> Result<(), StoreError> {
    // FOR UPDATE: a release committing meanwhile is seen (every writer holds the head lock anyway).
    match ownership_of(tx, serial)? {
        None => Err(StoreError::NotOwned { device: serial.into() }),
        Some(o) if o.status == OwnershipStatus::Owned => Ok(()),
        Some(o) => Err(StoreError::DeviceReleased { device: serial.into(), status: o.status.as_str() }),
    }
}

fn release(tx: &mut Tx<'_, '_>, serial: &str, status: OwnershipStatus, at: i64) -> Result<(), StoreError> {
    if status == OwnershipStatus::Owned {
        return Err(StoreError::Database("release_device needs revoked or transferred".into()));
    }
    owned(tx, serial)?;
    tx.exec(
        "UPDATE owned_devices SET status = $1, changed_at = $2 WHERE device_serial = $3",
        &[&status.as_str(), &at, &serial],
    )
    .map_err(db)?;
    Ok(())
}

fn publish(tx: &mut Tx<'_, '_>, a: &Artifact) -> Result<(), StoreError> {
    let row = tx.one("SELECT MAX(version) FROM artifacts WHERE kind = $1", &[&a.kind]).map_err(db)?;
    let latest: Option<i64> = col(&row, 0)?;
    let version = i64::try_from(a.version).map_err(|_| StoreError::Database("version out of range".into()))?;
    if let Some(latest) = latest {
        if version <= latest {
            return Err(StoreError::NotNewer { kind: a.kind.clone(), latest: latest as u64, offered: a.version });
        }
    }
    tx.exec(
        "INSERT INTO artifacts (kind, version, body, published_at) VALUES ($1, $2, $3, $4)",
        &[&a.kind, &version, &a.body, &a.published_at],
    )
    .map_err(db)?;
    Ok(())
}

fn own_by_voucher(
    tx: &mut Tx<'_, '_>,
    serial: &str,
    via: &str,
    a: &Artifact,
    held: &Precondition,
) -> Result<(), StoreError> {
    match held {
        Precondition::VoucherHeld { device_serial, .. } if device_serial == serial => check(tx, held, "")?,
        _ => return Err(StoreError::Database(format!("own_by_voucher needs VoucherHeld for {serial}, not {held:?}"))),
    }
    if let Some(o) = ownership_of(tx, serial)? {
        if o.status == OwnershipStatus::Revoked {
            return Err(StoreError::DeviceReleased { device: serial.into(), status: o.status.as_str() });
        }
    }
    tx.exec(
        "INSERT INTO owned_devices (device_serial, via, since) VALUES ($1, $2, $3)
         ON CONFLICT (device_serial) DO UPDATE SET via = excluded.via, since = excluded.since, status = 'owned', changed_at = NULL",
        &[&serial, &via, &a.published_at],
    )
    .map_err(db)?;
    Ok(())
}

fn crl_number(tx: &mut Tx<'_, '_>, ca: &str) -> Result<u64, StoreError> {
    let row = tx
        .one(
            "INSERT INTO crl_numbers (ca, last) VALUES ($1, 1)
             ON CONFLICT (ca) DO UPDATE SET last = crl_numbers.last + 1 RETURNING last",
            &[&ca],
        )
        .map_err(db)?;
    Ok(u64::try_from(col::<i64>(&row, 0)?).unwrap_or(0))
}

fn issue(tx: &mut Tx<'_, '_>, i: &Issuance, head: &mut Head) -> Result<(), StoreError> {
    for p in &i.preconditions {
        check(tx, p, &i.cert.serial)?;
    }
    insert_cert(tx, &i.cert)?;
    append(tx, &i.audit, head)
}

fn insert_cert(tx: &mut Tx<'_, '_>, c: &CertRecord) -> Result<(), StoreError> {
    let (status, revoked_at, reason) = match c.status {
        CertStatus::Good => ("good", None, None),
        CertStatus::Revoked { at, reason } => ("revoked", Some(at), Some(i32::from(reason))),
    };
    tx.exec(
        "INSERT INTO certificates (serial, ca, profile, subject, device_serial, not_before, not_after, issued_at,
         spki_sha256, replaces, status, revoked_at, revocation_reason, der)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        &[
            &c.serial,
            &c.ca,
            &c.profile,
            &c.subject,
            &c.device_serial,
            &c.not_before,
            &c.not_after,
            &c.issued_at,
            &c.spki_sha256,
            &c.replaces,
            &status,
            &revoked_at,
            &reason,
            &c.der,
        ],
    )
    .map_err(|e| {
        if is_unique(&e) {
            StoreError::DuplicateSerial { serial: c.serial.clone() }
        } else {
            ctx("insert certificate")(e)
        }
    })?;
    Ok(())
}

fn token(tx: &mut Tx<'_, '_>, t: &TokenRecord) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO tokens (token_hash, device_serial, created_at, expires_at, used_at, cert_serial)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&t.token_hash, &t.device_serial, &t.created_at, &t.expires_at, &t.used_at, &t.cert_serial],
    )
    .map_err(|e| if is_unique(&e) { StoreError::TokenExists } else { ctx("insert token")(e) })?;
    Ok(())
}

/// Append to the chain after `head` (locked by this transaction) and advance it.
fn append(tx: &mut Tx<'_, '_>, ev: &AuditEvent, head: &mut Head) -> Result<(), StoreError> {
    let seq = head.seq + 1;
    let seq_u = u64::try_from(seq).map_err(|_| StoreError::Database(format!("negative audit seq {seq}")))?;
    let hash = audit_hash(&head.hash, seq_u, ev);
    tx.exec(
        "INSERT INTO audit (seq, at, actor, action, target, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[&seq, &ev.at, &ev.actor, &ev.action, &ev.target, &ev.detail, &head.hash, &hash],
    )
    .map_err(ctx("append audit"))?;
    *head = Head { seq, hash };
    Ok(())
}

const BATCH_SELECT: &str =
    "SELECT b.id, b.product, b.quota, b.issued, b.refused, b.flagged, b.valid_from, b.valid_until,
     b.status, b.created_at, (SELECT COUNT(*) FROM batch_serials s WHERE s.batch_id = b.id) FROM batches b";

fn batch_row(r: &Row) -> Result<BatchRecord, StoreError> {
    let status: String = col(r, 8)?;
    Ok(BatchRecord {
        id: col(r, 0)?,
        product: col(r, 1)?,
        quota: count(r, 2)?,
        issued: count(r, 3)?,
        refused: count(r, 4)?,
        flagged: count(r, 5)?,
        valid_from: col(r, 6)?,
        valid_until: col(r, 7)?,
        status: if status == "open" { BatchStatus::Open } else { BatchStatus::Closed },
        created_at: col(r, 9)?,
        allowlist: count(r, 10)?,
    })
}

/// A station by `name` or by `cert_serial` (the column is ours, never the caller's).
fn station_query<C: GenericClient>(
    d: &mut Db<'_, C>,
    column: &'static str,
    value: &str,
) -> Result<Option<StationRecord>, StoreError> {
    let sql = format!("SELECT name, cert_serial, status, created_at, revoked_at FROM stations WHERE {column} = $1");
    let Some(row) = d.opt(&sql, &[&value]).map_err(db)? else { return Ok(None) };
    let (name, cert_serial, status, created_at, revoked_at): (String, String, String, i64, Option<i64>) =
        (col(&row, 0)?, col(&row, 1)?, col(&row, 2)?, col(&row, 3)?, col(&row, 4)?);
    let rows = d
        .all("SELECT batch_id FROM station_batches WHERE station = $1 ORDER BY batch_id COLLATE \"C\"", &[&name])
        .map_err(db)?;
    let batches = rows.iter().map(|r| col(r, 0)).collect::<Result<Vec<String>, _>>()?;
    let status =
        if status == "active" { StationStatus::Active } else { StationStatus::Revoked { at: revoked_at.unwrap_or(0) } };
    Ok(Some(StationRecord { name, cert_serial, batches, status, created_at }))
}

const CERT_COLS: &str = "serial, ca, profile, subject, device_serial, not_before, not_after, issued_at, spki_sha256, replaces, status, revoked_at, revocation_reason, der, replaced_by";

fn reason_of(v: Option<i32>) -> u8 {
    v.and_then(|v| u8::try_from(v).ok()).unwrap_or(0)
}

fn cert_row(r: &Row) -> Result<CertRecord, StoreError> {
    let status: String = col(r, 10)?;
    let status = if status == "revoked" {
        CertStatus::Revoked { at: col::<Option<i64>>(r, 11)?.unwrap_or(0), reason: reason_of(col(r, 12)?) }
    } else {
        CertStatus::Good
    };
    Ok(CertRecord {
        serial: col(r, 0)?,
        ca: col(r, 1)?,
        profile: col(r, 2)?,
        subject: col(r, 3)?,
        device_serial: col(r, 4)?,
        not_before: col(r, 5)?,
        not_after: col(r, 6)?,
        issued_at: col(r, 7)?,
        spki_sha256: col(r, 8)?,
        replaces: col(r, 9)?,
        replaced_by: col(r, 14)?,
        status,
        der: col(r, 13)?,
    })
}

impl Store for PgStore {
    fn record_issuance(&self, issuance: Issuance) -> Result<(), StoreError> {
        self.submit_unit(Op::Issue(Box::new(issuance)))
    }

    fn create_token(&self, token: TokenRecord, audit: AuditEvent) -> Result<(), StoreError> {
        self.submit_unit(Op::Token(token, audit))
    }

    fn token(&self, token_hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.read(|d| {
            let row = d
                .opt(
                    "SELECT token_hash, device_serial, created_at, expires_at, used_at, cert_serial FROM tokens WHERE token_hash = $1",
                    &[&token_hash],
                )
                .map_err(db)?;
            row.map(|r| {
                Ok(TokenRecord {
                    token_hash: col(&r, 0)?,
                    device_serial: col(&r, 1)?,
                    created_at: col(&r, 2)?,
                    expires_at: col(&r, 3)?,
                    used_at: col(&r, 4)?,
                    cert_serial: col(&r, 5)?,
                })
            })
            .transpose()
        })
    }

    fn append_audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        self.submit_unit(Op::Audit(event))
    }

    fn certificate(&self, serial: &str) -> Result<Option<CertRecord>, StoreError> {
        self.read(|d| {
            let row =
                d.opt(&format!("SELECT {CERT_COLS} FROM certificates WHERE serial = $1"), &[&serial]).map_err(db)?;
            row.map(|r| cert_row(&r)).transpose()
        })
    }

    fn list_certificates(&self, q: &CertQuery) -> Result<Vec<CertRecord>, StoreError> {
        self.read(|d| {
            // Only the filters given, so that the planner can use an index for them.
            let mut args: Vec<P<'_>> = Vec::new();
            let mut conds = Vec::new();
            for (col, op, v) in [
                ("device_serial", "=", q.device_serial.as_ref().map(|v| v as P<'_>)),
                ("ca", "=", q.ca.as_ref().map(|v| v as P<'_>)),
                ("not_after", "<=", q.expiring_before.as_ref().map(|v| v as P<'_>)),
                ("not_after", ">=", q.expiring_after.as_ref().map(|v| v as P<'_>)),
                ("profile", "=", q.profile.as_ref().map(|v| v as P<'_>)),
            ] {
                if let Some(v) = v {
                    args.push(v);
                    conds.push(format!("{col} {op} ${}", args.len()));
                }
            }
            let filter = if conds.is_empty() { String::new() } else { format!("WHERE {}", conds.join(" AND ")) };
            // Sorting whole rows (the DER with them) spills past work_mem for tens of
            // thousands of certificates: all of them are sorted here, and a limited
            // list sorts only the serials in SQL and reads just those rows.
            let limit: Option<i64> = q.limit.map(i64::from);
            let sql = match limit {
                None => format!("SELECT {CERT_COLS} FROM certificates {filter}"),
                Some(_) => {
                    args.push(&limit);
                    format!(
                        "SELECT {CERT_COLS} FROM certificates WHERE serial IN
                           (SELECT serial FROM certificates {filter}
                            ORDER BY issued_at DESC, serial COLLATE \"C\" LIMIT ${})",
                        args.len()
                    )
                }
            };
            let rows = d.all(&sql, &args).map_err(db)?;
            let mut rows = rows.iter().map(cert_row).collect::<Result<Vec<_>, _>>()?;
            crate::newest_first(&mut rows);
            Ok(rows)
        })
    }

    fn count_certificates(&self) -> Result<u64, StoreError> {
        self.read(|d| count(&d.one("SELECT COUNT(*) FROM certificates", &[]).map_err(db)?, 0))
    }

    fn audit_entries(&self, from: u64, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(|d| {
            let rows = d
                .all(
                    "SELECT seq, at, actor, action, target, detail, prev_hash, hash FROM audit WHERE seq >= $1 ORDER BY seq LIMIT $2",
                    &[&to_i64(from), &i64::from(limit)],
                )
                .map_err(db)?;
            rows.iter()
                .map(|r| {
                    Ok(AuditEntry {
                        seq: count(r, 0)?,
                        event: AuditEvent {
                            at: col(r, 1)?,
                            actor: col(r, 2)?,
                            action: col(r, 3)?,
                            target: col(r, 4)?,
                            detail: col(r, 5)?,
                        },
                        prev_hash: col(r, 6)?,
                        hash: col(r, 7)?,
                    })
                })
                .collect()
        })
    }

    fn verify_audit(&self) -> Result<AuditReport, StoreError> {
        const PAGE: u32 = 1000;
        let mut expect_seq = 1u64;
        let mut prev = GENESIS_HASH.to_string();
        loop {
            let page = self.audit_entries(expect_seq, PAGE)?;
            let n = page.len();
            for e in page {
                if e.seq != expect_seq {
                    return Err(StoreError::AuditBroken {
                        seq: expect_seq,
                        reason: format!("entry missing (next is {})", e.seq),
                    });
                }
                if e.prev_hash != prev {
                    return Err(StoreError::AuditBroken {
                        seq: e.seq,
                        reason: "does not link to the previous entry".into(),
                    });
                }
                if audit_hash(&e.prev_hash, e.seq, &e.event) != e.hash {
                    return Err(StoreError::AuditBroken {
                        seq: e.seq,
                        reason: "hash does not match its content".into(),
                    });
                }
                prev = e.hash;
                expect_seq += 1;
            }
            if n < PAGE as usize {
                break;
            }
        }
        Ok(AuditReport { entries: expect_seq - 1, head: prev })
    }

    fn create_batch(&self, batch: BatchRecord, serials: Vec<String>, audit: AuditEvent) -> Result<(), StoreError> {
        self.submit_unit(Op::CreateBatch(Box::new(batch), serials, audit))
    }

    fn batch(&self, id: &str) -> Result<Option<BatchRecord>, StoreError> {
        self.read(|d| {
            let row = d.opt(&format!("{BATCH_SELECT} WHERE b.id = $1"), &[&id]).map_err(db)?;
            row.map(|r| batch_row(&r)).transpose()
        })
    }

    fn list_batches(&self) -> Result<Vec<BatchRecord>, StoreError> {
        self.read(|d| {
            let rows =
                d.all(&format!("{BATCH_SELECT} ORDER BY b.created_at DESC, b.id COLLATE \"C\""), &[]).map_err(db)?;
            rows.iter().map(batch_row).collect()
        })
    }

    fn close_batch(&self, id: &str, audit: AuditEvent) -> Result<(), StoreError> {
        self.submit_unit(Op::CloseBatch(id.to_string(), audit))
    }

    fn unborn_serials(&self, id: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        self.read(|d| {
            let rows = d
                .all(
                    "SELECT s.device_serial FROM batch_serials s LEFT JOIN births b ON b.device_serial = s.device_serial
                     WHERE s.batch_id = $1 AND b.device_serial IS NULL ORDER BY s.position LIMIT $2",
                    &[&id, &i64::from(limit)],
                )
                .map_err(db)?;
            rows.iter().map(|r| col(r, 0)).collect()
        })
    }

    fn add_station(&self, station: StationRecord, cert: CertRecord, audit: AuditEvent) -> Result<(), StoreError> {
        self.submit_unit(Op::AddStation(Box::new(station), Box::new(cert), audit))
    }

    fn station(&self, name: &str) -> Result<Option<StationRecord>, StoreError> {
        self.read(|d| station_query(d, "name", name))
    }

    fn station_by_cert(&self, cert_serial: &str) -> Result<Option<StationRecord>, StoreError> {
        self.read(|d| station_query(d, "cert_serial", cert_serial))
    }

    fn revoke_station(&self, name: &str, at: i64, audit: AuditEvent) -> Result<(), StoreError> {
        self.submit_unit(Op::RevokeStation(name.to_string(), at, audit))
    }

    fn record_refusal(&self, batch: Option<&str>, audit: AuditEvent) -> Result<(), StoreError> {
        self.submit_unit(Op::Refusal(batch.map(str::to_string), audit))
    }

    fn add_delegation(
        &self,
        station: &str,
        batch: &str,
        cert: CertRecord,
        audit: AuditEvent,
    ) -> Result<(), StoreError> {
        self.submit_unit(Op::Delegation(station.into(), batch.into(), Box::new(cert), audit))
    }

    fn delegation(&self, station: &str, batch: &str) -> Result<Option<String>, StoreError> {
        self.read(|d| {
            let row = d
                .opt("SELECT cert_serial FROM delegations WHERE station = $1 AND batch_id = $2", &[&station, &batch])
                .map_err(db)?;
            row.map(|r| col(&r, 0)).transpose()
        })
    }

    fn sync_state(&self, station: &str, batch: &str) -> Result<(u64, String), StoreError> {
        self.read(|d| sync_state_of(d, station, batch))
    }

    fn apply_sync(&self, sync: SyncUpload) -> Result<SyncOutcome, StoreError> {
        match self.submit(Op::Sync(Box::new(sync)))? {
            Done::Synced(o) => Ok(o),
            other => Err(StoreError::Database(format!("a sync answered {other:?}"))),
        }
    }

    fn revoke(&self, serial: &str, reason: u8, at: i64, audit: AuditEvent) -> Result<(), StoreError> {
        self.submit_unit(Op::Revoke(serial.into(), reason, at, audit))
    }

    fn revoke_device(&self, revocation: DeviceRevocation) -> Result<DeviceRevoked, StoreError> {
        match self.submit(Op::RevokeDevice(Box::new(revocation)))? {
            Done::DeviceRevoked(d) => Ok(d),
            other => Err(StoreError::Database(format!("unexpected answer {other:?}"))),
        }
    }

    fn revoked(&self, ca: &str) -> Result<Vec<RevokedCert>, StoreError> {
        self.read(|d| {
            let rows = d
                .all(
                    "SELECT serial, revoked_at, revocation_reason, not_after FROM certificates
                     WHERE ca = $1 AND status = 'revoked' ORDER BY revoked_at, serial COLLATE \"C\"",
                    &[&ca],
                )
                .map_err(db)?;
            rows.iter()
                .map(|r| {
                    Ok(RevokedCert {
                        serial: col(r, 0)?,
                        revoked_at: col::<Option<i64>>(r, 1)?.unwrap_or(0),
                        reason: reason_of(col(r, 2)?),
                        not_after: col(r, 3)?,
                    })
                })
                .collect()
        })
    }

    fn revocation_mark(&self, ca: &str) -> Result<(u64, i64), StoreError> {
        self.read(|d| {
            let r = d
                .one(
                    "SELECT COUNT(*), COALESCE(MAX(revoked_at), 0) FROM certificates WHERE ca = $1 AND status = 'revoked'",
                    &[&ca],
                )
                .map_err(db)?;
            Ok((count(&r, 0)?, col(&r, 1)?))
        })
    }

    fn add_manufacturer(&self, m: ManufacturerRecord, audit: AuditEvent) -> Result<(), StoreError> {
        self.submit_unit(Op::AddManufacturer(Box::new(m), audit))
    }

    fn manufacturers(&self) -> Result<Vec<ManufacturerRecord>, StoreError> {
        self.read(|d| {
            let rows = d
                .all("SELECT name, cert_der, spki_sha256, added_at FROM manufacturers ORDER BY name COLLATE \"C\"", &[])
                .map_err(db)?;
            rows.iter()
                .map(|r| {
                    Ok(ManufacturerRecord {
                        name: col(r, 0)?,
                        cert_der: col(r, 1)?,
                        spki_sha256: col(r, 2)?,
                        added_at: col(r, 3)?,
                    })
                })
                .collect()
        })
    }

    fn claim_devices(&self, claims: Vec<Claim>, via: &str, at: i64, audit: AuditEvent) -> Result<u64, StoreError> {
        match self.submit(Op::Claim(claims, via.into(), at, audit))? {
            Done::Count(n) => Ok(n),
            other => Err(StoreError::Database(format!("a claim answered {other:?}"))),
        }
    }

    fn ownership(&self, device_serial: &str) -> Result<Option<Ownership>, StoreError> {
        self.read(|d| ownership_of(d, device_serial))
    }

    fn release_device(
        &self,
        device_serial: &str,
        status: OwnershipStatus,
        at: i64,
        audit: AuditEvent,
    ) -> Result<(), StoreError> {
        self.submit_unit(Op::Release(device_serial.into(), status, at, audit))
    }

    fn publish_artifact(&self, artifact: Artifact, audit: AuditEvent) -> Result<(), StoreError> {
        self.submit_unit(Op::Publish(Box::new(artifact), audit))
    }

    fn artifact(&self, kind: &str) -> Result<Option<Artifact>, StoreError> {
        self.read(|d| {
            let row = d
                .opt(
                    "SELECT kind, version, body, published_at FROM artifacts WHERE kind = $1 ORDER BY version DESC LIMIT 1",
                    &[&kind],
                )
                .map_err(db)?;
            row.map(|r| {
                Ok(Artifact {
                    kind: col(&r, 0)?,
                    version: u64::try_from(col::<i64>(&r, 1)?).unwrap_or(0),
                    body: col(&r, 2)?,
                    published_at: col(&r, 3)?,
                })
            })
            .transpose()
        })
    }

    fn own_by_voucher(
        &self,
        device_serial: &str,
        via: &str,
        voucher: Artifact,
        held: Precondition,
        audit: AuditEvent,
    ) -> Result<(), StoreError> {
        self.submit_unit(Op::OwnByVoucher(device_serial.into(), via.into(), Box::new(voucher), Box::new(held), audit))
    }

    fn next_crl_number(&self, ca: &str, audit: AuditEvent) -> Result<u64, StoreError> {
        match self.submit(Op::CrlNumber(ca.into(), audit))? {
            Done::CrlNumber(n) => Ok(n),
            other => Err(StoreError::Database(format!("a CRL number answered {other:?}"))),
        }
    }

    fn flagged(&self, batch: &str) -> Result<Vec<(String, Flag)>, StoreError> {
        self.read(|d| {
            let rows = d
                .all(
                    "SELECT cert_serial, reason FROM flags WHERE batch_id = $1 ORDER BY flagged_at, cert_serial COLLATE \"C\"",
                    &[&batch],
                )
                .map_err(db)?;
            rows.iter()
                .map(|r| {
                    let reason: String = col(r, 1)?;
                    let f = match reason.as_str() {
                        "off-allowlist" => Flag::OffAllowlist,
                        "clone" => Flag::Clone,
                        _ => Flag::Overbuild,
                    };
                    Ok((col(r, 0)?, f))
                })
                .collect()
        })
    }
}

/// `url` with its database name replaced by `name` (query parameters kept).
pub fn with_database(url: &str, name: &str) -> Result<String, StoreError> {
    let bad = || StoreError::Database(format!("{} is not a postgres://USER@HOST[:PORT]/DATABASE URL", redact(url)));
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let query = tail.find('?').map(|i| &tail[i..]).unwrap_or("");
    if authority.is_empty() {
        return Err(bad());
    }
    Ok(format!("{scheme}://{authority}/{name}{query}"))
}

/// For tests: a database of its own, dropped (with any connections left) when this is.
#[doc(hidden)]
#[derive(Debug)]
pub struct TestDatabase {
    /// Its URL.
    pub url: String,
    base: String,
    name: String,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        // On a thread of its own: the client must not run on an async worker.
        let _ = std::thread::spawn(move || {
            if let Ok(mut c) = connect(&base, false) {
                let _ = c.client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        })
        .join();
    }
}

/// For tests: create a new, empty database next to the one `base_url` names
/// (the base URL's user must be allowed to create databases).
#[doc(hidden)]
pub fn create_test_database(base_url: &str, prefix: &str) -> Result<TestDatabase, StoreError> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let clean: String =
        prefix.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    let name =
        format!("{clean}_{}_{}_{nanos}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let mut c = connect(base_url, false)?;
    // The name is ours (letters, digits, _), never a caller's SQL.
    c.client.batch_execute(&format!("CREATE DATABASE {name}")).map_err(ctx("create database"))?;
    close(vec![c]);
    Ok(TestDatabase { url: with_database(base_url, &name)?, base: base_url.to_string(), name })
}

/// For tests: the base URL of the test cluster from `IOTPKI_TEST_PG`; panics
/// with what to do when it is not set (PostgreSQL tests never skip silently).
#[doc(hidden)]
pub fn test_base_url() -> String {
    match std::env::var("IOTPKI_TEST_PG") {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "IOTPKI_TEST_PG is not set: the PostgreSQL tests need a server. Run ./scripts/test (it starts a \
             throwaway cluster), or start one with `scripts/pg start DIR` and set IOTPKI_TEST_PG to the URL it prints \
             (postgres://USER@127.0.0.1:PORT/postgres)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;

    /// A store on a database of its own (dropped after the store: bind both).
    fn fresh(name: &str) -> (TestDatabase, PgStore) {
        let db = create_test_database(&test_base_url(), &format!("store_{name}")).unwrap();
        let s = PgStore::open(&db.url).unwrap();
        (db, s)
    }

    fn ev(i: i64) -> AuditEvent {
        AuditEvent { at: i, actor: "a".into(), action: "x".into(), target: "t".into(), detail: "d".into() }
    }

    #[test]
    fn migration_files_mirror_sqlite() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let names = |sub: &str| {
            let mut v: Vec<String> = std::fs::read_dir(dir.join(sub))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let pg = names("postgres");
        assert_eq!(pg, names("sqlite"), "migrations/postgres and migrations/sqlite must have the same files");
        let listed: Vec<String> = MIGRATIONS.iter().map(|(_, n, _)| n.to_string()).collect();
        assert_eq!(listed, pg, "MIGRATIONS lists every file of migrations/postgres, in order");
        for (i, (v, _, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v, i as i64 + 1);
        }
    }

    #[test]
    fn urls_are_redacted_and_rewritten() {
        assert_eq!(redact("postgres://u:secret@h:5/db"), "postgres://u:***@h:5/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgresql://u:p@w@h/db?x=1"), "postgresql://u:***@h/db?x=1");
        assert_eq!(with_database("postgres://u@h:5/postgres", "t1").unwrap(), "postgres://u@h:5/t1");
        assert_eq!(
            with_database("postgres://u@h:5/postgres?sslmode=disable", "t").unwrap(),
            "postgres://u@h:5/t?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "t").unwrap(), "postgres://u@h/t");
        assert!(with_database("nonsense", "t").is_err());
        assert!(is_postgres_url("postgresql://x") && !is_postgres_url("store.db"));
        let e = PgStore::open("store.db").unwrap_err();
        assert!(e.to_string().contains("not a PostgreSQL URL"), "{e}");
    }

    #[test]
    fn tls_is_refused_with_advice() {
        let e = PgStore::open("postgres://u@127.0.0.1:1/x?sslmode=require").unwrap_err().to_string();
        assert!(e.contains("sslmode=require asks for TLS") && e.contains("tunnel"), "{e}");
    }

    #[test]
    fn unreachable_server_is_a_clear_error() {
        // Port 1 on loopback: nothing listens there.
        let e = PgStore::open("postgres://nobody:pw@127.0.0.1:1/x").unwrap_err();
        let m = e.to_string();
        assert!(m.contains("cannot connect to postgres://nobody:***@127.0.0.1:1/x"), "{m}");
        assert!(!m.contains("pw@"), "the password is not shown: {m}");
    }

    #[test]
    fn conformance_suite() {
        let (_u, s) = fresh("all");
        conformance::run_all(&s);
    }

    macro_rules! each_check_in_a_fresh_database {
        ($($name:ident),* $(,)?) => {
            mod each {
                use super::*;
                $(
                    #[test]
                    fn $name() {
                        let (_u, s) = fresh(stringify!($name));
                        conformance::$name(&s);
                        s.verify_audit().expect("audit chain verifies");
                    }
                )*
            }
        };
    }

    each_check_in_a_fresh_database!(
        issuance_round_trip,
        duplicate_serial_writes_nothing,
        token_refusals_write_nothing,
        token_works_once,
        cert_is_good,
        listing_filters,
        concurrent_token_race,
        concurrent_issuance,
        factory_births_and_refusals,
        quota_race,
        clone_race,
        offline_sync,
        revocation,
        ownership,
        artifacts,
        voucher_claims_racing_against_one_held_voucher_store_one_and_no_fork,
        renewal_supersedes_once,
        concurrent_renewals_of_one_certificate,
        revoke_device_in_one_transaction,
        revoke_device_races_renewals_and_issuance,
    );

    #[test]
    fn migrations_are_applied_once_and_tracked() {
        let (tdb, s) = fresh("migrate");
        let url = tdb.url.clone();
        let c = conformance::cert("P-1");
        s.record_issuance(Issuance {
            cert: c.clone(),
            preconditions: vec![],
            audit: AuditEvent { target: c.serial.clone(), ..ev(1) },
        })
        .unwrap();
        drop(s);
        // Two opens at once, then one more: each migration still ran exactly once.
        let (a, b) = std::thread::scope(|sc| {
            let h1 = sc.spawn(|| PgStore::open(&url).unwrap());
            let h2 = sc.spawn(|| PgStore::open(&url).unwrap());
            (h1.join().unwrap(), h2.join().unwrap())
        });
        drop(b);
        assert_eq!(a.certificate(&c.serial).unwrap(), Some(c));
        assert_eq!(a.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let n = a.read(|d| count(&d.one("SELECT COUNT(*) FROM schema_migrations", &[]).map_err(db)?, 0)).unwrap();
        assert_eq!(n, MIGRATIONS.len() as u64);
        assert_eq!(a.verify_audit().unwrap().entries, 1);
    }

    #[test]
    fn migration_7_names_the_successor_of_renewals_recorded_before_it_and_revokes_nothing() {
        let (tdb, s) = fresh("m7");
        let (c1, mut c2, c3) = (conformance::cert("M7"), conformance::cert("M7"), conformance::cert("M7"));
        c2.replaces = Some(c1.serial.clone());
        for c in [&c1, &c2, &c3] {
            s.record_issuance(Issuance {
                cert: c.clone(),
                preconditions: vec![],
                audit: AuditEvent { target: c.serial.clone(), ..ev(1) },
            })
            .unwrap();
        }
        drop(s);
        // The database as version 6 left it: no replaced_by column.
        let mut raw = Client::connect(&tdb.url, NoTls).unwrap();
        raw.batch_execute(
            "ALTER TABLE certificates DROP COLUMN replaced_by; DELETE FROM schema_migrations WHERE version = 7",
        )
        .unwrap();
        drop(raw);
        let s = PgStore::open(&tdb.url).unwrap();
        let get = |serial: &str| s.certificate(serial).unwrap().unwrap();
        assert_eq!(get(&c1.serial).replaced_by.as_deref(), Some(c2.serial.as_str()));
        assert_eq!((get(&c2.serial).replaced_by, get(&c3.serial).replaced_by), (None, None));
        assert_eq!(get(&c1.serial).status, CertStatus::Good, "a past renewal is not revoked by the migration");
    }

    #[test]
    fn tampering_is_detected_at_the_edited_entry() {
        let (tdb, s) = fresh("tamper");
        let url = tdb.url.clone();
        for i in 0..5 {
            s.append_audit(ev(i)).unwrap();
        }
        assert_eq!(s.verify_audit().unwrap().entries, 5);
        let mut raw = Client::connect(&url, NoTls).unwrap();
        raw.execute("UPDATE audit SET detail = 'edited' WHERE seq = 3", &[]).unwrap();
        assert_eq!(
            s.verify_audit().unwrap_err(),
            StoreError::AuditBroken { seq: 3, reason: "hash does not match its content".into() }
        );
        raw.execute("UPDATE audit SET detail = 'd' WHERE seq = 3", &[]).unwrap();
        raw.execute("DELETE FROM audit WHERE seq = 4", &[]).unwrap();
        assert!(matches!(s.verify_audit(), Err(StoreError::AuditBroken { seq: 4, .. })));
        close(vec![Conn { client: raw, stmts: HashMap::new() }]);
    }

    /// Two stores (two writers, two pools: as two nodes would have) on one
    /// database: races across them keep every guarantee and one chain.
    #[test]
    fn two_stores_on_one_database_share_quota_tokens_and_chain() {
        let (tdb, a) = fresh("two");
        let url = tdb.url.clone();
        let b = PgStore::open(&url).unwrap();
        let nodes: [&(dyn Store + 'static); 2] = [&a, &b];
        // Interleaved appends.
        std::thread::scope(|sc| {
            for st in nodes {
                sc.spawn(move || {
                    for i in 0..100 {
                        st.append_audit(ev(i)).unwrap();
                    }
                });
            }
        });
        assert_eq!(a.verify_audit().unwrap().entries, 200);
        assert_eq!(b.verify_audit().unwrap(), a.verify_audit().unwrap());
        // A quota of 7 over 60 serials, requests spread over both stores.
        let batch = "TWO-Q";
        let serials: Vec<String> = (0..60).map(|i| format!("TWO-{i}")).collect();
        conformance::batch(&a, batch, 7, &serials);
        conformance::station(&b, "two-st", &[batch]);
        let results: Vec<Result<(), StoreError>> = std::thread::scope(|sc| {
            let hs: Vec<_> = serials
                .iter()
                .enumerate()
                .map(|(i, serial)| {
                    let st = nodes[i % 2];
                    sc.spawn(move || {
                        st.record_issuance(Issuance {
                            cert: conformance::cert(serial),
                            preconditions: vec![Precondition::Birth {
                                batch: batch.into(),
                                station: "two-st".into(),
                                device_serial: serial.clone(),
                                now: 100,
                            }],
                            audit: ev(2),
                        })
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 7, "{results:?}");
        assert!(results.iter().all(|r| matches!(r, Ok(()) | Err(StoreError::QuotaExhausted { .. }))));
        assert_eq!(b.batch(batch).unwrap().unwrap().issued, 7);
        // One token, 20 requests over both stores.
        let tok = TokenRecord {
            token_hash: "70two".into(),
            device_serial: "TWO-T".into(),
            created_at: 1,
            expires_at: 5_000,
            used_at: None,
            cert_serial: None,
        };
        a.create_token(tok, ev(3)).unwrap();
        let wins = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..20)
                .map(|i| {
                    let st = nodes[i % 2];
                    sc.spawn(move || {
                        st.record_issuance(Issuance {
                            cert: conformance::cert("TWO-T"),
                            preconditions: vec![Precondition::ConsumeToken {
                                token_hash: "70two".into(),
                                device_serial: "TWO-T".into(),
                                now: 1_500,
                            }],
                            audit: ev(4),
                        })
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).filter(|r| r.is_ok()).count()
        });
        assert_eq!(wins, 1);
        let report = a.verify_audit().unwrap();
        assert_eq!(report.entries, 200 + 2 + 7 + 1 + 1);
        assert_eq!(b.verify_audit().unwrap(), report);
    }

    #[test]
    fn a_failing_op_does_not_spoil_its_batch() {
        let (_u, s) = fresh("spoil");
        let dup = conformance::cert("B-1");
        let mk = |c: CertRecord| Issuance {
            audit: AuditEvent { target: c.serial.clone(), ..ev(1) },
            cert: c,
            preconditions: vec![],
        };
        s.record_issuance(mk(dup.clone())).unwrap();
        let results: Vec<bool> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..64)
                .map(|i| {
                    let (s, dup) = (&s, dup.clone());
                    sc.spawn(move || {
                        let c = if i % 4 == 0 { dup } else { conformance::cert("B-2") };
                        s.record_issuance(mk(c)).is_ok()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|ok| !**ok).count(), 16);
        assert_eq!(s.count_certificates().unwrap(), 1 + 48);
        assert_eq!(s.verify_audit().unwrap().entries, 1 + 48);
    }

    /// Deterministic: one hand-built batch through [`run_batch`], mixing
    /// successes with every kind of refusal; the head row ends where the chain does.
    #[test]
    fn one_batch_with_refusals_commits_the_rest_on_one_chain() {
        let tdb = create_test_database(&test_base_url(), "store_onebatch").unwrap();
        let url = tdb.url.clone();
        let mut conn = connect(&url, true).unwrap();
        migrate(&mut conn.client).unwrap();
        let e = |target: &str| AuditEvent { target: target.into(), ..ev(1) };
        let tok = TokenRecord {
            token_hash: "70aa".into(),
            device_serial: "D-1".into(),
            created_at: 1,
            expires_at: 5_000,
            used_at: None,
            cert_serial: None,
        };
        let consume = Precondition::ConsumeToken { token_hash: "70aa".into(), device_serial: "D-1".into(), now: 1_500 };
        let issue = |c: &CertRecord, pre: Vec<Precondition>| {
            Op::Issue(Box::new(Issuance { cert: c.clone(), preconditions: pre, audit: e(&c.serial) }))
        };
        let (c1, c2, c3, c4) =
            (conformance::cert("D-1"), conformance::cert("D-1"), conformance::cert("D-1"), conformance::cert("D-1"));
        let ops = vec![
            Op::Token(tok.clone(), e("token")),
            issue(&c1, vec![consume.clone()]),
            issue(&c2, vec![consume]),
            issue(&CertRecord { serial: c1.serial.clone(), ..c3.clone() }, vec![]),
            issue(&c3, vec![Precondition::CertIsGood { serial: "00".into() }]),
            Op::Audit(e("admin")),
            Op::Token(tok, e("token again")),
            issue(&c4, vec![]),
        ];
        let jobs: Vec<Job> = ops.into_iter().map(|op| Job { op, reply: mpsc::sync_channel(1).0 }).collect();
        let results = run_batch(&mut conn, &jobs);
        assert_eq!(
            results,
            vec![
                Ok(Done::Unit),
                Ok(Done::Unit),
                Err(StoreError::TokenUsed { used_at: 1_500 }),
                Err(StoreError::DuplicateSerial { serial: c1.serial.clone() }),
                Err(StoreError::CertUnknown { serial: "00".into() }),
                Ok(Done::Unit),
                Err(StoreError::TokenExists),
                Ok(Done::Unit),
            ]
        );
        close(vec![conn]);
        let s = PgStore::open(&url).unwrap();
        assert_eq!(s.count_certificates().unwrap(), 2);
        assert_eq!(s.token("70aa").unwrap().unwrap().cert_serial, Some(c1.serial.clone()));
        let report = s.verify_audit().unwrap();
        assert_eq!(report.entries, 4);
        let head = s.read(|d| {
            let r = d.one("SELECT seq, hash FROM audit_head WHERE id = 1", &[]).map_err(db)?;
            Ok((count(&r, 0)?, col::<String>(&r, 1)?))
        });
        assert_eq!(head.unwrap(), (4, report.head));
        let targets: Vec<String> = s.audit_entries(1, 10).unwrap().into_iter().map(|e| e.event.target).collect();
        assert_eq!(targets, vec!["token".to_string(), c1.serial, "admin".into(), c4.serial]);
    }
}
