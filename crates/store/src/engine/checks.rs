//! Checks of the engine that need a backend's own hands (a raw write
//! connection, an edit behind the store's back, an older schema): each
//! backend's tests run them under the same names.

use super::{run_batch, Arg, Head, Row, Sql, SqlError, Writer};
use crate::conformance;
use crate::ops::{Done, Op};
use crate::{
    AuditEvent, CertRecord, CertStatus, Issuance, Precondition, StationRecord, StationStatus, Store, StoreError,
    TokenRecord,
};

fn ev(target: &str) -> AuditEvent {
    AuditEvent { at: 1, actor: "a".into(), action: "x".into(), target: target.into(), detail: "d".into() }
}

fn issuance(c: &CertRecord, pre: Vec<Precondition>) -> Issuance {
    Issuance { cert: c.clone(), preconditions: pre, audit: ev(&c.serial) }
}

/// Many writers at once on a fresh store, so that good and failing ops share
/// batches: every failing op gets its own error, every other one is committed.
pub(crate) fn a_failing_op_does_not_spoil_its_batch(s: &(dyn Store + 'static)) {
    let dup = conformance::cert("B-1");
    s.record_issuance(issuance(&dup, vec![])).unwrap();
    let results: Vec<bool> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..64)
            .map(|i| {
                let dup = dup.clone();
                sc.spawn(move || {
                    let c = if i % 4 == 0 { dup } else { conformance::cert("B-2") };
                    s.record_issuance(issuance(&c, vec![])).is_ok()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|ok| !**ok).count(), 16);
    assert_eq!(s.count_certificates().unwrap(), 1 + 48);
    assert_eq!(s.verify_audit().unwrap().entries, 1 + 48);
}

/// A write connection that notes how its transactions begin and end.
struct Spy<'a> {
    w: &'a mut dyn Writer,
    log: Vec<&'static str>,
    /// Statements run (each a round trip on PostgreSQL).
    statements: usize,
}

impl Sql for Spy<'_> {
    fn query(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, SqlError> {
        self.statements += 1;
        self.w.query(sql, args)
    }

    fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, SqlError> {
        self.statements += 1;
        self.w.exec(sql, args)
    }
}

impl Writer for Spy<'_> {
    fn begin(&mut self, savepoint: bool) -> Result<Head, StoreError> {
        self.log.push(if savepoint { "begin with savepoint" } else { "begin" });
        self.w.begin(savepoint)
    }

    fn savepoint(&mut self, keep: bool) -> Result<(), StoreError> {
        self.log.push(if keep { "release" } else { "roll back to savepoint" });
        self.w.savepoint(keep)
    }

    fn commit(&mut self, start: &Head, end: &Head) -> Result<(), StoreError> {
        self.log.push("commit");
        self.w.commit(start, end)
    }

    fn rollback(&mut self) {
        self.log.push("rollback");
        self.w.rollback()
    }

    fn exact_chunks(&self) -> bool {
        self.w.exact_chunks()
    }
}

/// Deterministic: one hand-built batch through [`run_batch`] on the raw
/// write connection `w` (of a fresh, migrated database), mixing successes
/// with every kind of refusal; then, through `s` on the same database, what
/// was committed: the successes, on one chain. A batch runs without
/// savepoints, and again with them only when an operation failed after it
/// changed something.
pub(crate) fn one_batch_with_refusals_commits_the_rest_on_one_chain(w: &mut dyn Writer, s: &dyn Store) {
    let mut w = Spy { w, log: Vec::new(), statements: 0 };
    // Refusals decided on what was read: one transaction, no savepoint.
    let unknown = Precondition::CertIsGood { serial: "00".into() };
    let ops = vec![
        Op::Audit(ev("before")),
        Op::Issue(Box::new(issuance(&conformance::cert("D-0"), vec![unknown]))),
        Op::Audit(ev("after")),
    ];
    assert_eq!(
        run_batch(&mut w, &ops, None),
        vec![Ok(Done::Unit), Err(StoreError::CertUnknown { serial: "00".into() }), Ok(Done::Unit)]
    );
    assert_eq!(std::mem::take(&mut w.log), ["begin", "commit"]);
    assert_eq!(s.count_certificates().unwrap(), 0);
    assert_eq!(s.verify_audit().unwrap().entries, 2);
    let w = &mut w;
    let tok = TokenRecord {
        token_hash: "70aa".into(),
        device_serial: "D-1".into(),
        created_at: 1,
        expires_at: 5_000,
        used_at: None,
        cert_serial: None,
        template: None,
    };
    let consume = Precondition::ConsumeToken { token_hash: "70aa".into(), device_serial: "D-1".into(), now: 1_500 };
    let issue = |c: &CertRecord, pre: Vec<Precondition>| Op::Issue(Box::new(issuance(c, pre)));
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
    assert_eq!(
        run_batch(w, &ops, None),
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
    // The duplicate serial failed in its INSERT, after its batch had changed
    // rows: that transaction was abandoned and the batch ran again, each
    // operation in a savepoint (none after the last).
    assert_eq!(
        w.log,
        ["begin", "rollback", "begin with savepoint", "release", "release", "roll back to savepoint"]
            .into_iter()
            .chain(["roll back to savepoint", "roll back to savepoint", "release", "roll back to savepoint", "commit"])
            .collect::<Vec<_>>()
    );
    assert_eq!(s.count_certificates().unwrap(), 2);
    assert_eq!(s.token("70aa").unwrap().unwrap().cert_serial, Some(c1.serial.clone()));
    assert_eq!(s.verify_audit().unwrap().entries, 2 + 4);
    let targets: Vec<String> = s.audit_entries(1, 10).unwrap().into_iter().map(|e| e.event.target).collect();
    assert_eq!(
        targets,
        vec!["before".to_string(), "after".into(), "token".into(), c1.serial, "admin".into(), c4.serial]
    );
}

/// An audit entry edited or deleted behind the store's back (`edit` runs SQL
/// on the database) is found at the entry.
pub(crate) fn tampering_is_detected_at_the_edited_entry(s: &dyn Store, edit: &mut dyn FnMut(&str)) {
    for i in 0..5 {
        s.append_audit(AuditEvent { at: i, ..ev("t") }).unwrap();
    }
    assert_eq!(s.verify_audit().unwrap().entries, 5);
    edit("UPDATE audit SET detail = 'edited' WHERE seq = 3");
    assert_eq!(
        s.verify_audit().unwrap_err(),
        StoreError::AuditBroken { seq: 3, reason: "hash does not match its content".into() }
    );
    edit("UPDATE audit SET detail = 'd' WHERE seq = 3");
    edit("DELETE FROM audit WHERE seq = 4");
    assert!(matches!(s.verify_audit(), Err(StoreError::AuditBroken { seq: 4, .. })));
}

/// Renewals recorded before migration 7 (no `replaced_by`): `open` opens the
/// store (migrating it), `edit` runs SQL on the database while none is open.
pub(crate) fn migration_7_names_the_successor_of_renewals_recorded_before_it_and_revokes_nothing(
    open: &dyn Fn() -> Box<dyn Store>,
    edit: &dyn Fn(&str),
) {
    let (c1, mut c2, c3) = (conformance::cert("M7"), conformance::cert("M7"), conformance::cert("M7"));
    c2.replaces = Some(c1.serial.clone());
    let s = open();
    for c in [&c1, &c2, &c3] {
        s.record_issuance(issuance(c, vec![])).unwrap();
    }
    drop(s);
    // The database as version 6 left it: no replaced_by column.
    edit("ALTER TABLE certificates DROP COLUMN replaced_by; DELETE FROM schema_migrations WHERE version = 7");
    let s = open();
    let get = |serial: &str| s.certificate(serial).unwrap().unwrap();
    assert_eq!(get(&c1.serial).replaced_by.as_deref(), Some(c2.serial.as_str()));
    assert_eq!((get(&c2.serial).replaced_by, get(&c3.serial).replaced_by), (None, None));
    assert_eq!(get(&c1.serial).status, CertStatus::Good, "a past renewal is not revoked by the migration");
}

/// Batches made before migration 16 required TPM attestation through an
/// artifact, `tpm-attestation/BATCH`: the migration moves that into the
/// batch, and a batch without the artifact requires nothing.
pub(crate) fn migration_16_keeps_the_tpm_attestation_of_batches_that_required_it(
    open: &dyn Fn() -> Box<dyn Store>,
    edit: &dyn Fn(&str),
) {
    let (required, plain) = (conformance::unique("M16A-"), conformance::unique("M16B-"));
    let s = open();
    conformance::batch(s.as_ref(), &required, 1, &[format!("{required}-0")]);
    conformance::batch(s.as_ref(), &plain, 1, &[format!("{plain}-0")]);
    let kind = format!("tpm-attestation/{required}");
    let art = crate::Artifact { kind, version: 1, body: b"births prove their key".to_vec(), published_at: 1 };
    s.publish_artifact(art, ev("tpm.require")).unwrap();
    drop(s);
    // The database as version 15 left it: no tpm_attestation column.
    edit("ALTER TABLE batches DROP COLUMN tpm_attestation; DELETE FROM schema_migrations WHERE version = 16");
    let s = open();
    assert!(s.batch(&required).unwrap().unwrap().tpm_attestation, "the artifact's batch still requires it");
    assert!(!s.batch(&plain).unwrap().unwrap().tpm_attestation);
    s.verify_audit().unwrap();
}

/// The same batches, stations, certificates and blocks on a store: what
/// [`births_in_bulk_are_judged_as_one_by_one`]'s births meet.
fn births_setup(s: &dyn Store, [held, before, born, revoked, blocked]: [&CertRecord; 5]) {
    let serials = |p: &str, n: usize| (0..n).map(|i| format!("{p}-{i}")).collect::<Vec<_>>();
    conformance::batch(s, "BA", 3, &serials("A", 6));
    conformance::batch(s, "BB", 10, &serials("B", 10));
    conformance::batch(s, "BC", 5, &serials("C", 5));
    conformance::batch(s, "BD", 70, &serials("D", 80));
    s.close_batch("BC", ev("close")).unwrap();
    let _ = conformance::station(s, "st-1", &["BA", "BB", "BC", "BD"]);
    let _ = conformance::station(s, "st-2", &["BB"]);
    s.revoke_station("st-2", 1_000, ev("revoke")).unwrap();
    // Active stations whose certificate authenticates nothing: revoked
    // alone, or its key blocked (and the certificate spared).
    for (name, c) in [("st-3", revoked), ("st-4", blocked)] {
        let st = StationRecord {
            name: name.into(),
            cert_serial: c.serial.clone(),
            batches: vec!["BB".into()],
            status: StationStatus::Active,
            created_at: 1,
        };
        s.add_station(st, c.clone(), ev("station.add")).unwrap();
    }
    s.revoke(&revoked.serial, 1, 1_000, ev("revoke")).unwrap();
    let block = vec![conformance::blocked(&blocked.spki_sha256)];
    s.block_keys(conformance::key_block(block, vec![], true, vec!["station".into()])).unwrap();
    // A key another device holds, a blocked key, a device with an operational
    // certificate before its birth, a device born already.
    s.record_issuance(issuance(held, vec![])).unwrap();
    s.block_keys(conformance::key_block(vec![conformance::blocked("b10c")], vec![], false, vec![])).unwrap();
    s.record_issuance(issuance(before, vec![])).unwrap();
    s.record_issuance(issuance(born, conformance::birth("BB", "st-1", "B-9", 1_000))).unwrap();
}

/// A group of births is judged in bulk as one by one would judge it: the same
/// births, meeting every refusal a birth can meet (and a quota that the
/// group's own births exhaust), go through [`run_batch`] as one group on `bulk`
/// and one operation at a time on `one` (two fresh stores, set up alike). The
/// results, the audit chains (to the head's hash), the batches' counts, the
/// certificates and the fleet's summaries are the same; the group ran in one
/// transaction, without savepoints. Then the same for a group of 75 births,
/// more than one statement takes.
pub(crate) fn births_in_bulk_are_judged_as_one_by_one(
    (bulk_w, bulk): (&mut dyn Writer, &dyn Store),
    (one_w, one): (&mut dyn Writer, &dyn Store),
) {
    let held = conformance::cert("X-1");
    let before = CertRecord { issued_at: 900, ..conformance::cert("B-8") };
    let born = conformance::cert("B-9");
    let station = |name: &str| CertRecord { profile: "station".into(), device_serial: None, ..conformance::cert(name) };
    let (revoked, blocked) = (station("st-3"), station("st-4"));
    for s in [bulk, one] {
        births_setup(s, [&held, &before, &born, &revoked, &blocked]);
    }
    let births = [
        ("A-0", "BA", "st-1", 1_000, None),
        ("A-1", "BA", "st-1", 1_000, None),
        ("B-0", "BB", "st-1", 1_000, None),
        ("A-2", "BA", "st-1", 1_000, None),
        ("A-3", "BA", "st-1", 1_000, None), // over the quota the three before took
        ("B-1", "BB", "st-1", 1_000, Some(held.spki_sha256.as_str())),
        ("B-2", "BB", "st-1", 1_000, Some("b10c")),
        ("B-9", "BB", "st-1", 1_000, None),
        ("Z-1", "BB", "st-1", 1_000, None),
        ("B-3", "BB", "st-2", 1_000, None),
        ("B-4", "NOPE", "st-1", 1_000, None),
        ("C-0", "BC", "st-1", 1_000, None),
        ("B-6", "BB", "st-1", 20_000, None),
        ("B-7", "BB", "ghost", 1_000, None),
        ("B-8", "BB", "st-1", 1_000, None),
        ("B-5", "BB", "st-1", 1_000, None),
        ("Y-1", "BB", "st-3", 1_000, None),
        ("Y-2", "BB", "st-4", 1_000, None),
    ];
    let ops: Vec<Op> = births
        .iter()
        .enumerate()
        .map(|(i, (device, batch, station, now, key))| {
            let mut c = conformance::cert(device);
            if let Some(k) = key {
                c.spki_sha256 = k.to_string();
            }
            if i == 2 {
                c.profile = "birth".into(); // a certificate the fleet does not count
            }
            Op::Issue(Box::new(issuance(&c, conformance::birth(batch, station, device, *now))))
        })
        .collect();
    // One by one, the birth refused for its key (read after the birth's own
    // writes) would have made the group run again with savepoints.
    let exact = bulk_w.exact_chunks();
    let (together, statements) = both_ways(&mut *bulk_w, &mut *one_w, &ops);
    // The 18 births' checks in one read, the 17 devices' summaries in another;
    // the 6 recorded in a statement per batch's quota (2), births and
    // certificates each in a chunk of 4 and one of 2 (4), or of 6 (2), the 4
    // summaries that moved in one (B-8's stays certified); the fleet's counter
    // and the audit entries (2). One by one: over 60.
    assert_eq!(statements, if exact { 9 } else { 11 }, "statements, exact sizes: {exact}");
    let refused: Vec<&str> = together
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| match e {
            StoreError::QuotaExhausted { .. } => "quota",
            StoreError::KeyInUse { .. } => "key in use",
            StoreError::KeyBlocked { .. } => "key blocked",
            StoreError::AlreadyBorn { .. } => "born",
            StoreError::SerialNotAllowed { .. } => "allowlist",
            StoreError::StationRevoked { .. } => "station revoked",
            StoreError::BatchUnknown { .. } => "batch unknown",
            StoreError::BatchClosed { .. } => "closed",
            StoreError::BatchOutsideWindow { .. } => "window",
            StoreError::StationUnknown { .. } => "station unknown",
            StoreError::StationCertificate { why, .. } if why == "it is revoked" => "station certificate revoked",
            StoreError::StationCertificate { why, .. } if why.contains("is blocked: found in fw.bin") => {
                "station key blocked"
            }
            _ => "other",
        })
        .collect();
    assert_eq!(
        refused,
        [
            "quota",
            "key in use",
            "key blocked",
            "born",
            "allowlist",
            "station revoked",
            "batch unknown",
            "closed",
            "window",
            "station unknown",
            "station certificate revoked",
            "station key blocked"
        ]
    );
    same_records(bulk, one, &ops);
    for now in [1_000, 1_500, 2_500] {
        assert_eq!(bulk.fleet_overview(now, 30).unwrap(), one.fleet_overview(now, 30).unwrap());
    }
    let o = bulk.fleet_overview(1_000, 30).unwrap();
    assert_eq!(o.states.born, 5, "B-9 before, A-0, A-1, A-2 and B-5 now (B-0's certificate is not a device's)");
    bulk.rebuild_fleet().unwrap();
    assert_eq!(bulk.fleet_overview(1_000, 30).unwrap(), one.fleet_overview(1_000, 30).unwrap(), "as rebuilt");

    // A group larger than a statement takes (2^MAX_SHIFT rows): its checks
    // and summaries are read in a chunk of 64 and a last one filled up to 16
    // with its last device again; its writes go in chunks of 64, 4 and 2, or
    // (PostgreSQL: exact sizes) of 64 and 6.
    // Batch BD's quota (70) is exhausted by the group's own births, and its
    // 11th birth is of a device off the allowlist.
    let ops: Vec<Op> = (0..75)
        .map(|i| {
            let device = if i == 10 { "D-99".to_string() } else { format!("D-{i}") };
            let c = conformance::cert(&device);
            Op::Issue(Box::new(issuance(&c, conformance::birth("BD", "st-1", &device, 1_000))))
        })
        .collect();
    let exact = bulk_w.exact_chunks();
    let (together, statements) = both_ways(bulk_w, one_w, &ops);
    // Reads: checks 2, summaries 2. Writes: the quota 1; births and
    // certificates in 64, 4 and 2 (6), or 64 and 6 (4); summaries in 64, 4
    // and 2 (3), or 64 and 6 (2); the fleet's counter 1 and the audit entries
    // in 64 and 6 (2).
    assert_eq!(statements, if exact { 14 } else { 17 }, "statements, exact sizes: {exact}");
    assert!(matches!(together[10], Err(StoreError::SerialNotAllowed { .. })), "{together:?}");
    assert!(together[..71].iter().enumerate().all(|(i, r)| i == 10 || r.is_ok()), "{together:?}");
    assert!(together[71..].iter().all(|r| matches!(r, Err(StoreError::QuotaExhausted { .. }))), "{together:?}");
    same_records(bulk, one, &ops);
    assert_eq!(bulk.batch("BD").unwrap().map(|b| b.issued), Some(70));
    assert_eq!(bulk.fleet_overview(1_000, 30).unwrap(), one.fleet_overview(1_000, 30).unwrap());
    assert_eq!(bulk.fleet_overview(1_000, 30).unwrap().states.born, 75, "5 before, and D-0 to D-70 but D-10");
}

/// `ops` run as one group on `bulk` (in one transaction, without savepoints)
/// and one at a time on `one`, with the same results: those results, and the
/// statements the group took.
fn both_ways(bulk: &mut dyn Writer, one: &mut dyn Writer, ops: &[Op]) -> (Vec<Result<Done, StoreError>>, usize) {
    let mut spy = Spy { w: bulk, log: Vec::new(), statements: 0 };
    let together = run_batch(&mut spy, ops, None);
    assert_eq!(spy.log, ["begin", "commit"], "one transaction, no savepoint");
    let alone: Vec<_> = ops.iter().flat_map(|op| run_batch(one, std::slice::from_ref(op), None)).collect();
    assert_eq!(together, alone);
    (together, spy.statements)
}

/// The two stores of [`both_ways`] hold the same audit chain, batches and
/// certificates of `ops`.
fn same_records(bulk: &dyn Store, one: &dyn Store, ops: &[Op]) {
    assert_eq!(bulk.verify_audit().unwrap(), one.verify_audit().unwrap(), "the same entries, in the same order");
    assert_eq!(bulk.list_batches().unwrap(), one.list_batches().unwrap());
    assert_eq!(bulk.count_certificates().unwrap(), one.count_certificates().unwrap());
    for op in ops {
        let Op::Issue(i) = op else { continue };
        assert_eq!(bulk.certificate(&i.cert.serial).unwrap(), one.certificate(&i.cert.serial).unwrap());
    }
}
