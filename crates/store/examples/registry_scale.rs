//! The device registry at scale (issue #6): fill a store with N device
//! certificate records through the ordinary [`Store::record_issuance`] path
//! (many threads at once, so the writer's group commit batches them; every
//! record with its audit entry, same schema, same indexes), then time
//! "certificates that expire in the next 7 days" and report the store's size
//! per device.
//!
//! ```sh
//! cargo run --release -p iotpki-store --example registry_scale -- 1000000
//! cargo run --release -p iotpki-store --example registry_scale -- 1000000 postgres://iotpki@127.0.0.1:PORT/postgres
//! ```
//!
//! With N = 0 on PostgreSQL, nothing is added: the query runs on the records an
//! earlier run left in that database (filling a million takes minutes there).
//!
//! Certificates are spread evenly over the past year, each valid for one year
//! (a fleet renewing yearly), so the 7-day window holds about N × 7 / 365 of
//! them. The DER is random bytes of a real device certificate's length
//! (`IOTPKI_BENCH_DER_BYTES`, default 560): the store never parses it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use iotpki_store::{AuditEvent, CertQuery, CertRecord, CertStatus, Issuance, Store};

const YEAR: i64 = 365 * 86_400;
const WEEK: i64 = 7 * 86_400;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rows: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1_000_000);
    let pg = args.next();
    let der_len: usize = std::env::var("IOTPKI_BENCH_DER_BYTES").ok().map(|s| s.parse()).transpose()?.unwrap_or(560);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store.sqlite");
    let store: Box<dyn Store> = match &pg {
        Some(url) => Box::new(iotpki_store::postgres::PgStore::open(url)?),
        None => Box::new(iotpki_store::sqlite::SqliteStore::open(&path)?),
    };
    let before = store.count_certificates()?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let run = format!("{:08x}", rand_u64() as u32);

    // Fill: 64 threads, each record_issuance durable on return.
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| -> Result<(), String> {
        let workers: Vec<_> = (0..64)
            .map(|_| {
                s.spawn(|| -> Result<(), String> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= rows {
                            return Ok(());
                        }
                        let rec = record(&run, i, rows, now, der_len);
                        let audit = AuditEvent {
                            at: rec.issued_at,
                            actor: format!("device:{}", rec.device_serial.clone().unwrap_or_default()),
                            action: "cert.issue".into(),
                            target: rec.serial.clone(),
                            detail: format!("profile=device ca={}", rec.ca),
                        };
                        store
                            .record_issuance(Issuance { cert: rec, preconditions: vec![], audit })
                            .map_err(|e| e.to_string())?;
                        if i % 100_000 == 0 && i > 0 {
                            eprintln!("  {i} recorded, {:.0}/s", i as f64 / t.elapsed().as_secs_f64());
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| "a filling thread panicked".to_string())??;
        }
        Ok(())
    })?;
    let fill = t.elapsed();
    let total = store.count_certificates()?;
    println!(
        "filled {rows} certificate records in {:.1} s ({:.0}/s, 64 threads, durable group commits); store holds {total} (had {before})",
        fill.as_secs_f64(),
        rows as f64 / fill.as_secs_f64()
    );

    // The query, 7 times; the median, and the first (colder) one.
    let q = CertQuery { expiring_after: Some(now), expiring_before: Some(now + WEEK), ..Default::default() };
    let mut times = Vec::new();
    let mut found = 0;
    for _ in 0..7 {
        let t = Instant::now();
        let got = store.list_certificates(&q)?;
        times.push(t.elapsed());
        found = got.len();
        if got.iter().any(|c| c.not_after < now || c.not_after > now + WEEK) {
            return Err("the query returned a certificate outside the window".into());
        }
    }
    let first = times[0];
    times.sort();
    let median = times[times.len() / 2];
    let mut counts = Vec::new();
    let q1000 = CertQuery { limit: Some(1000), ..q.clone() };
    for _ in 0..7 {
        let t = Instant::now();
        store.list_certificates(&q1000)?;
        counts.push(t.elapsed());
    }
    counts.sort();
    println!(
        "expiring in the next 7 days: {found} certificates (expected about {}), median {} (first {}); first 1000 of them: median {}",
        total as i64 * WEEK / YEAR,
        ms(median),
        ms(first),
        ms(counts[counts.len() / 2])
    );
    drop(store);

    match &pg {
        None => {
            plan(&path, now)?;
            let mut bytes = 0u64;
            for f in std::fs::read_dir(dir.path())? {
                let f = f?;
                println!("  {} {} bytes", f.file_name().to_string_lossy(), f.metadata()?.len());
                bytes += f.metadata()?.len();
            }
            println!(
                "SQLite store size: {:.1} MiB for {total} certificates with their audit entries: {:.0} bytes per device",
                bytes as f64 / 1_048_576.0,
                bytes as f64 / total as f64
            );
        }
        Some(url) => {
            let mut c = postgres::Client::connect(url, postgres::NoTls)?;
            let r = c.query_one(
                "SELECT pg_database_size(current_database()), pg_total_relation_size('certificates'), pg_total_relation_size('audit')",
                &[],
            )?;
            let (db, certs, audit): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
            let plan: Vec<String> = c
                .query(
                    "EXPLAIN SELECT * FROM certificates WHERE not_after <= $1 AND not_after >= $2",
                    &[&(now + WEEK), &now],
                )?
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect();
            println!("plan: {}", plan.join(" | "));
            println!(
                "PostgreSQL: database {:.1} MiB, certificates (with indexes) {:.1} MiB, audit {:.1} MiB for {total} certificates: {:.0} bytes per device (certificates + audit)",
                db as f64 / 1_048_576.0,
                certs as f64 / 1_048_576.0,
                audit as f64 / 1_048_576.0,
                (certs + audit) as f64 / total as f64
            );
        }
    }
    Ok(())
}

/// What SQLite's planner does with the query the store sends (unlimited: no ORDER BY, sorted after).
fn plan(path: &std::path::Path, now: i64) -> Result<(), Box<dyn std::error::Error>> {
    let c = rusqlite::Connection::open(path)?;
    let mut st =
        c.prepare("EXPLAIN QUERY PLAN SELECT * FROM certificates WHERE not_after <= ?1 AND not_after >= ?2")?;
    let rows: Vec<String> =
        st.query_map(rusqlite::params![now + WEEK, now], |r| r.get::<_, String>(3))?.collect::<Result<_, _>>()?;
    println!("plan: {}", rows.join(" | "));
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0),
    );
    h.finish()
}

/// Device `i` of `n`: issued evenly over the past year, valid one year; a
/// time-ordered serial like the authority's (0x01, seconds, random bits).
fn record(run: &str, i: usize, n: usize, now: i64, der_len: usize) -> CertRecord {
    let issued_at = now - YEAR + (i as i64 * YEAR) / n.max(1) as i64;
    let device = format!("DEV-{run}-{i:08}");
    let mut der = Vec::with_capacity(der_len);
    while der.len() < der_len {
        der.extend_from_slice(&rand_u64().to_le_bytes());
    }
    der.truncate(der_len);
    CertRecord {
        serial: format!("01{:08x}{:022x}", issued_at as u32, u128::from(rand_u64()) << 24 | i as u128 & 0xff_ffff),
        ca: "operational".into(),
        profile: "device".into(),
        subject: format!("CN={device},serialNumber={device},O=Bench Fleet"),
        device_serial: Some(device),
        not_before: issued_at - 60,
        not_after: issued_at + YEAR,
        issued_at,
        spki_sha256: format!("{:016x}{:016x}{:016x}{:016x}", rand_u64(), rand_u64(), rand_u64(), rand_u64()),
        replaces: None,
        replaced_by: None,
        template: None,
        status: CertStatus::Good,
        der,
    }
}
