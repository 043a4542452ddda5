//! What a write costs the store, in instructions (for `valgrind --tool=callgrind`
//! on a busy machine, where CPU time is noise): N enrollments, then N renewals
//! of them, then N/2 device revocations, one at a time through the ordinary
//! path on a SQLite store. Each phase is its own function, so that
//! `callgrind_annotate --inclusive=yes` gives its instructions.
//!
//! ```sh
//! cargo build --release -p iotpki-store --example write_cost
//! valgrind --tool=callgrind --callgrind-out-file=cg.out target/release/examples/write_cost 2000
//! callgrind_annotate --inclusive=yes cg.out | grep phase
//! ```
//!
//! It uses only what the store had before issue #18, so the same file
//! measures the store before and after the fleet summaries.

use iotpki_store::{AuditEvent, CertRecord, CertStatus, DeviceRevocation, Issuance, Precondition, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(2_000);
    let dir = tempfile::tempdir()?;
    let store = iotpki_store::sqlite::SqliteStore::open(&dir.path().join("w.sqlite"))?;
    let first = enroll_phase(&store, n)?;
    let _ = renew_phase(&store, &first)?;
    revoke_phase(&store, n / 2)?;
    println!("{n} enrollments, {n} renewals, {} device revocations", n / 2);
    Ok(())
}

fn ev(action: &str, target: &str) -> AuditEvent {
    AuditEvent { at: 1_000, actor: "bench".into(), action: action.into(), target: target.into(), detail: String::new() }
}

fn cert(i: usize, gen: usize) -> CertRecord {
    let dev = format!("WC-{i:08}");
    CertRecord {
        serial: format!("{gen:02x}{i:030x}"),
        ca: "operational".into(),
        profile: "device".into(),
        subject: format!("CN={dev}"),
        device_serial: Some(dev),
        not_before: 1_000 + gen as i64,
        not_after: 1_000 + 90 * 86_400 + gen as i64,
        issued_at: 1_000 + gen as i64,
        spki_sha256: format!("{gen:02x}{i:062x}"),
        replaces: None,
        replaced_by: None,
        template: None,
        status: CertStatus::Good,
        der: vec![0x30; 560],
    }
}

#[inline(never)]
fn enroll_phase(store: &dyn Store, n: usize) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let c = cert(i, 1);
        out.push(c.serial.clone());
        let audit = ev("enroll", &c.serial);
        store.record_issuance(Issuance { cert: c, preconditions: vec![], audit })?;
    }
    Ok(out)
}

#[inline(never)]
fn renew_phase(store: &dyn Store, old: &[String]) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut out = Vec::with_capacity(old.len());
    for (i, o) in old.iter().enumerate() {
        let mut c = cert(i, 2);
        c.replaces = Some(o.clone());
        out.push(c.serial.clone());
        let audit = ev("reenroll", &c.serial);
        let pre = vec![Precondition::Supersede { serial: o.clone(), now: 2_000 }];
        store.record_issuance(Issuance { cert: c, preconditions: pre, audit })?;
    }
    Ok(out)
}

#[inline(never)]
fn revoke_phase(store: &dyn Store, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    for i in 0..n {
        store.revoke_device(DeviceRevocation {
            device_serial: format!("WC-{i:08}"),
            reason: 1,
            at: 3_000,
            actor: "bench".into(),
            detail: "reason=keyCompromise".into(),
        })?;
    }
    Ok(())
}
