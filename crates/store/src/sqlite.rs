//! The embedded store: one SQLite file, WAL journal, `synchronous=FULL`.
//!
//! The engine (`src/engine/`) runs every rule and commits in groups; this
//! file holds what is SQLite's own: the connections (one writer, a few
//! readers), the migrations, the dialect (`?1` arguments), the mapping of
//! values and errors, and how a group's transaction starts: `BEGIN IMMEDIATE`
//! takes SQLite's write lock, so another process may write the same file (the
//! CLI while the server runs): the busy timeout waits for the lock, and the
//! audit chain's head is read inside each transaction, never cached.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::engine::{Arg, Backend, Engine, HasEngine, Head, Row, Sql, SqlError, Value, Writer};
use crate::StoreError;

/// Most operations committed in one transaction.
pub const MAX_BATCH: usize = crate::engine::MAX_BATCH;

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
    (9, include_str!("../migrations/sqlite/0009_keys.sql")),
    (10, include_str!("../migrations/sqlite/0010_console.sql")),
    (11, include_str!("../migrations/sqlite/0011_fleet.sql")),
    (12, include_str!("../migrations/sqlite/0012_events.sql")),
    (13, include_str!("../migrations/sqlite/0013_batch_profile.sql")),
    (14, include_str!("../migrations/sqlite/0014_templates.sql")),
    (15, include_str!("../migrations/sqlite/0015_cert_template.sql")),
    (16, include_str!("../migrations/sqlite/0016_batch_tpm_attestation.sql")),
    (17, include_str!("../migrations/sqlite/0017_non_canonical_key.sql")),
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

fn connect(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let c = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Database(format!("cannot open {}: {e}", path.display())))?;
    c.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
    c.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
    c.pragma_update(None, "synchronous", "FULL").map_err(db)?;
    c.set_prepared_statement_cache_capacity(STATEMENTS);
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

/// Statements prepared and kept per connection: the writer's forty or so, and
/// the shapes of its multi-row statements (audit entries, bulk births).
const STATEMENTS: usize = 256;

/// The engine's statement in SQLite's dialect: `?N` arguments, no collation
/// (SQLite compares text bytewise), no row locks (the write lock covers the
/// file), and `rowid` for a limited listing's keys.
fn dialect(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(i) = rest.find(['$', '{']) {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let (put, skip) = if rest.starts_with('$') {
            ("?", 1)
        } else if rest.starts_with("{c}") {
            ("", 3)
        } else if rest.starts_with("{lock}") {
            ("", 6)
        } else if rest.starts_with("{key}") {
            ("rowid", 5)
        } else {
            ("{", 1)
        };
        out.push_str(put);
        rest = &rest[skip..];
    }
    out.push_str(rest);
    out
}

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Arg::Int(v) => ValueRef::Integer(v),
            Arg::Text(s) => ValueRef::Text(s.as_bytes()),
            Arg::Blob(b) => ValueRef::Blob(b),
            Arg::Null => ValueRef::Null,
        }))
    }
}

fn sql_error(e: rusqlite::Error) -> SqlError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
            SqlError::Conflict(e.to_string())
        }
        _ => SqlError::Failed(db(e)),
    }
}

fn value(v: ValueRef<'_>) -> Result<Value, SqlError> {
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Text(t) => Value::Text(
            String::from_utf8(t.to_vec()).map_err(|e| SqlError::Failed(StoreError::Database(format!("text: {e}"))))?,
        ),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        ValueRef::Real(r) => return Err(SqlError::Failed(StoreError::Database(format!("unexpected real {r}")))),
    })
}

impl Sql for Connection {
    fn query(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, SqlError> {
        let mut st = self.prepare_cached(&dialect(sql)).map_err(sql_error)?;
        let n = st.column_count();
        let mut rows = st.query(rusqlite::params_from_iter(args)).map_err(sql_error)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(sql_error)? {
            let row = (0..n).map(|i| r.get_ref(i).map_err(sql_error).and_then(value)).collect::<Result<_, _>>()?;
            out.push(Row(row));
        }
        Ok(out)
    }

    fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, SqlError> {
        let mut st = self.prepare_cached(&dialect(sql)).map_err(sql_error)?;
        let n = st.execute(rusqlite::params_from_iter(args)).map_err(sql_error)?;
        Ok(n as u64)
    }
}

fn plain(c: &Connection, sql: &str) -> Result<(), StoreError> {
    c.prepare_cached(sql)
        .and_then(|mut st| st.execute([]))
        .map(|_| ())
        .map_err(|e| unavailable(&e).unwrap_or_else(|| StoreError::Database(format!("{sql}: {e}"))))
}

impl Writer for Connection {
    fn begin(&mut self, savepoint: bool) -> Result<Head, StoreError> {
        plain(self, "BEGIN IMMEDIATE")?;
        let head: Option<(i64, String)> = self
            .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .and_then(|mut st| st.query_row([], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(ctx("audit head"))?;
        if savepoint {
            plain(self, "SAVEPOINT op")?;
        }
        Ok(match head {
            Some((seq, hash)) => Head { seq, hash },
            None => Head { seq: 0, hash: crate::GENESIS_HASH.to_string() },
        })
    }

    fn savepoint(&mut self, keep: bool) -> Result<(), StoreError> {
        if keep {
            plain(self, "RELEASE op")?;
            plain(self, "SAVEPOINT op")
        } else {
            plain(self, "ROLLBACK TO op")
        }
    }

    fn commit(&mut self, _start: &Head, _end: &Head) -> Result<(), StoreError> {
        plain(self, "COMMIT")
    }

    fn rollback(&mut self) {
        if !self.is_autocommit() {
            let _ = self.execute_batch("ROLLBACK");
        }
    }
}

/// The read connections, taken in turn.
pub(crate) struct Readers {
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl Backend for Readers {
    type Writer = Connection;

    fn read<T>(&self, f: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let mut c = self.conns[i].lock().map_err(|_| StoreError::Database("a reader panicked".into()))?;
        f(&mut *c)
    }
}

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    engine: std::sync::Arc<Engine<Readers>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl HasEngine for SqliteStore {
    type Backend = Readers;

    fn engine(&self) -> &std::sync::Arc<Engine<Readers>> {
        &self.engine
    }
}

impl SqliteStore {
    /// For benchmarks and tests only: write `load` as it is, without
    /// preconditions, audit or fleet summaries (rebuild them afterwards).
    #[doc(hidden)]
    pub fn bulk_load(&self, load: crate::BulkLoad) -> Result<(), StoreError> {
        crate::engine::fleet::bulk_load(self, load)
    }

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
        let mut conns = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = connect(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
            conns.push(Mutex::new(r));
        }
        let readers = Readers { conns, next: AtomicUsize::new(0) };
        let store = Self { path: path.to_path_buf(), engine: Engine::new(readers, w) };
        crate::engine::fleet::ensure_built(&store)?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;
    use crate::engine::{checks, SqlExt as _};
    use crate::prelude::*;
    use crate::{AuditEvent, Issuance};

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
        checks::migration_7_names_the_successor_of_renewals_recorded_before_it_and_revokes_nothing(
            &|| Box::new(SqliteStore::open(&path).unwrap()),
            &|sql| Connection::open(&path).unwrap().execute_batch(sql).unwrap(),
        );
    }

    #[test]
    fn migration_16_keeps_the_tpm_attestation_of_batches_that_required_it() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("store.db");
        checks::migration_16_keeps_the_tpm_attestation_of_batches_that_required_it(
            &|| Box::new(SqliteStore::open(&path).unwrap()),
            &|sql| Connection::open(&path).unwrap().execute_batch(sql).unwrap(),
        );
    }

    #[test]
    fn tampering_is_detected_at_the_edited_entry() {
        let (d, s) = fresh();
        let raw = Connection::open(d.path().join("store.db")).unwrap();
        checks::tampering_is_detected_at_the_edited_entry(&s, &mut |sql| raw.execute_batch(sql).unwrap());
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
        let n = s.engine.backend.read(|db| db.opt("SELECT COUNT(*) FROM schema_migrations", &[])?.unwrap().count(0));
        assert_eq!(n.unwrap(), MIGRATIONS.len() as u64);
    }

    #[test]
    fn the_dialect_numbers_arguments_and_drops_what_sqlite_does_without() {
        assert_eq!(
            dialect("SELECT {key} FROM t WHERE a = $1 AND b = $12 ORDER BY c{c}{lock}"),
            "SELECT rowid FROM t WHERE a = ?1 AND b = ?12 ORDER BY c"
        );
        assert_eq!(dialect("x = '{'"), "x = '{'");
    }

    #[test]
    fn a_failing_op_does_not_spoil_its_batch() {
        let (_d, s) = fresh();
        checks::a_failing_op_does_not_spoil_its_batch(&s);
    }

    #[test]
    fn births_in_bulk_are_judged_as_one_by_one() {
        let ((d1, s1), (d2, s2)) = (fresh(), fresh());
        let mut w1 = connect(&d1.path().join("store.db"), OpenFlags::SQLITE_OPEN_READ_WRITE).unwrap();
        let mut w2 = connect(&d2.path().join("store.db"), OpenFlags::SQLITE_OPEN_READ_WRITE).unwrap();
        checks::births_in_bulk_are_judged_as_one_by_one((&mut w1, &s1), (&mut w2, &s2));
    }

    #[test]
    fn one_batch_with_refusals_commits_the_rest_on_one_chain() {
        let (d, s) = fresh();
        let mut w = connect(&d.path().join("store.db"), OpenFlags::SQLITE_OPEN_READ_WRITE).unwrap();
        checks::one_batch_with_refusals_commits_the_rest_on_one_chain(&mut w, &s);
    }
}
