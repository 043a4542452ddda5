//! The embedded store: one SQLite file, WAL journal, `synchronous=FULL`.
//!
//! Writes go to one writer thread that owns the write connection and commits
//! in groups: it takes the first queued operation, drains what else is
//! waiting (up to [`MAX_BATCH`]), runs each in its own SAVEPOINT inside one
//! `BEGIN IMMEDIATE` transaction, commits once (one fsync), and only then
//! answers every caller. An operation whose precondition fails is rolled back
//! to its savepoint and gets its own error; the others are unaffected.
//!
//! Another process may write the same file (the CLI while the server runs):
//! `BEGIN IMMEDIATE` takes SQLite's write lock, the busy timeout waits for it,
//! and the audit chain's head is read inside each transaction, never cached.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};

use crate::ops::{Done, Job, Op};
use crate::{
    audit_hash, check_claim, Artifact, AuditEntry, AuditEvent, AuditReport, BatchRecord, BatchStatus, CertQuery,
    CertRecord, CertStatus, Claim, DeviceRevocation, DeviceRevoked, Flag, Issuance, ManufacturerRecord, Ownership,
    OwnershipStatus, Precondition, RevokedCert, StationRecord, StationStatus, Store, StoreError, SyncOutcome,
    SyncUpload, TokenRecord, GENESIS_HASH,
};

/// Most operations committed in one transaction.
pub const MAX_BATCH: usize = 512;

/// How long a connection waits for another's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Read connections kept open.
const READERS: usize = 4;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../migrations/sqlite/0002_factory.sql")),
    (3, include_str!("../migrations/sqlite/0003_offline.sql")),
    (4, include_str!("../migrations/sqlite/0004_revocation.sql")),
    (5, include_str!("../migrations/sqlite/0005_ownership.sql")),
    (6, include_str!("../migrations/sqlite/0006_artifacts.sql")),
    (7, include_str!("../migrations/sqlite/0007_current.sql")),
    (8, include_str!("../migrations/sqlite/0008_claims.sql")),
];

fn db(e: rusqlite::Error) -> StoreError {
    unavailable(&e).unwrap_or_else(|| StoreError::Database(e.to_string()))
}

fn ctx(what: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| unavailable(&e).unwrap_or_else(|| StoreError::Database(format!("{what}: {e}")))
}

/// A full disk or a read-only database: the write can succeed later.
fn unavailable(e: &rusqlite::Error) -> Option<StoreError> {
    use rusqlite::ErrorCode as C;
    match e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            C::DiskFull => Some(StoreError::Unavailable("the disk is full; nothing was recorded".into())),
            C::ReadOnly => Some(StoreError::Unavailable("the database is read-only; nothing was recorded".into())),
            C::SystemIoFailure => {
                Some(StoreError::Unavailable(format!("the disk failed a write: {e}; nothing was recorded")))
            }
            _ => None,
        },
        _ => None,
    }
}

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

fn connect(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let c = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Database(format!("cannot open {}: {e}", path.display())))?;
    c.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
    c.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
    c.pragma_update(None, "synchronous", "FULL").map_err(db)?;
    Ok(c)
}

/// The store holds every token hash, certificate and audit entry: readable
/// by its owner only. A new file is made 0600 before SQLite opens it (SQLite
/// would make it 0644, and gives the WAL and SHM files the database file's
/// mode); an existing file, WAL or SHM that others may read is made 0600.
fn owner_only(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let io = |p: &Path, e: std::io::Error| StoreError::Database(format!("{}: {e}", p.display()));
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(path, e)),
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let p = std::path::PathBuf::from(p);
            if let Ok(meta) = std::fs::metadata(&p) {
                if meta.permissions().mode() & 0o077 != 0 {
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).map_err(|e| io(&p, e))?;
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn migrate(c: &mut Connection) -> Result<(), StoreError> {
    let mode: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(ctx("journal mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Database(format!("cannot use WAL journal mode (got {mode})")));
    }
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .map_err(ctx("migrations table"))?;
    for (version, sql) in MIGRATIONS {
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db)?;
        let done: Option<i64> = tx
            .query_row("SELECT version FROM schema_migrations WHERE version = ?1", [version], |r| r.get(0))
            .optional()
            .map_err(db)?;
        if done.is_none() {
            tx.execute_batch(sql).map_err(|e| StoreError::Database(format!("migration {version}: {e}")))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            tx.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)", params![version, now])
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
    }
    Ok(())
}

impl SqliteStore {
    /// Open (creating and migrating when needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        owner_only(path)?;
        let rw = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut w = connect(path, rw)?;
        migrate(&mut w)?;
        // The writer touches random pages of the serial and token indexes: keep them
        // cached, and checkpoint the WAL less often so pages rewritten by many commits
        // (table tails, the audit tail) are copied back once.
        w.pragma_update(None, "cache_size", -65_536).map_err(db)?;
        w.pragma_update(None, "wal_autocheckpoint", 8_000).map_err(db)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = connect(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
            readers.push(Mutex::new(r));
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("iotpki-store-writer".into())
            .spawn(move || writer_loop(w, rx))
            .map_err(|e| StoreError::Database(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            writer: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            readers,
            next_reader: 0.into(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
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

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let i = self.next_reader.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.readers.len();
        let c = self.readers[i].lock().map_err(|_| StoreError::Database("a reader panicked".into()))?;
        f(&c)
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Ok(mut w) = self.writer.lock() {
            w.take(); // closing the channel ends the writer loop
        }
        if let Ok(mut t) = self.thread.lock() {
            if let Some(h) = t.take() {
                let _ = h.join();
            }
        }
    }
}

fn writer_loop(mut conn: Connection, rx: Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let results = run_batch(&mut conn, &batch);
        for (job, r) in batch.into_iter().zip(results) {
            let _ = job.reply.send(r);
        }
    }
}

/// The audit chain's head: read once per transaction (under the write lock
/// nobody else can append), then advanced in memory.
#[derive(Clone)]
struct Head {
    seq: i64,
    hash: String,
}

fn read_head(tx: &Transaction<'_>) -> Result<Head, StoreError> {
    let head: Option<(i64, String)> = tx
        .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        .and_then(|mut st| st.query_row([], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(ctx("audit head"))?;
    Ok(match head {
        Some((seq, hash)) => Head { seq, hash },
        None => Head { seq: 0, hash: GENESIS_HASH.to_string() },
    })
}

/// One transaction for the whole batch; one savepoint per operation.
fn run_batch(conn: &mut Connection, batch: &[Job]) -> Vec<Result<Done, StoreError>> {
    let fail_all = |e: StoreError| batch.iter().map(|_| Err(e.clone())).collect();
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(t) => t,
        Err(e) => return fail_all(ctx("begin")(e)),
    };
    let mut head = match read_head(&tx) {
        Ok(h) => h,
        Err(e) => return fail_all(e),
    };
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        match run_one(&tx, &job.op, &mut head) {
            Ok(r) => results.push(r),
            // The savepoint machinery itself failed: what this op left behind is
            // unknown, so nothing of the batch may be committed (dropping `tx`
            // rolls it all back).
            Err(e) => return fail_all(e),
        }
    }
    if let Err(e) = tx.commit() {
        return fail_all(ctx("commit")(e));
    }
    results
}

fn exec_cached(tx: &Transaction<'_>, sql: &str) -> Result<(), StoreError> {
    tx.prepare_cached(sql)
        .and_then(|mut st| st.execute([]))
        .map(|_| ())
        .map_err(|e| StoreError::Database(format!("{sql}: {e}")))
}

/// Run one operation in its own savepoint. The inner result is the operation's
/// own (on error its writes are rolled back and `head` restored); the outer
/// error means the savepoint could not be opened, rolled back or released, and
/// the whole transaction must be abandoned.
fn run_one(tx: &Transaction<'_>, op: &Op, head: &mut Head) -> Result<Result<Done, StoreError>, StoreError> {
    exec_cached(tx, "SAVEPOINT op")?;
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
        Op::Sync(sync) => apply_sync(tx, sync).and_then(|o| append(tx, &sync.audit, head).map(|()| Done::Synced(o))),
    };
    if r.is_err() {
        exec_cached(tx, "ROLLBACK TO op")?;
        *head = saved;
    }
    exec_cached(tx, "RELEASE op")?;
    Ok(r)
}

fn check(tx: &Transaction<'_>, p: &Precondition, cert_serial: &str) -> Result<(), StoreError> {
    match p {
        Precondition::ConsumeToken { token_hash, device_serial, now } => {
            let row: Option<(String, i64, Option<i64>)> = tx
                .prepare_cached("SELECT device_serial, expires_at, used_at FROM tokens WHERE token_hash = ?1")
                .and_then(|mut st| st.query_row([token_hash], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional())
                .map_err(db)?;
            let (serial, expires_at, used_at) = row.ok_or(StoreError::TokenUnknown)?;
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
                .prepare_cached(
                    "UPDATE tokens SET used_at = ?1, cert_serial = ?2 WHERE token_hash = ?3 AND used_at IS NULL",
                )
                .and_then(|mut st| st.execute(params![now, cert_serial, token_hash]))
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
            let body: Option<Vec<u8>> = opt(tx
                .prepare_cached("SELECT body FROM artifacts WHERE kind = ?1 ORDER BY version DESC LIMIT 1")
                .and_then(|mut q| q.query_row([format!("voucher/{device_serial}")], |r| r.get(0))))?;
            crate::audit::voucher_held(device_serial, sha256.as_deref(), body.as_deref())
        }
        Precondition::Supersede { serial, now } => {
            let row: Option<(String, Option<String>)> = tx
                .prepare_cached("SELECT status, replaced_by FROM certificates WHERE serial = ?1")
                .and_then(|mut st| st.query_row([serial], |r| Ok((r.get(0)?, r.get(1)?))).optional())
                .map_err(db)?;
            match row {
                None => Err(StoreError::CertUnknown { serial: serial.clone() }),
                Some((_, Some(by))) => Err(StoreError::Superseded { serial: serial.clone(), by }),
                Some((status, None)) if status != "good" => Err(StoreError::CertRevoked { serial: serial.clone() }),
                Some(_) => {
                    tx.prepare_cached(
                        "UPDATE certificates SET status = 'revoked', revoked_at = ?1, revocation_reason = 4,
                         replaced_by = ?2 WHERE serial = ?3",
                    )
                    .and_then(|mut st| st.execute(params![now, cert_serial, serial]))
                    .map_err(db)?;
                    Ok(())
                }
            }
        }
        Precondition::CertIsGood { serial } => {
            let status: Option<String> = tx
                .prepare_cached("SELECT status FROM certificates WHERE serial = ?1")
                .and_then(|mut st| st.query_row([serial], |r| r.get(0)).optional())
                .map_err(db)?;
            match status.as_deref() {
                None => Err(StoreError::CertUnknown { serial: serial.clone() }),
                Some("good") => Ok(()),
                Some(_) => Err(StoreError::CertRevoked { serial: serial.clone() }),
            }
        }
    }
}

fn opt<T>(r: rusqlite::Result<T>) -> Result<Option<T>, StoreError> {
    r.optional().map_err(db)
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

/// The station exists and is not revoked.
fn station_active(tx: &Transaction<'_>, station: &str) -> Result<(), StoreError> {
    let st: Option<String> = opt(tx
        .prepare_cached("SELECT status FROM stations WHERE name = ?1")
        .and_then(|mut q| q.query_row([station], |r| r.get(0))))?;
    match st.as_deref() {
        None => Err(StoreError::StationUnknown { station: station.into() }),
        Some("active") => Ok(()),
        Some(_) => Err(StoreError::StationRevoked { station: station.into() }),
    }
}

/// The station may serve the batch.
fn station_authorized(tx: &Transaction<'_>, station: &str, batch: &str) -> Result<(), StoreError> {
    let allowed: Option<i64> = opt(tx
        .prepare_cached("SELECT 1 FROM station_batches WHERE station = ?1 AND batch_id = ?2")
        .and_then(|mut q| q.query_row([station, batch], |r| r.get(0))))?;
    match allowed {
        Some(_) => Ok(()),
        None => Err(StoreError::StationNotAuthorized { station: station.into(), batch: batch.into() }),
    }
}

/// The factory-line checks, in the order a station would want to hear them.
fn birth(
    tx: &Transaction<'_>,
    batch: &str,
    station: &str,
    serial: &str,
    now: i64,
    cert: &str,
) -> Result<(), StoreError> {
    station_active(tx, station)?;
    let b: Option<(i64, i64, i64, i64, String)> = opt(tx
        .prepare_cached("SELECT quota, issued, valid_from, valid_until, status FROM batches WHERE id = ?1")
        .and_then(|mut q| q.query_row([batch], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))))?;
    let Some((quota, issued, from, until, status)) = b else {
        return Err(StoreError::BatchUnknown { batch: batch.into() });
    };
    station_authorized(tx, station, batch)?;
    if status != "open" {
        return Err(StoreError::BatchClosed { batch: batch.into() });
    }
    if now < from || now >= until {
        return Err(StoreError::BatchOutsideWindow { batch: batch.into(), from, until });
    }
    if issued >= quota {
        return Err(StoreError::QuotaExhausted { batch: batch.into(), quota: u64::try_from(quota).unwrap_or(0) });
    }
    let listed: Option<i64> = opt(tx
        .prepare_cached("SELECT 1 FROM batch_serials WHERE batch_id = ?1 AND device_serial = ?2")
        .and_then(|mut q| q.query_row([batch, serial], |r| r.get(0))))?;
    if listed.is_none() {
        return Err(StoreError::SerialNotAllowed { batch: batch.into(), serial: serial.into() });
    }
    let born: Option<String> = opt(tx
        .prepare_cached("SELECT cert_serial FROM births WHERE device_serial = ?1")
        .and_then(|mut q| q.query_row([serial], |r| r.get(0))))?;
    if let Some(cert) = born {
        return Err(StoreError::AlreadyBorn { serial: serial.into(), cert });
    }
    let n = tx
        .prepare_cached("UPDATE batches SET issued = issued + 1 WHERE id = ?1 AND issued < quota")
        .and_then(|mut q| q.execute([batch]))
        .map_err(db)?;
    if n != 1 {
        return Err(StoreError::QuotaExhausted { batch: batch.into(), quota: u64::try_from(quota).unwrap_or(0) });
    }
    tx.prepare_cached(
        "INSERT INTO births (device_serial, cert_serial, batch_id, station, born_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut q| q.execute(params![serial, cert, batch, station, now]))
    .map_err(|e| {
        if is_constraint(&e) {
            StoreError::AlreadyBorn { serial: serial.into(), cert: String::new() }
        } else {
            db(e)
        }
    })?;
    Ok(())
}

fn create_batch(tx: &Transaction<'_>, b: &BatchRecord, serials: &[String]) -> Result<(), StoreError> {
    let status = if b.status == BatchStatus::Open { "open" } else { "closed" };
    tx.prepare_cached(
        "INSERT INTO batches (id, product, quota, issued, refused, flagged, valid_from, valid_until, status, created_at)
         VALUES (?1, ?2, ?3, 0, 0, 0, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut q| {
        q.execute(params![b.id, b.product, i64::try_from(b.quota).unwrap_or(i64::MAX), b.valid_from, b.valid_until, status, b.created_at])
    })
    .map_err(|e| if is_constraint(&e) { StoreError::BatchExists { batch: b.id.clone() } } else { db(e) })?;
    let mut q = tx
        .prepare_cached("INSERT INTO batch_serials (batch_id, device_serial, position) VALUES (?1, ?2, ?3)")
        .map_err(db)?;
    for (i, s) in serials.iter().enumerate() {
        q.execute(params![b.id, s, i64::try_from(i).unwrap_or(i64::MAX)])
            .map_err(|e| StoreError::Database(format!("allowlist serial {s}: {e}")))?;
    }
    Ok(())
}

fn close_batch(tx: &Transaction<'_>, id: &str) -> Result<(), StoreError> {
    let n = tx
        .prepare_cached("UPDATE batches SET status = 'closed' WHERE id = ?1")
        .and_then(|mut q| q.execute([id]))
        .map_err(db)?;
    if n == 0 {
        return Err(StoreError::BatchUnknown { batch: id.into() });
    }
    Ok(())
}

fn add_station(tx: &Transaction<'_>, st: &StationRecord, cert: &CertRecord) -> Result<(), StoreError> {
    for b in &st.batches {
        let found: Option<i64> = opt(tx
            .prepare_cached("SELECT 1 FROM batches WHERE id = ?1")
            .and_then(|mut q| q.query_row([b], |r| r.get(0))))?;
        if found.is_none() {
            return Err(StoreError::BatchUnknown { batch: b.clone() });
        }
    }
    tx.prepare_cached("INSERT INTO stations (name, cert_serial, status, created_at) VALUES (?1, ?2, 'active', ?3)")
        .and_then(|mut q| q.execute(params![st.name, st.cert_serial, st.created_at]))
        .map_err(|e| if is_constraint(&e) { StoreError::StationExists { station: st.name.clone() } } else { db(e) })?;
    for b in &st.batches {
        tx.prepare_cached("INSERT OR IGNORE INTO station_batches (station, batch_id) VALUES (?1, ?2)")
            .and_then(|mut q| q.execute([&st.name, b]))
            .map_err(db)?;
    }
    insert_cert(tx, cert)
}

fn revoke_station(tx: &Transaction<'_>, name: &str, at: i64) -> Result<(), StoreError> {
    let row: Option<(String, String)> = opt(tx
        .prepare_cached("SELECT status, cert_serial FROM stations WHERE name = ?1")
        .and_then(|mut q| q.query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))))?;
    let Some((status, cert)) = row else { return Err(StoreError::StationUnknown { station: name.into() }) };
    if status != "active" {
        return Err(StoreError::StationRevoked { station: name.into() });
    }
    tx.prepare_cached("UPDATE stations SET status = 'revoked', revoked_at = ?1 WHERE name = ?2")
        .and_then(|mut q| q.execute(params![at, name]))
        .map_err(db)?;
    // RFC 5280 CRLReason cessationOfOperation (5).
    tx.prepare_cached(
        "UPDATE certificates SET status = 'revoked', revoked_at = ?1, revocation_reason = 5 WHERE serial = ?2",
    )
    .and_then(|mut q| q.execute(params![at, cert]))
    .map_err(db)?;
    Ok(())
}

fn refusal(tx: &Transaction<'_>, batch: Option<&str>) -> Result<(), StoreError> {
    if let Some(b) = batch {
        tx.prepare_cached("UPDATE batches SET refused = refused + 1 WHERE id = ?1")
            .and_then(|mut q| q.execute([b]))
            .map_err(db)?;
    }
    Ok(())
}

fn delegation(tx: &Transaction<'_>, station: &str, batch: &str, cert: &CertRecord) -> Result<(), StoreError> {
    station_active(tx, station)?;
    station_authorized(tx, station, batch)?;
    insert_cert(tx, cert)?;
    tx.prepare_cached("INSERT INTO delegations (cert_serial, station, batch_id, created_at) VALUES (?1, ?2, ?3, ?4)")
        .and_then(|mut q| q.execute(params![cert.serial, station, batch, cert.issued_at]))
        .map_err(|e| {
            if is_constraint(&e) {
                StoreError::DelegationExists { station: station.into(), batch: batch.into() }
            } else {
                db(e)
            }
        })?;
    Ok(())
}

fn sync_state_tx(c: &Connection, station: &str, batch: &str) -> Result<(u64, String), StoreError> {
    let row: Option<(i64, String)> = c
        .prepare_cached("SELECT last_seq, head FROM syncs WHERE station = ?1 AND batch_id = ?2")
        .and_then(|mut q| q.query_row([station, batch], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(db)?;
    Ok(match row {
        Some((seq, head)) => (u64::try_from(seq).unwrap_or(0), head),
        None => (0, GENESIS_HASH.to_string()),
    })
}

/// Record a production record upload: see [`Store::apply_sync`].
fn apply_sync(tx: &Transaction<'_>, s: &SyncUpload) -> Result<SyncOutcome, StoreError> {
    let (last, head) = sync_state_tx(tx, &s.station, &s.batch)?;
    if s.from_seq != last + 1 || s.from_head != head {
        return Err(StoreError::SyncOutOfOrder { expected_seq: last + 1, got_seq: s.from_seq });
    }
    let quota: Option<(i64, i64)> = opt(tx
        .prepare_cached("SELECT quota, issued FROM batches WHERE id = ?1")
        .and_then(|mut q| q.query_row([&s.batch], |r| Ok((r.get(0)?, r.get(1)?)))))?;
    let Some((quota, mut issued)) = quota else { return Err(StoreError::BatchUnknown { batch: s.batch.clone() }) };
    let mut out = SyncOutcome::default();
    for e in &s.entries {
        let listed: Option<i64> = opt(tx
            .prepare_cached("SELECT 1 FROM batch_serials WHERE batch_id = ?1 AND device_serial = ?2")
            .and_then(|mut q| q.query_row([&s.batch, &e.device_serial], |r| r.get(0))))?;
        let born: Option<String> = opt(tx
            .prepare_cached("SELECT cert_serial FROM births WHERE device_serial = ?1")
            .and_then(|mut q| q.query_row([&e.device_serial], |r| r.get(0))))?;
        let flag = if listed.is_none() || e.outside_delegation {
            Some(Flag::OffAllowlist)
        } else if born.is_some() {
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
                tx.prepare_cached(
                    "INSERT INTO births (device_serial, cert_serial, batch_id, station, born_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut q| q.execute(params![e.device_serial, cert.serial, s.batch, s.station, cert.issued_at]))
                .map_err(db)?;
                issued += 1;
                out.born += 1;
            }
            Some(f) => {
                // Recorded (the store knows every certificate) and revoked at once (RFC 5280: unspecified).
                cert.status = CertStatus::Revoked { at: s.now, reason: 0 };
                insert_cert(tx, &cert)?;
                tx.prepare_cached(
                    "INSERT INTO flags (cert_serial, batch_id, reason, flagged_at) VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut q| q.execute(params![cert.serial, s.batch, f.name(), s.now]))
                .map_err(db)?;
                out.flagged.push((cert.serial.clone(), f));
            }
        }
    }
    let flagged = i64::try_from(out.flagged.len()).unwrap_or(i64::MAX);
    tx.prepare_cached("UPDATE batches SET issued = ?1, flagged = flagged + ?2 WHERE id = ?3")
        .and_then(|mut q| q.execute(params![issued, flagged, s.batch]))
        .map_err(db)?;
    tx.prepare_cached(
        "INSERT INTO syncs (station, batch_id, last_seq, head) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (station, batch_id) DO UPDATE SET last_seq = excluded.last_seq, head = excluded.head",
    )
    .and_then(|mut q| q.execute(params![s.station, s.batch, i64::try_from(s.to_seq).unwrap_or(i64::MAX), s.to_head]))
    .map_err(db)?;
    Ok(out)
}

fn revoke(tx: &Transaction<'_>, serial: &str, reason: u8, at: i64) -> Result<(), StoreError> {
    let status: Option<String> = opt(tx
        .prepare_cached("SELECT status FROM certificates WHERE serial = ?1")
        .and_then(|mut q| q.query_row([serial], |r| r.get(0))))?;
    match status.as_deref() {
        None => Err(StoreError::CertUnknown { serial: serial.into() }),
        Some("good") => {
            tx.prepare_cached(
                "UPDATE certificates SET status = 'revoked', revoked_at = ?1, revocation_reason = ?2 WHERE serial = ?3",
            )
            .and_then(|mut q| q.execute(params![at, i64::from(reason), serial]))
            .map_err(db)?;
            Ok(())
        }
        Some(_) => Err(StoreError::CertRevoked { serial: serial.into() }),
    }
}

/// Every good certificate of the device, and its ownership when owned, in this transaction.
fn revoke_device(tx: &Transaction<'_>, r: &DeviceRevocation, head: &mut Head) -> Result<DeviceRevoked, StoreError> {
    let serials: Vec<String> = tx
        .prepare_cached(
            "SELECT serial FROM certificates WHERE device_serial = ?1 AND status = 'good' ORDER BY issued_at, serial",
        )
        .and_then(|mut q| q.query_map([&r.device_serial], |row| row.get(0))?.collect())
        .map_err(db)?;
    let owned = ownership_query(tx, &r.device_serial)?.is_some_and(|o| o.status == OwnershipStatus::Owned);
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

fn add_manufacturer(tx: &Transaction<'_>, m: &ManufacturerRecord) -> Result<(), StoreError> {
    let r = tx
        .prepare_cached("INSERT INTO manufacturers (name, cert_der, spki_sha256, added_at) VALUES (?1, ?2, ?3, ?4)")
        .and_then(|mut q| q.execute(params![m.name, m.cert_der, m.spki_sha256, m.added_at]));
    match r {
        Ok(_) => Ok(()),
        Err(e) if is_constraint(&e) => {
            let by_name: Option<String> = opt(tx
                .prepare_cached("SELECT name FROM manufacturers WHERE name = ?1 OR spki_sha256 = ?2")
                .and_then(|mut q| q.query_row([&m.name, &m.spki_sha256], |r| r.get(0))))?;
            Err(StoreError::ManufacturerExists { name: by_name.unwrap_or_else(|| m.name.clone()) })
        }
        Err(e) => Err(db(e)),
    }
}

fn claim(tx: &Transaction<'_>, claims: &[Claim], via: &str, at: i64) -> Result<u64, StoreError> {
    let mut n = 0u64;
    for c in claims {
        let new = tx
            .prepare_cached(
                "INSERT INTO owned_devices (device_serial, via, since, manufacturer_spki, birth_sha256) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (device_serial) DO NOTHING",
            )
            .and_then(|mut q| q.execute(params![c.device_serial, via, at, c.manufacturer_spki, c.birth_sha256]))
            .map_err(db)?;
        if new == 1 {
            n += 1;
            continue;
        }
        // A claim made by bare serial before claims named the birth: bound now.
        tx.prepare_cached(
            "UPDATE owned_devices SET manufacturer_spki = ?1, birth_sha256 = ?2 \
             WHERE device_serial = ?3 AND via = 'claim' AND birth_sha256 IS NULL",
        )
        .and_then(|mut q| q.execute(params![c.manufacturer_spki, c.birth_sha256, c.device_serial]))
        .map_err(db)?;
        if let Some(o) = ownership_query(tx, &c.device_serial)? {
            check_claim(&o, c)?;
        }
    }
    Ok(n)
}

type OwnershipRow = (String, String, i64, String, Option<i64>, Option<String>, Option<String>);

fn ownership_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OwnershipRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
}

fn ownership_query(c: &Connection, serial: &str) -> Result<Option<Ownership>, StoreError> {
    let row = opt(c
        .prepare_cached(
            "SELECT device_serial, via, since, status, changed_at, manufacturer_spki, birth_sha256 \
             FROM owned_devices WHERE device_serial = ?1",
        )
        .and_then(|mut q| q.query_row([serial], ownership_row)))?;
    row.map(|(device_serial, via, since, status, changed_at, manufacturer_spki, birth_sha256)| {
        Ok(Ownership {
            device_serial,
            via,
            since,
            status: OwnershipStatus::parse(&status)?,
            changed_at,
            manufacturer_spki,
            birth_sha256,
        })
    })
    .transpose()
}

fn owned(tx: &Transaction<'_>, serial: &str) -> Result<(), StoreError> {
    match ownership_query(tx, serial)? {
        None => Err(StoreError::NotOwned { device: serial.into() }),
        Some(o) if o.status == OwnershipStatus::Owned => Ok(()),
        Some(o) => Err(StoreError::DeviceReleased { device: serial.into(), status: o.status.as_str() }),
    }
}

fn release(tx: &Transaction<'_>, serial: &str, status: OwnershipStatus, at: i64) -> Result<(), StoreError> {
    if status == OwnershipStatus::Owned {
        return Err(StoreError::Database("release_device needs revoked or transferred".into()));
    }
    owned(tx, serial)?;
    tx.prepare_cached("UPDATE owned_devices SET status = ?1, changed_at = ?2 WHERE device_serial = ?3")
        .and_then(|mut q| q.execute(params![status.as_str(), at, serial]))
        .map_err(db)?;
    Ok(())
}

fn publish(tx: &Transaction<'_>, a: &Artifact) -> Result<(), StoreError> {
    let latest: Option<i64> = tx
        .prepare_cached("SELECT MAX(version) FROM artifacts WHERE kind = ?1")
        .and_then(|mut q| q.query_row([&a.kind], |r| r.get(0)))
        .map_err(db)?;
    let version = i64::try_from(a.version).map_err(|_| StoreError::Database("version out of range".into()))?;
    if let Some(latest) = latest {
        if version <= latest {
            return Err(StoreError::NotNewer { kind: a.kind.clone(), latest: latest as u64, offered: a.version });
        }
    }
    tx.prepare_cached("INSERT INTO artifacts (kind, version, body, published_at) VALUES (?1, ?2, ?3, ?4)")
        .and_then(|mut q| q.execute(params![a.kind, version, a.body, a.published_at]))
        .map_err(db)?;
    Ok(())
}

fn own_by_voucher(
    tx: &Transaction<'_>,
    serial: &str,
    via: &str,
    a: &Artifact,
    held: &Precondition,
) -> Result<(), StoreError> {
    match held {
        Precondition::VoucherHeld { device_serial, .. } if device_serial == serial => check(tx, held, "")?,
        _ => return Err(StoreError::Database(format!("own_by_voucher needs VoucherHeld for {serial}, not {held:?}"))),
    }
    if let Some(o) = ownership_query(tx, serial)? {
        if o.status == OwnershipStatus::Revoked {
            return Err(StoreError::DeviceReleased { device: serial.into(), status: o.status.as_str() });
        }
    }
    tx.prepare_cached(
        "INSERT INTO owned_devices (device_serial, via, since) VALUES (?1, ?2, ?3)
         ON CONFLICT (device_serial) DO UPDATE SET via = excluded.via, since = excluded.since, status = 'owned', changed_at = NULL",
    )
    .and_then(|mut q| q.execute(params![serial, via, a.published_at]))
    .map_err(db)?;
    Ok(())
}

fn crl_number(tx: &Transaction<'_>, ca: &str) -> Result<u64, StoreError> {
    let n: i64 = tx
        .prepare_cached(
            "INSERT INTO crl_numbers (ca, last) VALUES (?1, 1)
             ON CONFLICT (ca) DO UPDATE SET last = crl_numbers.last + 1 RETURNING last",
        )
        .and_then(|mut q| q.query_row([ca], |r| r.get(0)))
        .map_err(db)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn issue(tx: &Transaction<'_>, i: &Issuance, head: &mut Head) -> Result<(), StoreError> {
    for p in &i.preconditions {
        check(tx, p, &i.cert.serial)?;
    }
    insert_cert(tx, &i.cert)?;
    append(tx, &i.audit, head)
}

fn insert_cert(tx: &Transaction<'_>, c: &CertRecord) -> Result<(), StoreError> {
    let (status, revoked_at, reason) = match c.status {
        CertStatus::Good => ("good", None, None),
        CertStatus::Revoked { at, reason } => ("revoked", Some(at), Some(i64::from(reason))),
    };
    let r = tx
        .prepare_cached(
            "INSERT INTO certificates (serial, ca, profile, subject, device_serial, not_before, not_after, issued_at,
             spki_sha256, replaces, status, revoked_at, revocation_reason, der)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )
        .and_then(|mut st| {
            st.execute(params![
                c.serial,
                c.ca,
                c.profile,
                c.subject,
                c.device_serial,
                c.not_before,
                c.not_after,
                c.issued_at,
                c.spki_sha256,
                c.replaces,
                status,
                revoked_at,
                reason,
                c.der
            ])
        });
    match r {
        Ok(_) => {}
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
            return Err(StoreError::DuplicateSerial { serial: c.serial.clone() })
        }
        Err(e) => return Err(ctx("insert certificate")(e)),
    }
    Ok(())
}

fn token(tx: &Transaction<'_>, t: &TokenRecord) -> Result<(), StoreError> {
    let r = tx
        .prepare_cached(
            "INSERT INTO tokens (token_hash, device_serial, created_at, expires_at, used_at, cert_serial)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut st| {
            st.execute(params![t.token_hash, t.device_serial, t.created_at, t.expires_at, t.used_at, t.cert_serial])
        });
    match r {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
            Err(StoreError::TokenExists)
        }
        Err(e) => Err(ctx("insert token")(e)),
    }
}

/// Append to the chain after `head` (read inside this transaction) and advance it.
fn append(tx: &Transaction<'_>, ev: &AuditEvent, head: &mut Head) -> Result<(), StoreError> {
    let seq = head.seq + 1;
    let seq_u = u64::try_from(seq).map_err(|_| StoreError::Database(format!("negative audit seq {seq}")))?;
    let hash = audit_hash(&head.hash, seq_u, ev);
    tx.prepare_cached(
        "INSERT INTO audit (seq, at, actor, action, target, detail, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut st| st.execute(params![seq, ev.at, ev.actor, ev.action, ev.target, ev.detail, head.hash, hash]))
    .map_err(ctx("append audit"))?;
    *head = Head { seq, hash };
    Ok(())
}

const BATCH_SELECT: &str =
    "SELECT b.id, b.product, b.quota, b.issued, b.refused, b.flagged, b.valid_from, b.valid_until,
     b.status, b.created_at, (SELECT COUNT(*) FROM batch_serials s WHERE s.batch_id = b.id) FROM batches b";

fn count(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(u64::try_from(r.get::<_, i64>(i)?).unwrap_or(0))
}

fn batch_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BatchRecord> {
    let status: String = r.get(8)?;
    Ok(BatchRecord {
        id: r.get(0)?,
        product: r.get(1)?,
        quota: count(r, 2)?,
        issued: count(r, 3)?,
        refused: count(r, 4)?,
        flagged: count(r, 5)?,
        valid_from: r.get(6)?,
        valid_until: r.get(7)?,
        status: if status == "open" { BatchStatus::Open } else { BatchStatus::Closed },
        created_at: r.get(9)?,
        allowlist: count(r, 10)?,
    })
}

/// A station by `name` or by `cert_serial` (the column is ours, never the caller's).
fn station_query(c: &Connection, column: &'static str, value: &str) -> Result<Option<StationRecord>, StoreError> {
    let sql = format!("SELECT name, cert_serial, status, created_at, revoked_at FROM stations WHERE {column} = ?1");
    let row: Option<(String, String, String, i64, Option<i64>)> = c
        .prepare_cached(&sql)
        .and_then(|mut q| {
            q.query_row([value], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))).optional()
        })
        .map_err(db)?;
    let Some((name, cert_serial, status, created_at, revoked_at)) = row else { return Ok(None) };
    let mut q =
        c.prepare_cached("SELECT batch_id FROM station_batches WHERE station = ?1 ORDER BY batch_id").map_err(db)?;
    let batches = q.query_map([&name], |r| r.get(0)).map_err(db)?.collect::<Result<Vec<String>, _>>().map_err(db)?;
    let status =
        if status == "active" { StationStatus::Active } else { StationStatus::Revoked { at: revoked_at.unwrap_or(0) } };
    Ok(Some(StationRecord { name, cert_serial, batches, status, created_at }))
}

const CERT_COLS: &str = "serial, ca, profile, subject, device_serial, not_before, not_after, issued_at, spki_sha256, replaces, status, revoked_at, revocation_reason, der, replaced_by";

fn cert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CertRecord> {
    let status: String = r.get(10)?;
    let status = if status == "revoked" {
        let reason: Option<i64> = r.get(12)?;
        CertStatus::Revoked {
            at: r.get::<_, Option<i64>>(11)?.unwrap_or(0),
            reason: reason.and_then(|v| u8::try_from(v).ok()).unwrap_or(0),
        }
    } else {
        CertStatus::Good
    };
    Ok(CertRecord {
        serial: r.get(0)?,
        ca: r.get(1)?,
        profile: r.get(2)?,
        subject: r.get(3)?,
        device_serial: r.get(4)?,
        not_before: r.get(5)?,
        not_after: r.get(6)?,
        issued_at: r.get(7)?,
        spki_sha256: r.get(8)?,
        replaces: r.get(9)?,
        replaced_by: r.get(14)?,
        status,
        der: r.get(13)?,
    })
}

fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, AuditEvent, String, String)> {
    Ok((
        r.get(0)?,
        AuditEvent { at: r.get(1)?, actor: r.get(2)?, action: r.get(3)?, target: r.get(4)?, detail: r.get(5)? },
        r.get(6)?,
        r.get(7)?,
    ))
}

impl Store for SqliteStore {
    fn record_issuance(&self, issuance: Issuance) -> Result<(), StoreError> {
        self.submit_unit(Op::Issue(Box::new(issuance)))
    }

    fn create_token(&self, token: TokenRecord, audit: AuditEvent) -> Result<(), StoreError> {
        self.submit_unit(Op::Token(token, audit))
    }

    fn token(&self, token_hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.read(|c| {
            let mut st = c
                .prepare_cached("SELECT token_hash, device_serial, created_at, expires_at, used_at, cert_serial FROM tokens WHERE token_hash = ?1")
                .map_err(db)?;
            st.query_row(
                [token_hash],
                |r| {
                    Ok(TokenRecord {
                        token_hash: r.get(0)?,
                        device_serial: r.get(1)?,
                        created_at: r.get(2)?,
                        expires_at: r.get(3)?,
                        used_at: r.get(4)?,
                        cert_serial: r.get(5)?,
                    })
                },
            )
            .optional()
            .map_err(db)
        })
    }

    fn append_audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        self.submit_unit(Op::Audit(event))
    }

    fn certificate(&self, serial: &str) -> Result<Option<CertRecord>, StoreError> {
        self.read(|c| {
            let mut st =
                c.prepare_cached(&format!("SELECT {CERT_COLS} FROM certificates WHERE serial = ?1")).map_err(db)?;
            st.query_row([serial], cert_row).optional().map_err(db)
        })
    }

    fn list_certificates(&self, q: &CertQuery) -> Result<Vec<CertRecord>, StoreError> {
        self.read(|c| {
            // Only the filters given, so that the planner can use an index for
            // them (`?1 IS NULL OR ...` hides it: a scan of every certificate).
            let mut args: Vec<&dyn rusqlite::ToSql> = Vec::new();
            let mut conds = Vec::new();
            for (col, op, v) in [
                ("device_serial", "=", q.device_serial.as_ref().map(|v| v as &dyn rusqlite::ToSql)),
                ("ca", "=", q.ca.as_ref().map(|v| v as &dyn rusqlite::ToSql)),
                ("not_after", "<=", q.expiring_before.as_ref().map(|v| v as &dyn rusqlite::ToSql)),
                ("not_after", ">=", q.expiring_after.as_ref().map(|v| v as &dyn rusqlite::ToSql)),
                ("profile", "=", q.profile.as_ref().map(|v| v as &dyn rusqlite::ToSql)),
            ] {
                if let Some(v) = v {
                    args.push(v);
                    conds.push(format!("{col} {op} ?{}", args.len()));
                }
            }
            let filter = if conds.is_empty() { String::new() } else { format!("WHERE {}", conds.join(" AND ")) };
            // SQLite sorts whole rows (the DER with them): 4x the CPU of reading them
            // for 20,000 certificates. So all of them are sorted here, and a limited
            // list sorts only the rowids in SQL and reads just those rows.
            let limit = q.limit.map(i64::from);
            let sql = match limit {
                None => format!("SELECT {CERT_COLS} FROM certificates {filter}"),
                Some(_) => {
                    args.push(&limit);
                    format!(
                        "SELECT {CERT_COLS} FROM certificates WHERE rowid IN
                           (SELECT rowid FROM certificates {filter} ORDER BY issued_at DESC, serial LIMIT ?{})",
                        args.len()
                    )
                }
            };
            let mut st = c.prepare_cached(&sql).map_err(db)?;
            let rows = st.query_map(args.as_slice(), cert_row).map_err(db)?;
            let mut rows = rows.collect::<Result<Vec<_>, _>>().map_err(db)?;
            crate::newest_first(&mut rows);
            Ok(rows)
        })
    }

    fn count_certificates(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            let n: i64 = c.query_row("SELECT COUNT(*) FROM certificates", [], |r| r.get(0)).map_err(db)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn audit_entries(&self, from: u64, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(|c| {
            let from = i64::try_from(from).unwrap_or(i64::MAX);
            let mut st = c
                .prepare_cached("SELECT seq, at, actor, action, target, detail, prev_hash, hash FROM audit WHERE seq >= ?1 ORDER BY seq LIMIT ?2")
                .map_err(db)?;
            let rows = st.query_map(params![from, i64::from(limit)], audit_row).map_err(db)?;
            rows.map(|r| {
                let (seq, event, prev_hash, hash) = r.map_err(db)?;
                Ok(AuditEntry { seq: u64::try_from(seq).unwrap_or(0), event, prev_hash, hash })
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
        self.read(|c| {
            let mut st = c.prepare_cached(&format!("{BATCH_SELECT} WHERE b.id = ?1")).map_err(db)?;
            st.query_row([id], batch_row).optional().map_err(db)
        })
    }

    fn list_batches(&self) -> Result<Vec<BatchRecord>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(&format!("{BATCH_SELECT} ORDER BY b.created_at DESC, b.id")).map_err(db)?;
            let rows = st.query_map([], batch_row).map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn close_batch(&self, id: &str, audit: AuditEvent) -> Result<(), StoreError> {
        self.submit_unit(Op::CloseBatch(id.to_string(), audit))
    }

    fn unborn_serials(&self, id: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let mut st = c
                .prepare_cached(
                    "SELECT s.device_serial FROM batch_serials s LEFT JOIN births b ON b.device_serial = s.device_serial
                     WHERE s.batch_id = ?1 AND b.device_serial IS NULL ORDER BY s.position LIMIT ?2",
                )
                .map_err(db)?;
            let rows = st.query_map(params![id, i64::from(limit)], |r| r.get(0)).map_err(db)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(db)
        })
    }

    fn add_station(&self, station: StationRecord, cert: CertRecord, audit: AuditEvent) -> Result<(), StoreError> {
        self.submit_unit(Op::AddStation(Box::new(station), Box::new(cert), audit))
    }

    fn station(&self, name: &str) -> Result<Option<StationRecord>, StoreError> {
        self.read(|c| station_query(c, "name", name))
    }

    fn station_by_cert(&self, cert_serial: &str) -> Result<Option<StationRecord>, StoreError> {
        self.read(|c| station_query(c, "cert_serial", cert_serial))
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
        self.read(|c| {
            c.prepare_cached("SELECT cert_serial FROM delegations WHERE station = ?1 AND batch_id = ?2")
                .and_then(|mut q| q.query_row([station, batch], |r| r.get(0)).optional())
                .map_err(db)
        })
    }

    fn sync_state(&self, station: &str, batch: &str) -> Result<(u64, String), StoreError> {
        self.read(|c| sync_state_tx(c, station, batch))
    }

    fn apply_sync(&self, sync: SyncUpload) -> Result<SyncOutcome, StoreError> {
        match self.submit(Op::Sync(Box::new(sync)))? {
            Done::Synced(o) => Ok(o),
            other => Err(StoreError::Database(format!("a sync answered {other:?}"))),
        }
    }

    fn add_manufacturer(&self, m: ManufacturerRecord, audit: AuditEvent) -> Result<(), StoreError> {
        self.submit_unit(Op::AddManufacturer(Box::new(m), audit))
    }

    fn manufacturers(&self) -> Result<Vec<ManufacturerRecord>, StoreError> {
        self.read(|c| {
            let mut st = c
                .prepare_cached("SELECT name, cert_der, spki_sha256, added_at FROM manufacturers ORDER BY name")
                .map_err(db)?;
            let rows = st
                .query_map([], |r| {
                    Ok(ManufacturerRecord {
                        name: r.get(0)?,
                        cert_der: r.get(1)?,
                        spki_sha256: r.get(2)?,
                        added_at: r.get(3)?,
                    })
                })
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn claim_devices(&self, claims: Vec<Claim>, via: &str, at: i64, audit: AuditEvent) -> Result<u64, StoreError> {
        match self.submit(Op::Claim(claims, via.into(), at, audit))? {
            Done::Count(n) => Ok(n),
            other => Err(StoreError::Database(format!("a claim answered {other:?}"))),
        }
    }

    fn ownership(&self, device_serial: &str) -> Result<Option<Ownership>, StoreError> {
        self.read(|c| ownership_query(c, device_serial))
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
        self.read(|c| {
            opt(c
                .prepare_cached(
                    "SELECT kind, version, body, published_at FROM artifacts WHERE kind = ?1 ORDER BY version DESC LIMIT 1",
                )
                .and_then(|mut q| {
                    q.query_row([kind], |r| {
                        Ok(Artifact {
                            kind: r.get(0)?,
                            version: r.get::<_, i64>(1)? as u64,
                            body: r.get(2)?,
                            published_at: r.get(3)?,
                        })
                    })
                }))
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
        self.read(|c| {
            let mut q = c
                .prepare_cached(
                    "SELECT serial, revoked_at, revocation_reason, not_after FROM certificates
                     WHERE ca = ?1 AND status = 'revoked' ORDER BY revoked_at, serial",
                )
                .map_err(db)?;
            let rows = q
                .query_map([ca], |r| {
                    let reason: Option<i64> = r.get(2)?;
                    Ok(RevokedCert {
                        serial: r.get(0)?,
                        revoked_at: r.get::<_, Option<i64>>(1)?.unwrap_or(0),
                        reason: reason.and_then(|v| u8::try_from(v).ok()).unwrap_or(0),
                        not_after: r.get(3)?,
                    })
                })
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn revocation_mark(&self, ca: &str) -> Result<(u64, i64), StoreError> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT COUNT(*), COALESCE(MAX(revoked_at), 0) FROM certificates WHERE ca = ?1 AND status = 'revoked'",
            )
            .and_then(|mut q| q.query_row([ca], |r| Ok((u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0), r.get(1)?))))
            .map_err(db)
        })
    }

    fn next_crl_number(&self, ca: &str, audit: AuditEvent) -> Result<u64, StoreError> {
        match self.submit(Op::CrlNumber(ca.into(), audit))? {
            Done::CrlNumber(n) => Ok(n),
            other => Err(StoreError::Database(format!("a CRL number answered {other:?}"))),
        }
    }

    fn flagged(&self, batch: &str) -> Result<Vec<(String, Flag)>, StoreError> {
        self.read(|c| {
            let mut q = c
                .prepare_cached(
                    "SELECT cert_serial, reason FROM flags WHERE batch_id = ?1 ORDER BY flagged_at, cert_serial",
                )
                .map_err(db)?;
            let rows = q.query_map([batch], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let (serial, reason) = row.map_err(db)?;
                let f = match reason.as_str() {
                    "off-allowlist" => Flag::OffAllowlist,
                    "clone" => Flag::Clone,
                    _ => Flag::Overbuild,
                };
                out.push((serial, f));
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;

    fn fresh() -> (tempfile::TempDir, SqliteStore) {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&d.path().join("store.db")).unwrap();
        (d, s)
    }

    #[test]
    fn conformance_suite() {
        let (_d, s) = fresh();
        conformance::run_all(&s);
    }

    #[cfg(unix)]
    #[test]
    fn the_store_and_its_wal_and_shm_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let (d, s) = fresh();
        s.append_audit(AuditEvent {
            at: 1,
            actor: "a".into(),
            action: "x".into(),
            target: "".into(),
            detail: "".into(),
        })
        .unwrap();
        for f in ["store.db", "store.db-wal", "store.db-shm"] {
            assert_eq!(mode(&d.path().join(f)), 0o600, "{f}");
        }
        drop(s);
        // One made 0644 before (an older release): tightened when opened.
        let old = d.path().join("old.db");
        drop(SqliteStore::open(&old).unwrap());
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = SqliteStore::open(&old).unwrap();
        assert_eq!(mode(&old), 0o600);
        drop(s);
    }

    #[test]
    fn migration_7_names_the_successor_of_renewals_recorded_before_it_and_revokes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("store.db");
        let (c1, mut c2, c3) = (conformance::cert("M7"), conformance::cert("M7"), conformance::cert("M7"));
        c2.replaces = Some(c1.serial.clone());
        {
            let s = SqliteStore::open(&path).unwrap();
            for c in [&c1, &c2, &c3] {
                let audit = AuditEvent {
                    at: 1,
                    actor: "a".into(),
                    action: "issue".into(),
                    target: c.serial.clone(),
                    detail: String::new(),
                };
                s.record_issuance(Issuance { cert: c.clone(), preconditions: vec![], audit }).unwrap();
            }
        }
        // The store as version 6 left it: no replaced_by column.
        let raw = Connection::open(&path).unwrap();
        raw.execute_batch(
            "ALTER TABLE certificates DROP COLUMN replaced_by; DELETE FROM schema_migrations WHERE version = 7",
        )
        .unwrap();
        drop(raw);
        let s = SqliteStore::open(&path).unwrap();
        let get = |serial: &str| s.certificate(serial).unwrap().unwrap();
        assert_eq!(get(&c1.serial).replaced_by.as_deref(), Some(c2.serial.as_str()));
        assert_eq!((get(&c2.serial).replaced_by, get(&c3.serial).replaced_by), (None, None));
        assert_eq!(get(&c1.serial).status, CertStatus::Good, "a past renewal is not revoked by the migration");
    }

    #[test]
    fn tampering_is_detected_at_the_edited_entry() {
        let (d, s) = fresh();
        for i in 0..5 {
            s.append_audit(AuditEvent {
                at: i,
                actor: "a".into(),
                action: "x".into(),
                target: "t".into(),
                detail: "d".into(),
            })
            .unwrap();
        }
        assert_eq!(s.verify_audit().unwrap().entries, 5);
        let raw = Connection::open(d.path().join("store.db")).unwrap();
        raw.execute("UPDATE audit SET detail = 'edited' WHERE seq = 3", []).unwrap();
        assert_eq!(
            s.verify_audit().unwrap_err(),
            StoreError::AuditBroken { seq: 3, reason: "hash does not match its content".into() }
        );
        raw.execute("UPDATE audit SET detail = 'd' WHERE seq = 3", []).unwrap();
        raw.execute("DELETE FROM audit WHERE seq = 4", []).unwrap();
        assert!(matches!(s.verify_audit(), Err(StoreError::AuditBroken { seq: 4, .. })));
    }

    #[test]
    fn two_handles_on_one_file_keep_one_chain() {
        let (d, a) = fresh();
        let b = SqliteStore::open(&d.path().join("store.db")).unwrap();
        std::thread::scope(|sc| {
            for st in [&a, &b] {
                sc.spawn(move || {
                    for i in 0..100 {
                        st.append_audit(AuditEvent {
                            at: i,
                            actor: "p".into(),
                            action: "x".into(),
                            target: String::new(),
                            detail: String::new(),
                        })
                        .unwrap();
                    }
                });
            }
        });
        assert_eq!(a.verify_audit().unwrap().entries, 200);
        assert_eq!(b.verify_audit().unwrap(), a.verify_audit().unwrap());
    }

    #[test]
    fn survives_reopen_and_migrates_once() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("store.db");
        let c = conformance::cert("P-1");
        {
            let s = SqliteStore::open(&p).unwrap();
            s.record_issuance(Issuance {
                cert: c.clone(),
                preconditions: vec![],
                audit: AuditEvent {
                    at: 1,
                    actor: "a".into(),
                    action: "issue".into(),
                    target: c.serial.clone(),
                    detail: String::new(),
                },
            })
            .unwrap();
        }
        let s = SqliteStore::open(&p).unwrap();
        assert_eq!(s.certificate(&c.serial).unwrap(), Some(c));
        let n: i64 =
            s.read(|c| c.query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0)).map_err(db)).unwrap();
        assert_eq!(n, MIGRATIONS.len() as i64);
    }

    #[test]
    fn a_failing_op_does_not_spoil_its_batch() {
        let (_d, s) = fresh();
        let dup = conformance::cert("B-1");
        let mk = |c: CertRecord| Issuance {
            audit: AuditEvent {
                at: 1,
                actor: "a".into(),
                action: "issue".into(),
                target: c.serial.clone(),
                detail: String::new(),
            },
            cert: c,
            preconditions: vec![],
        };
        s.record_issuance(mk(dup.clone())).unwrap();
        // Many writers at once so that good and failing ops share batches.
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

    /// The same as above, but deterministic: one hand-built batch through
    /// [`run_batch`], mixing successes with every kind of refusal.
    #[test]
    fn one_batch_with_refusals_commits_the_rest_on_one_chain() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("store.db");
        let mut conn = connect(&path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE).unwrap();
        migrate(&mut conn).unwrap();
        let ev = |target: &str| AuditEvent {
            at: 1,
            actor: "a".into(),
            action: "x".into(),
            target: target.into(),
            detail: String::new(),
        };
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
            Op::Issue(Box::new(Issuance { cert: c.clone(), preconditions: pre, audit: ev(&c.serial) }))
        };
        let (c1, c2, c3, c4) =
            (conformance::cert("D-1"), conformance::cert("D-1"), conformance::cert("D-1"), conformance::cert("D-1"));
        let ops = vec![
            Op::Token(tok.clone(), ev("token")),
            issue(&c1, vec![consume.clone()]),
            issue(&c2, vec![consume]),
            issue(&CertRecord { serial: c1.serial.clone(), ..c3.clone() }, vec![]),
            issue(&c3, vec![Precondition::CertIsGood { serial: "00".into() }]),
            Op::Audit(ev("admin")),
            Op::Token(tok, ev("token again")),
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
        drop(conn);
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.count_certificates().unwrap(), 2);
        assert_eq!(s.token("70aa").unwrap().unwrap().cert_serial, Some(c1.serial.clone()));
        assert_eq!(s.verify_audit().unwrap().entries, 4);
        let targets: Vec<String> = s.audit_entries(1, 10).unwrap().into_iter().map(|e| e.event.target).collect();
        assert_eq!(targets, vec!["token".to_string(), c1.serial, "admin".into(), c4.serial]);
    }
}
