//! The shared store: PostgreSQL, for several authority nodes on one database.
//!
//! Same contract as [`crate::sqlite::SqliteStore`], the same engine
//! (`src/engine/`: every rule, every statement, the group commit) and
//! the same conformance suite. This file holds what is PostgreSQL's own:
//!
//! - **Writes**: the engine's group commit runs its operations, each in its
//!   own SAVEPOINT, inside one READ COMMITTED transaction on the store's
//!   write connection, and commits once (one WAL flush, `synchronous_commit =
//!   on`). The transaction begins, locks the head and opens the first
//!   savepoint in one round trip, and advances the head and commits in one;
//!   statements are prepared once per connection; the group's audit entries
//!   go in one multi-row INSERT.
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
//!   Reads run on the caller's thread and see every committed write; so do
//!   writes, on the thread of the caller that leads the group commit.
//!   Text ties in listings sort bytewise (`COLLATE "C"`), as SQLite sorts
//!   them, whatever the database's locale.
//!
//! The `postgres` client is synchronous: it runs a small tokio runtime of its
//! own and must not be called on a thread that drives async tasks (the
//! server calls the authority through `spawn_blocking`): neither a read nor
//! a write of this store. Dropping the store
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
use std::sync::{Condvar, Mutex};

use postgres::error::SqlState;
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls, SimpleQueryMessage, Statement};

use crate::engine::{Arg, Backend, Engine, HasEngine, Head, Row, Sql, SqlError, Value, Writer};
use crate::StoreError;

/// Most operations committed in one transaction.
pub const MAX_BATCH: usize = crate::engine::MAX_BATCH;

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
    (9, "0009_keys.sql", include_str!("../migrations/postgres/0009_keys.sql")),
    (10, "0010_console.sql", include_str!("../migrations/postgres/0010_console.sql")),
    (11, "0011_fleet.sql", include_str!("../migrations/postgres/0011_fleet.sql")),
    (12, "0012_events.sql", include_str!("../migrations/postgres/0012_events.sql")),
    (13, "0013_batch_profile.sql", include_str!("../migrations/postgres/0013_batch_profile.sql")),
    (14, "0014_templates.sql", include_str!("../migrations/postgres/0014_templates.sql")),
    (15, "0015_cert_template.sql", include_str!("../migrations/postgres/0015_cert_template.sql")),
    (16, "0016_batch_tpm_attestation.sql", include_str!("../migrations/postgres/0016_batch_tpm_attestation.sql")),
    (17, "0017_non_canonical_key.sql", include_str!("../migrations/postgres/0017_non_canonical_key.sql")),
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

/// A connection and the statements prepared on it.
pub(crate) struct Conn {
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
pub(crate) struct Pool {
    url: String,
    state: Mutex<PoolState>,
    freed: Condvar,
}

pub(crate) struct PoolState {
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

/// The engine's statement in PostgreSQL's dialect: text orderings bytewise
/// (`COLLATE "C"`, as SQLite sorts, whatever the database's locale), the
/// rows a check reads locked (`FOR UPDATE`), and the serial as a limited
/// listing's key.
fn dialect(sql: &str) -> String {
    sql.replace("{c}", " COLLATE \"C\"").replace("{lock}", " FOR UPDATE").replace("{key}", "serial")
}

fn sql_error(e: postgres::Error) -> SqlError {
    if is_unique(&e) {
        SqlError::Conflict(msg(&e))
    } else {
        SqlError::Failed(db(e))
    }
}

fn bad(what: String) -> SqlError {
    SqlError::Failed(StoreError::Database(what))
}

/// An argument as the prepared statement's parameter type wants it.
fn param<'a>(a: &Arg<'a>, ty: &Type) -> Result<Box<dyn ToSql + Sync + 'a>, SqlError> {
    let range = |v: i64| bad(format!("{v} does not fit a {ty} parameter"));
    Ok(match *a {
        Arg::Int(v) if *ty == Type::INT4 => Box::new(i32::try_from(v).map_err(|_| range(v))?),
        Arg::Int(v) if *ty == Type::INT2 => Box::new(i16::try_from(v).map_err(|_| range(v))?),
        Arg::Int(v) => Box::new(v),
        Arg::Text(s) => Box::new(s),
        Arg::Blob(b) => Box::new(b),
        Arg::Null if *ty == Type::INT4 => Box::new(None::<i32>),
        Arg::Null if *ty == Type::INT2 => Box::new(None::<i16>),
        Arg::Null if *ty == Type::INT8 => Box::new(None::<i64>),
        Arg::Null if *ty == Type::BYTEA => Box::new(None::<&[u8]>),
        Arg::Null => Box::new(None::<&str>),
    })
}

/// A column as the engine reads it, by its type.
fn value(r: &postgres::Row, i: usize) -> Result<Value, SqlError> {
    let ty = r.columns()[i].type_();
    let get = |e: postgres::Error| bad(format!("column {i}: {e}"));
    let v = if *ty == Type::INT8 {
        r.try_get::<_, Option<i64>>(i).map_err(get)?.map(Value::Int)
    } else if *ty == Type::INT4 {
        r.try_get::<_, Option<i32>>(i).map_err(get)?.map(|v| Value::Int(v.into()))
    } else if *ty == Type::INT2 {
        r.try_get::<_, Option<i16>>(i).map_err(get)?.map(|v| Value::Int(v.into()))
    } else if *ty == Type::BYTEA {
        r.try_get::<_, Option<Vec<u8>>>(i).map_err(get)?.map(Value::Blob)
    } else {
        r.try_get::<_, Option<String>>(i).map_err(get)?.map(Value::Text)
    };
    Ok(v.unwrap_or(Value::Null))
}

impl Conn {
    fn prepared(&mut self, sql: &str) -> Result<Statement, SqlError> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(&dialect(sql)).map_err(sql_error)?;
        self.stmts.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    fn run<T>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        f: impl FnOnce(&mut Client, &Statement, &[&(dyn ToSql + Sync)]) -> Result<T, postgres::Error>,
    ) -> Result<T, SqlError> {
        let st = self.prepared(sql)?;
        let params = args.iter().zip(st.params()).map(|(a, ty)| param(a, ty)).collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
        f(&mut self.client, &st, &refs).map_err(sql_error)
    }
}

impl Sql for Conn {
    fn query(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, SqlError> {
        let rows = self.run(sql, args, |c, st, p| c.query(st, p))?;
        rows.iter().map(|r| (0..r.len()).map(|i| value(r, i)).collect::<Result<_, _>>().map(Row)).collect()
    }

    fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, SqlError> {
        self.run(sql, args, |c, st, p| c.execute(st, p))
    }
}

/// The write connection, opened again when it was lost.
pub(crate) struct PgWriter {
    url: String,
    conn: Option<Conn>,
}

impl PgWriter {
    fn conn(&mut self) -> Result<&mut Conn, StoreError> {
        if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.conn = None;
            self.conn = Some(connect(&self.url, true).map_err(reconnect_failed)?);
        }
        self.conn.as_mut().ok_or(StoreError::Closed)
    }

    fn simple(&mut self, sql: &str, what: &'static str) -> Result<Vec<SimpleQueryMessage>, StoreError> {
        self.conn()?.client.simple_query(sql).map_err(ctx(what))
    }
}

impl Sql for PgWriter {
    fn query(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, SqlError> {
        self.conn().map_err(SqlError::Failed)?.query(sql, args)
    }

    fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, SqlError> {
        self.conn().map_err(SqlError::Failed)?.exec(sql, args)
    }
}

/// Every writing transaction first locks the one row of `audit_head`: see the module's documentation.
impl Writer for PgWriter {
    fn begin(&mut self, savepoint: bool) -> Result<Head, StoreError> {
        const BEGIN: &str =
            "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE";
        let msgs = match savepoint {
            true => self.simple(&format!("{BEGIN}; SAVEPOINT op"), "begin"),
            false => self.simple(BEGIN, "begin"),
        }?;
        let head = msgs.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((r.get(0).map(str::parse::<i64>), r.get(1).map(str::to_string))),
            _ => None,
        });
        match head {
            Some((Some(Ok(seq)), Some(hash))) => Ok(Head { seq, hash }),
            Some(_) => Err(StoreError::Database("the audit head row is unreadable (audit_head, id 1)".into())),
            None => Err(StoreError::Database("the audit head row is missing (audit_head, id 1)".into())),
        }
    }

    fn savepoint(&mut self, keep: bool) -> Result<(), StoreError> {
        let sql = if keep { "RELEASE SAVEPOINT op; SAVEPOINT op" } else { "ROLLBACK TO SAVEPOINT op" };
        self.simple(sql, "savepoint").map(|_| ())
    }

    fn commit(&mut self, start: &Head, end: &Head) -> Result<(), StoreError> {
        if end == start {
            return self.simple("COMMIT", "commit").map(|_| ());
        }
        // The head's values go into the text: a number, and a hash this store computed (hex).
        if !end.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::Database(format!("audit hash {:?} is not hex", end.hash)));
        }
        let sql = format!("UPDATE audit_head SET seq = {}, hash = '{}' WHERE id = 1; COMMIT", end.seq, end.hash);
        self.simple(&sql, "advance audit head and commit").map(|_| ())
    }

    fn rollback(&mut self) {
        if let Some(c) = self.conn.as_mut() {
            let _ = c.client.batch_execute("ROLLBACK");
        }
    }

    fn exact_chunks(&self) -> bool {
        true
    }
}

impl Backend for Pool {
    type Writer = PgWriter;

    fn read<T>(&self, f: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut conn = self.take()?;
        let r = f(&mut conn);
        self.give(conn);
        r
    }
}

/// The PostgreSQL store.
pub struct PgStore {
    url: String,
    engine: std::sync::Arc<Engine<Pool>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("url", &redact(&self.url)).finish_non_exhaustive()
    }
}

impl HasEngine for PgStore {
    type Backend = Pool;

    fn engine(&self) -> &std::sync::Arc<Engine<Pool>> {
        &self.engine
    }
}

impl PgStore {
    /// For benchmarks and tests only: write `load` as it is, without
    /// preconditions, audit or fleet summaries (rebuild them afterwards).
    #[doc(hidden)]
    pub fn bulk_load(&self, load: crate::BulkLoad) -> Result<(), StoreError> {
        crate::engine::fleet::bulk_load(self, load)
    }

    /// Connect to the database at `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`),
    /// and apply the migrations it lacks.
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
        let pool = Pool {
            url: url.to_string(),
            state: Mutex::new(PoolState { idle: Vec::new(), open: 0 }),
            freed: Condvar::new(),
        };
        let writer = PgWriter { url: url.to_string(), conn: Some(w) };
        let store = Self { url: url.to_string(), engine: Engine::new(pool, writer) };
        crate::engine::fleet::ensure_built(&store)?;
        Ok(store)
    }

    /// The highest migration applied.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.engine.backend.read(|db| {
            match db.query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[])?.pop() {
                Some(mut r) => r.int(0),
                None => Ok(0),
            }
        })
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        let writer = self.engine.writer().conn.take();
        close(writer.into_iter().collect());
        if let Ok(mut st) = self.engine.backend.state.lock() {
            let idle = std::mem::take(&mut st.idle);
            close(idle);
        }
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
    use crate::engine::{checks, SqlExt as _};
    use crate::prelude::*;
    use crate::{AuditEvent, Issuance, Precondition, TokenRecord};

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
        // Each file's number is its version, and the versions are 1, 2, ... with no gap.
        for (i, (v, name, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(name[..4].parse::<i64>().unwrap(), *v, "{name}");
            assert_eq!(*v, i as i64 + 1, "{name}");
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
                        conformance::fleet_matches_rebuild(&s);
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
        batch_profiles_round_trip,
        templates_round_trip,
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
        a_hand_over_is_one_transaction_under_renewals,
        a_commissioning_supersedes_the_devices_other_certificates_but_its_births,
        a_key_is_certified_for_one_device_only,
        blocked_keys_are_refused_on_every_path,
        a_presented_certificate_is_read_as_its_separate_reads_say,
        blocking_revokes_the_keys_certificates_once,
        a_withdrawn_token_enrolls_nothing,
        clones_racing_with_one_key_get_one_certificate,
        a_console_link_opens_one_session_once,
        fleet_overview_counts_every_state,
        audit_search_pages_and_filters,
        events_are_recorded_with_their_change_and_only_then,
        webhook_cursors_are_per_webhook_and_leased_to_one_owner,
        expiring_certificates_are_announced_once_per_threshold_in_pages,
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
        assert_eq!(a.schema_version().unwrap(), MIGRATIONS[MIGRATIONS.len() - 1].0);
        let n = a.engine.backend.read(|db| db.opt("SELECT COUNT(*) FROM schema_migrations", &[])?.unwrap().count(0));
        assert_eq!(n.unwrap(), MIGRATIONS.len() as u64);
        assert_eq!(a.verify_audit().unwrap().entries, 1);
    }

    #[test]
    fn migration_7_names_the_successor_of_renewals_recorded_before_it_and_revokes_nothing() {
        let tdb = create_test_database(&test_base_url(), "store_m7").unwrap();
        checks::migration_7_names_the_successor_of_renewals_recorded_before_it_and_revokes_nothing(
            &|| Box::new(PgStore::open(&tdb.url).unwrap()),
            &|sql| raw(&tdb.url, sql),
        );
    }

    #[test]
    fn migration_16_keeps_the_tpm_attestation_of_batches_that_required_it() {
        let tdb = create_test_database(&test_base_url(), "store_m16").unwrap();
        checks::migration_16_keeps_the_tpm_attestation_of_batches_that_required_it(
            &|| Box::new(PgStore::open(&tdb.url).unwrap()),
            &|sql| raw(&tdb.url, sql),
        );
    }

    #[test]
    fn tampering_is_detected_at_the_edited_entry() {
        let (tdb, s) = fresh("tamper");
        checks::tampering_is_detected_at_the_edited_entry(&s, &mut |sql| raw(&tdb.url, sql));
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
            template: None,
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
        checks::a_failing_op_does_not_spoil_its_batch(&s);
    }

    #[test]
    fn births_in_bulk_are_judged_as_one_by_one() {
        let ((t1, s1), (t2, s2)) = (fresh("bulk1"), fresh("bulk2"));
        let mut w1 = PgWriter { url: t1.url.clone(), conn: None };
        let mut w2 = PgWriter { url: t2.url.clone(), conn: None };
        // A group's writes in statements of their exact size, each a round
        // trip under the lock: the check counts them (9 and 14, not 11 and 17).
        assert!(w1.exact_chunks());
        checks::births_in_bulk_are_judged_as_one_by_one((&mut w1, &s1), (&mut w2, &s2));
        close(w1.conn.take().into_iter().chain(w2.conn.take()).collect());
    }

    /// The engine's check; and the head row ends where the chain does.
    #[test]
    fn one_batch_with_refusals_commits_the_rest_on_one_chain() {
        let (tdb, s) = fresh("onebatch");
        let mut w = PgWriter { url: tdb.url.clone(), conn: None };
        checks::one_batch_with_refusals_commits_the_rest_on_one_chain(&mut w, &s);
        close(w.conn.take().into_iter().collect());
        let head = s.engine.backend.read(|db| {
            let mut r = db.opt("SELECT seq, hash FROM audit_head WHERE id = 1", &[])?.unwrap();
            Ok((r.count(0)?, r.text(1)?))
        });
        assert_eq!(head.unwrap(), (6, s.verify_audit().unwrap().head));
    }

    /// Run `sql` on the database at `url`, on a connection of its own.
    fn raw(url: &str, sql: &str) {
        let mut c = connect(url, false).unwrap();
        c.client.batch_execute(sql).unwrap();
        close(vec![c]);
    }
}
