//! The fleet console's overview at scale (issue #18): fill a store with N
//! devices in realistic states, build the fleet summaries from the registry
//! (as a store migrated to version 11 does when first opened), then time the
//! public `Fleet::fleet_overview` (365-day timeline) five times and report the
//! median. SQLite always; PostgreSQL too when `IOTPKI_TEST_PG` is set (a
//! database of its own, dropped afterwards).
//!
//! ```sh
//! cargo run --release -p iotpki-store --example fleet_overview -- --devices 1000000
//! ```
//!
//! The fill goes through a test-only path (`bulk_load`: rows written as they
//! are, in multi-row INSERTs), since a million enrollments through the
//! ordinary path take tens of minutes; then the summaries are built by the
//! same rebuild a migrated store runs, and a few hundred writes through the
//! ordinary path (enrollments, renewals, revocations, refusals) move them the
//! way the authority does. Only the overview is timed for the figure.
//!
//! Devices, by serial number modulo 100: 5 % born (a birth certificate only),
//! 3 % commissioned (claimed, no operational certificate), 2 % revoked, 90 %
//! with an operational certificate of 90 days issued in the last 120 days
//! (so about a quarter expired, a quarter expiring, half active), a third of
//! those renewed once (their predecessor superseded). Each device has a birth
//! certificate (20 years). About 2.2 certificates per device. The DER is
//! `IOTPKI_BENCH_DER_BYTES` (default 64) filler bytes: the overview never reads it.

use std::time::{Duration, Instant};

use iotpki_store::{
    AuditEvent, AuditFilter, BatchRecord, BatchStatus, BulkLoad, CertQuery, CertRecord, CertStatus, FleetOverview,
    Issuance, Precondition, StationRecord, StationStatus, Store,
};

const DAY: i64 = 86_400;
const CHUNK: usize = 20_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut devices: usize = 1_000_000;
    let mut into: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--devices" => devices = args.next().ok_or("--devices N")?.replace('_', "").parse()?,
            // Fill this SQLite store (an authority's store.db, for scripts/bench-console) and keep it.
            "--store" => into = Some(args.next().ok_or("--store PATH")?.into()),
            other => return Err(format!("unknown argument {other:?} (--devices N [--store PATH])").into()),
        }
    }
    let der_len: usize = std::env::var("IOTPKI_BENCH_DER_BYTES").ok().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;

    let dir = tempfile::tempdir()?;
    let keep = into.is_some();
    let path = into.unwrap_or_else(|| dir.path().join("fleet.sqlite"));
    let sqlite = iotpki_store::sqlite::SqliteStore::open(&path)?;
    println!("SQLite ({}):", path.display());
    run(&sqlite, &|l| sqlite.bulk_load(l), devices, der_len, now)?;
    let size =
        std::fs::metadata(&path)?.len() + std::fs::metadata(path.with_extension("sqlite-wal")).map_or(0, |m| m.len());
    println!("  store: {:.0} MiB", size as f64 / (1 << 20) as f64);
    drop(sqlite);
    if keep {
        return Ok(());
    }

    if let Ok(base) = std::env::var("IOTPKI_TEST_PG") {
        let db = iotpki_store::postgres::create_test_database(&base, "bench_fleet")?;
        let pg = iotpki_store::postgres::PgStore::open(&db.url)?;
        println!("PostgreSQL ({}):", iotpki_store::postgres::redact(&base));
        run(&pg, &|l| pg.bulk_load(l), devices, der_len, now)?;
        drop(pg);
        drop(db);
    }
    Ok(())
}

type Load<'a> = &'a dyn Fn(BulkLoad) -> Result<(), iotpki_store::StoreError>;

fn run(
    store: &dyn Store,
    load: Load<'_>,
    devices: usize,
    der_len: usize,
    now: i64,
) -> Result<(), Box<dyn std::error::Error>> {
    let ev = |action: &str, target: &str| AuditEvent {
        at: now,
        actor: "bench".into(),
        action: action.into(),
        target: target.into(),
        detail: String::new(),
    };
    let batch = BatchRecord {
        id: "B".into(),
        product: "widget".into(),
        quota: devices as u64 + 1,
        issued: 0,
        refused: 0,
        flagged: 0,
        valid_from: 0,
        valid_until: now + 365 * DAY,
        status: BatchStatus::Open,
        created_at: now - 400 * DAY,
        allowlist: 0,
        profile: Default::default(),
        template: None,
        tpm_attestation: false,
    };
    store.create_batch(batch, vec![], ev("batch.create", "B"))?;
    let st = cert("line-1", None, "station", now - 400 * DAY, now + 3650 * DAY, der_len);
    let station = StationRecord {
        name: "line-1".into(),
        cert_serial: st.serial.clone(),
        batches: vec!["B".into()],
        status: StationStatus::Active,
        created_at: now - 400 * DAY,
    };
    store.add_station(station, st, ev("station.add", "line-1"))?;

    let t = Instant::now();
    let mut certs = 0usize;
    for start in (0..devices).step_by(CHUNK) {
        let l = devices_load(start..(start + CHUNK).min(devices), now, der_len);
        certs += l.certs.len();
        load(l)?;
    }
    println!(
        "  filled {devices} devices, {certs} certificates in {:.1} s (bulk, test-only path)",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    store.rebuild_fleet()?;
    println!(
        "  summaries built from the registry in {:.1} s (what a store migrated to version 11 does once)",
        t.elapsed().as_secs_f64()
    );

    // A few hundred writes through the ordinary path: the summaries move with them.
    let t = Instant::now();
    let writes = ordinary_writes(store, now, der_len)?;
    println!("  {writes} ordinary writes (enroll, renew, revoke, refuse) in {:.2} s", t.elapsed().as_secs_f64());

    let mut times = Vec::new();
    let mut last: Option<FleetOverview> = None;
    for _ in 0..5 {
        let t = Instant::now();
        let o = store.fleet_overview(now, 365)?;
        times.push(t.elapsed());
        last = Some(o);
    }
    let o = last.ok_or("no overview")?;
    let mut sorted = times.clone();
    sorted.sort();
    let ms = |d: &Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
    println!(
        "  fleet_overview(now, 365): {} ms (calls: {})",
        ms(&sorted[2]),
        times.iter().map(ms).collect::<Vec<_>>().join(", ")
    );
    let s = &o.states;
    println!(
        "  states: born {} commissioned {} active {} expiring {} expired {} revoked {} total {}",
        s.born, s.commissioned, s.active, s.expiring, s.expired, s.revoked, s.total
    );
    println!(
        "  next 365 days: {} expiring; today: {} issued, {} renewed, {} refused",
        o.expiring_per_day.iter().sum::<u64>(),
        o.issued_per_day[29].count,
        o.renewed_per_day[29].count,
        o.refused_per_day[29].count
    );
    // The console's other pages, once each (not the issue's target; for the record).
    let time =
        |what: &str, f: &dyn Fn() -> Result<usize, iotpki_store::StoreError>| -> Result<(), iotpki_store::StoreError> {
            let t = Instant::now();
            let n = f()?;
            println!("  {what}: {} ms ({n} rows)", ms(&t.elapsed()));
            Ok(())
        };
    time("stations_activity", &|| store.stations_activity().map(|v| v.len()))?;
    time("batch_progress", &|| store.batch_progress().map(|v| v.len()))?;
    time("revocation_stats", &|| store.revocation_stats().map(|v| v.len()))?;
    let refusals = AuditFilter { action_prefix: Some("refuse.".into()), limit: 100, ..Default::default() };
    time("audit_search refuse.*, 100", &|| store.audit_search(&refusals).map(|v| v.len()))?;
    time("a device's certificates and audit", &|| {
        let q = CertQuery { device_serial: Some("SN-00000042".into()), limit: Some(1000), ..Default::default() };
        let certs = store.list_certificates(&q)?;
        let mut n = certs.len();
        for c in &certs {
            let f = AuditFilter { target: Some(c.serial.clone()), limit: 200, ..Default::default() };
            n += store.audit_search(&f)?.len();
        }
        Ok(n)
    })?;
    // The summaries the ordinary writes kept equal those rebuilt from the registry.
    store.rebuild_fleet()?;
    if store.fleet_overview(now, 365)? != o {
        return Err("the summaries kept by the writes differ from a rebuild".into());
    }
    println!("  equal to a rebuild from the registry after the ordinary writes: yes");
    if s.total != devices as u64 + 100 {
        return Err(format!("expected {} devices, the overview counts {}", devices + 100, s.total).into());
    }
    Ok(())
}

/// 100 enrollments, 100 renewals of them, 50 revocations, 100 refusals, through the ordinary path, from 8 threads.
fn ordinary_writes(store: &dyn Store, now: i64, der_len: usize) -> Result<usize, Box<dyn std::error::Error>> {
    let n = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|sc| -> Result<(), String> {
        let hs: Vec<_> = (0..8)
            .map(|w| {
                let n = &n;
                sc.spawn(move || -> Result<(), String> {
                    for i in (w..100).step_by(8) {
                        let dev = format!("LIVE-{i:03}");
                        let c = cert(&dev, Some(&dev), "device", now, now + 90 * DAY, der_len);
                        let serial = c.serial.clone();
                        let audit = AuditEvent {
                            at: now,
                            actor: format!("device:{dev}"),
                            action: "enroll".into(),
                            target: serial.clone(),
                            detail: String::new(),
                        };
                        store
                            .record_issuance(Issuance { cert: c, preconditions: vec![], audit: audit.clone() })
                            .map_err(|e| e.to_string())?;
                        let mut r = cert(&dev, Some(&dev), "device", now, now + 91 * DAY, der_len);
                        r.replaces = Some(serial.clone());
                        let renewed = r.serial.clone();
                        let pre = vec![Precondition::Supersede { serial, now }];
                        store
                            .record_issuance(Issuance {
                                cert: r,
                                preconditions: pre,
                                audit: AuditEvent { action: "reenroll".into(), ..audit.clone() },
                            })
                            .map_err(|e| e.to_string())?;
                        if i % 2 == 0 {
                            store
                                .revoke(&renewed, 1, now, AuditEvent { action: "revoke".into(), ..audit.clone() })
                                .map_err(|e| e.to_string())?;
                        }
                        let refusal = AuditEvent { action: "refuse.enroll".into(), target: dev.clone(), ..audit };
                        store.record_refusal(None, refusal).map_err(|e| e.to_string())?;
                        n.fetch_add(if i % 2 == 0 { 4 } else { 3 }, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join().map_err(|_| "a writer panicked".to_string())??;
        }
        Ok(())
    })?;
    Ok(n.into_inner())
}

/// A small deterministic mix (splitmix64).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn cert(name: &str, device: Option<&str>, profile: &str, issued_at: i64, not_after: i64, der_len: usize) -> CertRecord {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let k = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let h = mix(k);
    CertRecord {
        serial: format!("{h:016x}{k:016x}"),
        ca: if profile == "device" && not_after - issued_at > 3000 * DAY { "manufacturing" } else { "operational" }
            .into(),
        profile: profile.into(),
        subject: format!("CN={name}"),
        device_serial: device.map(str::to_string),
        not_before: issued_at,
        not_after,
        issued_at,
        spki_sha256: format!("{:016x}{k:048x}", mix(h)),
        replaces: None,
        replaced_by: None,
        template: None,
        status: CertStatus::Good,
        der: vec![0x30; der_len],
    }
}

/// Devices `range`, in their states (see the module's documentation).
fn devices_load(range: std::ops::Range<usize>, now: i64, der_len: usize) -> BulkLoad {
    let mut l = BulkLoad::default();
    for i in range {
        let dev = format!("SN-{i:08}");
        let r = mix(i as u64);
        let born_at = now - 150 * DAY - (r % (200 * DAY as u64)) as i64;
        let birth = cert(&dev, Some(&dev), "device", born_at, born_at + 20 * 365 * DAY, der_len);
        l.births.push((dev.clone(), birth.serial.clone(), "B".into(), "line-1".into(), born_at));
        l.certs.push(birth);
        let kind = i % 100;
        if kind < 5 {
            continue;
        }
        l.owned.push((dev.clone(), born_at + DAY));
        if kind < 8 {
            continue;
        }
        let issued = now - ((r >> 20) % (120 * DAY as u64)) as i64;
        let mut op = cert(&dev, Some(&dev), "device", issued, issued + 90 * DAY, der_len);
        if kind < 10 {
            op.status = CertStatus::Revoked { at: now - DAY, reason: 1 };
        } else if kind % 3 == 0 {
            let mut old = cert(&dev, Some(&dev), "device", issued - 80 * DAY, issued + 10 * DAY, der_len);
            old.status = CertStatus::Revoked { at: issued, reason: 4 };
            old.replaced_by = Some(op.serial.clone());
            op.replaces = Some(old.serial.clone());
            l.certs.push(old);
        }
        l.certs.push(op);
    }
    l
}
