//! Checks of the engine that need a backend's own hands (a raw write
//! connection, an edit behind the store's back, an older schema): each
//! backend's tests run them under the same names.

use super::{run_batch, Arg, Head, Row, Sql, SqlError, Writer};
use crate::conformance;
use crate::ops::{Done, Op};
use crate::{AuditEvent, CertRecord, CertStatus, Issuance, Precondition, Store, StoreError, TokenRecord};

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
}

impl Sql for Spy<'_> {
    fn query(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, SqlError> {
        self.w.query(sql, args)
    }

    fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, SqlError> {
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
}

/// Deterministic: one hand-built batch through [`run_batch`] on the raw
/// write connection `w` (of a fresh, migrated database), mixing successes
/// with every kind of refusal; then, through `s` on the same database, what
/// was committed: the successes, on one chain. A batch runs without
/// savepoints, and again with them only when an operation failed after it
/// changed something.
pub(crate) fn one_batch_with_refusals_commits_the_rest_on_one_chain(w: &mut dyn Writer, s: &dyn Store) {
    let mut w = Spy { w, log: Vec::new() };
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
