//! Every write rule, once: the operations, their preconditions, the birth,
//! quota and flag rules, sync, device revocation and the audit chain's append.

use super::reads::{ownership_of, sync_state_of};
use super::{Arg, Head, Row, Sql, SqlError, SqlExt as _, Writer};
use crate::ops::{Done, Op};
use crate::{
    audit_hash, check_claim, Artifact, AuditEvent, BatchProfile, BatchRecord, BatchStatus, CertRecord, CertStatus,
    Claim, DeviceRevocation, DeviceRevoked, ExpiringNoted, ExpiringScan, Flag, HandOver, HandedOver, Issuance,
    KeyBlock, KeysBlocked, ManufacturerRecord, OwnershipStatus, Precondition, StationRecord, StoreError, SyncOutcome,
    SyncUpload, TokenRecord, EVENT_BATCH_FLAGGED, EVENT_CERT_EXPIRING, EVENT_CERT_REVOKED, EVENT_DEVICE_REVOKED,
    EVENT_STATION_REVOKED,
};
use serde_json::json;

/// Most audit entries in one INSERT.
const AUDIT_ROWS: usize = 64;

/// RFC 5280's CRLReason affiliationChanged: the device went to another owner.
const AFFILIATION_CHANGED: u8 = 3;

/// RFC 5280's CRLReason superseded: the device's certificate replaced by another.
const SUPERSEDED: u8 = 4;

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The write connection as a transaction's operations see it: it notes
/// whether the running operation changed anything (a statement that is not a
/// plain `SELECT`, or that changed rows) or met an error (PostgreSQL then
/// refuses the rest of the transaction). An operation that fails after
/// either must be undone in the database, not only in memory.
pub(super) struct Watched<'a> {
    w: &'a mut dyn Writer,
    dirty: bool,
}

impl Watched<'_> {
    /// [`Writer::exact_chunks`] of the write connection.
    pub(super) fn exact_chunks(&self) -> bool {
        self.w.exact_chunks()
    }
}

impl Sql for Watched<'_> {
    fn query(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, SqlError> {
        let reads_only = sql.trim_start().get(..6).is_some_and(|k| k.eq_ignore_ascii_case("select"));
        self.dirty |= !reads_only;
        let r = self.w.query(sql, args);
        self.dirty |= r.is_err();
        r
    }

    fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, SqlError> {
        let r = self.w.exec(sql, args);
        self.dirty |= !matches!(r, Ok(0));
        r
    }
}

/// How a group commit's operations are kept apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isolation {
    /// No savepoints: an operation refused before it changed anything is
    /// forgotten in memory; one that fails after a change asks for the
    /// batch again with [`Isolation::Savepoints`] ([`Abort::Redo`]). Most
    /// batches are all successes, and a savepoint costs a round trip on
    /// PostgreSQL and a sub-journal of the pages it changes on SQLite.
    Optimistic,
    /// One savepoint per operation, rolled back when it fails.
    Savepoints,
}

/// Why a transaction is given up.
#[derive(Debug)]
pub(crate) enum Abort {
    /// The savepoint machinery failed: what the operation left behind is
    /// unknown, and nothing of the batch may be committed.
    Failed(StoreError),
    /// An operation failed after it changed something, without a savepoint
    /// to undo it: the batch is run again, with savepoints.
    Redo,
}

/// One group commit's transaction: the write connection, the chain's head
/// as the operations so far moved it, and their audit entries, inserted all
/// at once when the group commits.
pub(crate) struct Tx<'a> {
    pub(super) w: Watched<'a>,
    isolation: Isolation,
    pub(super) head: Head,
    pub(super) audit: Vec<(i64, AuditEvent, String, String)>,
    /// Devices the running operation changed: their fleet summary is
    /// recomputed before its savepoint is released.
    pub(super) touched: Vec<String>,
    /// The running operation's moves of the fleet counters.
    pub(super) op_deltas: super::fleet::Deltas,
    /// Those of the operations that succeeded, written when the group commits.
    pub(super) tx_deltas: super::fleet::Deltas,
}

impl<'a> Tx<'a> {
    pub(super) fn new(w: &'a mut dyn Writer, head: Head, isolation: Isolation) -> Self {
        Self {
            w: Watched { w, dirty: false },
            isolation,
            head,
            audit: Vec::new(),
            touched: Vec::new(),
            op_deltas: Default::default(),
            tx_deltas: Default::default(),
        }
    }

    /// Run one operation (in its own savepoint, with [`Isolation::Savepoints`]).
    /// The inner result is the operation's own (on error its writes are
    /// undone, its audit entries dropped and the head restored).
    pub(super) fn run_one(&mut self, op: &Op, last: bool) -> Result<Result<Done, StoreError>, Abort> {
        let (saved, entries) = (self.head.clone(), self.audit.len());
        self.w.dirty = false;
        let r = self.op(op).and_then(|d| self.refresh_touched().map(|()| d));
        self.touched.clear();
        let moved = std::mem::take(&mut self.op_deltas);
        if r.is_ok() {
            self.tx_deltas.merge(moved);
        }
        match (&r, self.isolation) {
            (Err(_), Isolation::Optimistic) if self.w.dirty => return Err(Abort::Redo),
            (Err(_), Isolation::Optimistic) => {}
            (Err(_), Isolation::Savepoints) => self.w.w.savepoint(false).map_err(Abort::Failed)?,
            (Ok(_), Isolation::Savepoints) if !last => self.w.w.savepoint(true).map_err(Abort::Failed)?,
            (Ok(_), _) => {}
        }
        if r.is_err() {
            self.head = saved;
            self.audit.truncate(entries);
        }
        Ok(r)
    }

    pub(super) fn abandon(self) {
        self.w.w.rollback();
    }

    /// Insert the audit entries and commit.
    pub(super) fn finish(self, start: &Head) -> Result<(), StoreError> {
        let Tx { w: Watched { w, .. }, head, audit, tx_deltas, .. } = self;
        let r = tx_deltas.write(w).and_then(|()| insert_audit(w, &audit)).and_then(|()| w.commit(start, &head));
        if r.is_err() {
            w.rollback();
        }
        r
    }

    fn op(&mut self, op: &Op) -> Result<Done, StoreError> {
        let unit = |r: Result<(), StoreError>| r.map(|()| Done::Unit);
        match op {
            Op::Issue(i) => unit(self.issue(i)),
            Op::Token(t, a) => unit(self.token(t).and_then(|()| self.append(a))),
            Op::Audit(a) => unit(self.append(a)),
            Op::CreateBatch(b, serials, a) => unit(self.create_batch(b, serials).and_then(|()| self.append(a))),
            Op::CloseBatch(id, a) => unit(self.close_batch(id).and_then(|()| self.append(a))),
            Op::AddStation(st, cert, a) => unit(self.add_station(st, cert).and_then(|()| self.append(a))),
            Op::RevokeStation(name, at, a) => unit(self.revoke_station(name, *at).and_then(|()| self.append(a))),
            Op::Refusal(batch, a) => unit(self.refusal(batch.as_deref()).and_then(|()| self.append(a))),
            Op::Delegation(station, batch, cert, a) => {
                unit(self.delegation(station, batch, cert).and_then(|()| self.append(a)))
            }
            Op::Revoke(serial, reason, at, a) => unit(self.revoke(serial, *reason, *at).and_then(|()| self.append(a))),
            Op::RevokeDevice(r) => self.revoke_device(r).map(Done::DeviceRevoked),
            Op::CrlNumber(ca, a) => self.crl_number(ca).and_then(|n| self.append(a).map(|()| Done::CrlNumber(n))),
            Op::AddManufacturer(m, a) => unit(self.add_manufacturer(m).and_then(|()| self.append(a))),
            Op::Claim(claims, via, at, a) => {
                self.claim(claims, via, *at).and_then(|n| self.append(a).map(|()| Done::Count(n)))
            }
            Op::Release(serial, status, at, a) => {
                unit(self.release(serial, *status, *at).and_then(|()| self.append(a)))
            }
            Op::HandOver(h) => self.hand_over(h).map(Done::HandedOver),
            Op::Publish(art, a) => unit(self.publish(art).and_then(|()| self.append(a))),
            Op::OwnByVoucher(serial, via, art, held, a) => unit(
                self.own_by_voucher(serial, via, art, held)
                    .and_then(|()| self.publish(art))
                    .and_then(|()| self.append(a)),
            ),
            Op::BlockKeys(b) => self.block_keys(b).map(Done::KeysBlocked),
            Op::ConsoleLink(l, a) => unit(self.console_link(l).and_then(|()| self.append(a))),
            Op::UseConsoleLink(hash, now, a) => {
                self.use_console_link(hash, *now).and_then(|l| self.append(a).map(|()| Done::ConsoleLink(l)))
            }
            Op::LeaseWebhook(name, owner, now, until) => self.lease_webhook(name, owner, *now, *until).map(Done::Lease),
            Op::AdvanceWebhook(name, owner, seq, until) => unit(self.advance_webhook(name, owner, *seq, *until)),
            Op::ReleaseWebhook(name, owner) => unit(self.release_webhook(name, owner)),
            Op::NoteExpiring(scan) => self.note_expiring(scan).map(Done::Expiring),
            Op::Sync(sync) => self.apply_sync(sync).and_then(|o| self.append(&sync.audit).map(|()| Done::Synced(o))),
            Op::FleetRebuild(force) => self.rebuild_fleet(*force).map(|()| Done::Unit),
            Op::BulkLoad(b) => self.bulk_load(b).map(|()| Done::Unit),
        }
    }

    /// Append to the chain after the head (taken under the write lock) and advance it.
    pub(super) fn append(&mut self, ev: &AuditEvent) -> Result<(), StoreError> {
        let seq = self.head.seq + 1;
        let seq_u = u64::try_from(seq).map_err(|_| StoreError::Database(format!("negative audit seq {seq}")))?;
        let hash = audit_hash(&self.head.hash, seq_u, ev);
        let prev = std::mem::replace(&mut self.head, Head { seq, hash: hash.clone() });
        self.audit.push((seq, ev.clone(), prev.hash, hash));
        let refused = crate::refusals_in(ev);
        if refused > 0 {
            self.count_day(ev.at, 0, 0, refused)?;
        }
        Ok(())
    }

    fn issue(&mut self, i: &Issuance) -> Result<(), StoreError> {
        // A birth's read carries what `key_free` reads of the key (nothing any
        // precondition writes), judged where `key_free` would be.
        let mut key = None;
        let mut superseded = Vec::new();
        for p in &i.preconditions {
            match p {
                Precondition::Birth { batch, station, device_serial, now } => {
                    let cert = (i.cert.serial.as_str(), Some(i.cert.spki_sha256.as_str()));
                    key = Some(self.birth(batch, station, device_serial, *now, cert)?);
                }
                Precondition::Commission { device_serial, keep_cas, now } => {
                    superseded.extend(self.commission(device_serial, keep_cas, *now, &i.cert, &i.audit.actor)?);
                }
                _ => self.check(p, &i.cert.serial)?,
            }
        }
        match key {
            Some(mut rows) => key_free_in(&mut rows, BIRTH_KEY_COL, &i.cert)?,
            None => self.key_free(&i.cert)?,
        }
        self.insert_cert(&i.cert)?;
        let birth = i.preconditions.iter().any(|p| matches!(p, Precondition::Birth { .. }));
        if !birth && super::fleet::is_device_cert(&i.cert) {
            self.count_day(i.cert.issued_at, 1, u64::from(i.cert.replaces.is_some()), 0)?;
        }
        if superseded.is_empty() {
            return self.append(&i.audit);
        }
        // The issuance's entry names what it ended (known only in this transaction).
        let mut audit = i.audit.clone();
        audit.detail = format!("{} superseded={}", audit.detail, superseded.join(","));
        self.append(&audit)
    }

    /// [`Precondition::Commission`]: the device owned, and its good
    /// certificates but its births revoked (superseded) for `cert`, which
    /// must not certify a key one of them certifies already. The serials
    /// revoked.
    fn commission(
        &mut self,
        device: &str,
        keep_cas: &[String],
        now: i64,
        cert: &CertRecord,
        actor: &str,
    ) -> Result<Vec<String>, StoreError> {
        self.owned(device)?;
        let others = self.good_non_births(device, keep_cas)?;
        if let Some((serial, _)) = others.iter().find(|(_, spki)| *spki == cert.spki_sha256) {
            return Err(StoreError::Commissioned { device: device.into(), serial: serial.clone() });
        }
        // Superseded (RFC 5280 reason 4), not cessationOfOperation: the device
        // goes on operating, under the new certificate (the same subject, a new
        // key), as after a renewal; relying parties and the agent read reason 4
        // as "replaced", and a device holding the revoked one commissions again.
        let detail = format!("reason=superseded (commissioned again: {})", cert.serial);
        let mut revoked = Vec::with_capacity(others.len());
        for (serial, _) in others {
            self.revoke_audited(&serial, SUPERSEDED, now, actor, &detail)?;
            revoked.push(serial);
        }
        Ok(revoked)
    }

    /// The device's good certificates but its births (those of `keep_cas`, or
    /// of a station's delegated CA), oldest first, with their keys' SHA-256;
    /// locked until the transaction ends.
    fn good_non_births(&mut self, device: &str, keep_cas: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self.w.all(
            "SELECT serial, ca, spki_sha256 FROM certificates WHERE device_serial = $1 AND status = 'good'
             ORDER BY issued_at, serial{c}{lock}",
            &[device.into()],
        )?;
        let mut out = Vec::new();
        for mut row in rows {
            let (serial, ca, spki) = (row.text(0)?, row.text(1)?, row.text(2)?);
            if keep_cas.contains(&ca) || ca.starts_with("delegated:") {
                continue;
            }
            out.push((serial, spki));
        }
        Ok(out)
    }

    /// Revoke a good certificate, with its `revoke` audit entry.
    fn revoke_audited(
        &mut self,
        serial: &str,
        reason: u8,
        at: i64,
        actor: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.revoke(serial, reason, at)?;
        self.append(&AuditEvent {
            at,
            actor: actor.into(),
            action: "revoke".into(),
            target: serial.into(),
            detail: detail.into(),
        })
    }

    fn check(&mut self, p: &Precondition, cert_serial: &str) -> Result<(), StoreError> {
        match p {
            Precondition::ConsumeToken { token_hash, device_serial, now } => {
                self.consume_token(token_hash, device_serial, *now, cert_serial)
            }
            Precondition::Birth { batch, station, device_serial, now } => {
                self.birth(batch, station, device_serial, *now, (cert_serial, None)).map(drop)
            }
            Precondition::Owned { device_serial } => self.owned(device_serial),
            Precondition::Commission { .. } => {
                Err(StoreError::Database("a commissioning is checked with the certificate it records".into()))
            }
            Precondition::VoucherHeld { device_serial, sha256 } => {
                let kind = format!("voucher/{device_serial}");
                let row = self.w.opt(
                    "SELECT body FROM artifacts WHERE kind = $1 ORDER BY version DESC LIMIT 1",
                    &[(&kind).into()],
                )?;
                let body = row.map(|mut r| r.blob(0)).transpose()?;
                crate::audit::voucher_held(device_serial, sha256.as_deref(), body.as_deref())
            }
            Precondition::Supersede { serial, now } => {
                // With the device and profile `touch_cert` would read (the update changes neither).
                let row = self.w.opt(
                    "SELECT status, replaced_by, device_serial, profile FROM certificates WHERE serial = $1{lock}",
                    &[serial.into()],
                )?;
                let Some(mut row) = row else { return Err(StoreError::CertUnknown { serial: serial.clone() }) };
                if let Some(by) = row.opt_text(1)? {
                    return Err(StoreError::Superseded { serial: serial.clone(), by });
                }
                if row.text(0)? != "good" {
                    return Err(StoreError::CertRevoked { serial: serial.clone() });
                }
                self.w.run(
                    "UPDATE certificates SET status = 'revoked', revoked_at = $1, revocation_reason = 4,
                     replaced_by = $2 WHERE serial = $3",
                    &[Arg::Int(*now), cert_serial.into(), serial.into()],
                )?;
                if let (Some(d), "device") = (row.opt_text(2)?, row.text(3)?.as_str()) {
                    self.touch(&d);
                }
                Ok(())
            }
            Precondition::CertIsGood { serial } => match self.cert_status(serial)?.as_deref() {
                None => Err(StoreError::CertUnknown { serial: serial.clone() }),
                Some("good") => Ok(()),
                Some(_) => Err(StoreError::CertRevoked { serial: serial.clone() }),
            },
        }
    }

    /// Spend the token in one statement when every condition holds; when it
    /// does not, read the token to say which condition failed.
    fn consume_token(&mut self, hash: &str, device: &str, now: i64, cert_serial: &str) -> Result<(), StoreError> {
        let spent = self.w.run(
            "UPDATE tokens SET used_at = $1, cert_serial = $2
             WHERE token_hash = $3 AND device_serial = $4 AND used_at IS NULL AND expires_at > $1
               AND NOT EXISTS (SELECT 1 FROM withdrawn_tokens w WHERE w.token_hash = $3)",
            &[Arg::Int(now), cert_serial.into(), hash.into(), device.into()],
        )?;
        if spent == 1 {
            return Ok(());
        }
        let row = self
            .w
            .opt("SELECT device_serial, expires_at, used_at FROM tokens WHERE token_hash = $1", &[hash.into()])?;
        let mut row = row.ok_or(StoreError::TokenUnknown)?;
        if row.text(0)? != device {
            return Err(StoreError::TokenWrongSerial);
        }
        let withdrawn =
            self.w.opt("SELECT withdrawn_at, reason FROM withdrawn_tokens WHERE token_hash = $1", &[hash.into()])?;
        if let Some(mut w) = withdrawn {
            return Err(StoreError::TokenWithdrawn { at: w.int(0)?, reason: w.text(1)? });
        }
        if let Some(used_at) = row.opt_int(2)? {
            return Err(StoreError::TokenUsed { used_at });
        }
        let expires_at = row.int(1)?;
        if expires_at <= now {
            return Err(StoreError::TokenExpired { expires_at });
        }
        Err(StoreError::Database("a token was neither spent nor refused".into()))
    }

    fn cert_status(&mut self, serial: &str) -> Result<Option<String>, StoreError> {
        let row = self.w.opt("SELECT status FROM certificates WHERE serial = $1", &[serial.into()])?;
        row.map(|mut r| r.text(0)).transpose()
    }

    /// The station exists and is not revoked.
    fn station_active(&mut self, station: &str) -> Result<(), StoreError> {
        let row = self.w.opt("SELECT status FROM stations WHERE name = $1", &[station.into()])?;
        match row.map(|mut r| r.text(0)).transpose()?.as_deref() {
            None => Err(StoreError::StationUnknown { station: station.into() }),
            Some("active") => Ok(()),
            Some(_) => Err(StoreError::StationRevoked { station: station.into() }),
        }
    }

    /// The station may serve the batch.
    fn station_authorized(&mut self, station: &str, batch: &str) -> Result<(), StoreError> {
        if self.w.exists(
            "SELECT 1 FROM station_batches WHERE station = $1 AND batch_id = $2",
            &[station.into(), batch.into()],
        )? {
            return Ok(());
        }
        Err(StoreError::StationNotAuthorized { station: station.into(), batch: batch.into() })
    }

    fn insert_birth(
        &mut self,
        serial: &str,
        cert: &str,
        batch: &str,
        station: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        self.w.insert(
            "INSERT INTO births (device_serial, cert_serial, batch_id, station, born_at) VALUES ($1, $2, $3, $4, $5)",
            &[serial.into(), cert.into(), batch.into(), station.into(), Arg::Int(at)],
            || StoreError::AlreadyBorn { serial: serial.into(), cert: String::new() },
        )
    }

    /// The factory-line checks, in the order a station would want to hear
    /// them ([`judge_birth`]), on what one statement reads ([`BIRTH_READ`]):
    /// the station, the batch, the station's right to it, the allowlist and
    /// any earlier birth. The same statement reads what `key_free` reads of
    /// the certificate's key, if given (`cert`: its serial and key): every
    /// row's columns from [`BIRTH_KEY_COL`] on, for [`key_free_in`].
    fn birth(
        &mut self,
        batch: &str,
        station: &str,
        serial: &str,
        now: i64,
        (cert, spki): (&str, Option<&str>),
    ) -> Result<Vec<Row>, StoreError> {
        let mut rows = self.w.all(&BIRTH_READ, &[station.into(), batch.into(), serial.into(), spki.into()])?;
        let r = rows.first_mut().ok_or_else(|| StoreError::Database("the birth checks read no row".into()))?;
        let quota = judge_birth(r, (batch, station, serial), now, 0)?;
        // The quota once more, in the statement that counts the birth.
        if self.w.run("UPDATE batches SET issued = issued + 1 WHERE id = $1 AND issued < quota", &[batch.into()])? != 1
        {
            return Err(quota_exhausted(batch, quota));
        }
        self.insert_birth(serial, cert, batch, station, now)?;
        Ok(rows)
    }

    fn create_batch(&mut self, b: &BatchRecord, serials: &[String]) -> Result<(), StoreError> {
        let status = if b.status == BatchStatus::Open { "open" } else { "closed" };
        self.w.insert(
            "INSERT INTO batches (id, product, quota, issued, refused, flagged, valid_from, valid_until, status, created_at,
                                  profile, vendor_id, product_id, template, tpm_attestation)
             VALUES ($1, $2, $3, 0, 0, 0, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                (&b.id).into(),
                (&b.product).into(),
                Arg::Int(to_i64(b.quota)),
                Arg::Int(b.valid_from),
                Arg::Int(b.valid_until),
                status.into(),
                Arg::Int(b.created_at),
                b.profile.name().into(),
                matter_id(&b.profile, true),
                matter_id(&b.profile, false),
                b.template.as_ref().into(),
                Arg::Int(i64::from(b.tpm_attestation)),
            ],
            || StoreError::BatchExists { batch: b.id.clone() },
        )?;
        for (i, s) in serials.iter().enumerate() {
            let args = [(&b.id).into(), s.into(), Arg::Int(to_i64(i as u64))];
            self.w
                .exec("INSERT INTO batch_serials (batch_id, device_serial, position) VALUES ($1, $2, $3)", &args)
                .map_err(|e| StoreError::Database(format!("allowlist serial {s}: {}", e.detail())))?;
        }
        Ok(())
    }

    fn close_batch(&mut self, id: &str) -> Result<(), StoreError> {
        if self.w.run("UPDATE batches SET status = 'closed' WHERE id = $1", &[id.into()])? == 0 {
            return Err(StoreError::BatchUnknown { batch: id.into() });
        }
        Ok(())
    }

    fn add_station(&mut self, st: &StationRecord, cert: &CertRecord) -> Result<(), StoreError> {
        for b in &st.batches {
            if !self.w.exists("SELECT 1 FROM batches WHERE id = $1", &[b.into()])? {
                return Err(StoreError::BatchUnknown { batch: b.clone() });
            }
        }
        self.w.insert(
            "INSERT INTO stations (name, cert_serial, status, created_at) VALUES ($1, $2, 'active', $3)",
            &[(&st.name).into(), (&st.cert_serial).into(), Arg::Int(st.created_at)],
            || StoreError::StationExists { station: st.name.clone() },
        )?;
        for b in &st.batches {
            self.w.run(
                "INSERT INTO station_batches (station, batch_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[(&st.name).into(), b.into()],
            )?;
        }
        self.key_free(cert)?;
        self.insert_cert(cert)
    }

    fn revoke_station(&mut self, name: &str, at: i64) -> Result<(), StoreError> {
        let row = self.w.opt("SELECT status, cert_serial FROM stations WHERE name = $1", &[name.into()])?;
        let Some(mut row) = row else { return Err(StoreError::StationUnknown { station: name.into() }) };
        if row.text(0)? != "active" {
            return Err(StoreError::StationRevoked { station: name.into() });
        }
        let cert = row.text(1)?;
        self.w.run(
            "UPDATE stations SET status = 'revoked', revoked_at = $1 WHERE name = $2",
            &[Arg::Int(at), name.into()],
        )?;
        // RFC 5280 CRLReason cessationOfOperation (5).
        self.set_revoked(&cert, 5, at)?;
        let data = json!({ "station": name, "cert_serial": cert, "revoked_at": rfc3339(at) });
        self.event(EVENT_STATION_REVOKED, name, at, data)
    }

    fn set_revoked(&mut self, serial: &str, reason: u8, at: i64) -> Result<(), StoreError> {
        self.w.run(
            "UPDATE certificates SET status = 'revoked', revoked_at = $1, revocation_reason = $2 WHERE serial = $3",
            &[Arg::Int(at), Arg::Int(i64::from(reason)), serial.into()],
        )?;
        self.touch_cert(serial)
    }

    fn refusal(&mut self, batch: Option<&str>) -> Result<(), StoreError> {
        if let Some(b) = batch {
            self.w.run("UPDATE batches SET refused = refused + 1 WHERE id = $1", &[b.into()])?;
        }
        Ok(())
    }

    fn delegation(&mut self, station: &str, batch: &str, cert: &CertRecord) -> Result<(), StoreError> {
        self.station_active(station)?;
        self.station_authorized(station, batch)?;
        self.key_free(cert)?;
        self.insert_cert(cert)?;
        self.w.insert(
            "INSERT INTO delegations (cert_serial, station, batch_id, created_at) VALUES ($1, $2, $3, $4)",
            &[(&cert.serial).into(), station.into(), batch.into(), Arg::Int(cert.issued_at)],
            || StoreError::DelegationExists { station: station.into(), batch: batch.into() },
        )
    }

    /// Record a production record upload: see [`crate::Stations::apply_sync`].
    fn apply_sync(&mut self, s: &SyncUpload) -> Result<SyncOutcome, StoreError> {
        let mut station = self
            .w
            .opt(STATION_READ, &[(&s.station).into()])?
            .ok_or_else(|| StoreError::Database("the station's checks read no row".into()))?;
        judge_station(&mut station, [0, 1, 2, 3, 4], &s.station)?;
        let (last, head) = sync_state_of(&mut self.w, &s.station, &s.batch)?;
        if s.from_seq != last + 1 || s.from_head != head {
            return Err(StoreError::SyncOutOfOrder { expected_seq: last + 1, got_seq: s.from_seq });
        }
        let row = self.w.opt("SELECT quota, issued FROM batches WHERE id = $1", &[(&s.batch).into()])?;
        let Some(mut row) = row else { return Err(StoreError::BatchUnknown { batch: s.batch.clone() }) };
        let (quota, mut issued) = (row.int(0)?, row.int(1)?);
        let mut out = SyncOutcome::default();
        for e in &s.entries {
            let mut r = self
                .w
                .opt(
                    "SELECT (SELECT 1 FROM batch_serials WHERE batch_id = $1 AND device_serial = $2),
                            (SELECT cert_serial FROM births WHERE device_serial = $2)",
                    &[(&s.batch).into(), (&e.device_serial).into()],
                )?
                .ok_or_else(|| StoreError::Database("the sync checks read no row".into()))?;
            let (on_list, was_born) = (r.opt_int(0)?.is_some(), r.opt_text(1)?.is_some());
            let flag = if !on_list || e.outside_delegation {
                Some(Flag::OffAllowlist)
            } else if e.key_not_canonical {
                // Another encoding of some key: its fingerprint is no key's, checked against nothing.
                Some(Flag::NonCanonicalKey)
            } else if let Err(k) = self.key_free(&e.cert) {
                // Born offline with a blocked or another device's key: recorded, flagged and revoked.
                Some(if matches!(k, StoreError::KeyBlocked { .. }) { Flag::BlockedKey } else { Flag::SharedKey })
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
                    self.insert_cert(&cert)?;
                    self.insert_birth(&e.device_serial, &cert.serial, &s.batch, &s.station, cert.issued_at)?;
                    issued += 1;
                    out.born += 1;
                }
                Some(f) => {
                    // Recorded (the store knows every certificate) and revoked at once (RFC 5280:
                    // keyCompromise for a key that is not the device's own, else unspecified).
                    let reason =
                        if matches!(f, Flag::BlockedKey | Flag::SharedKey | Flag::NonCanonicalKey) { 1 } else { 0 };
                    cert.status = CertStatus::Revoked { at: s.now, reason };
                    self.insert_cert(&cert)?;
                    self.w.run(
                        "INSERT INTO flags (cert_serial, batch_id, reason, flagged_at) VALUES ($1, $2, $3, $4)",
                        &[(&cert.serial).into(), (&s.batch).into(), f.name().into(), Arg::Int(s.now)],
                    )?;
                    let data = json!({
                        "batch": s.batch,
                        "station": s.station,
                        "flag": f.name(),
                        "cert_serial": cert.serial,
                        "device_serial": e.device_serial,
                        "revoked": true,
                    });
                    self.event(EVENT_BATCH_FLAGGED, &s.batch, s.now, data)?;
                    out.flagged.push((cert.serial, f));
                }
            }
        }
        let flagged = to_i64(out.flagged.len() as u64);
        self.w.run(
            "UPDATE batches SET issued = $1, flagged = flagged + $2 WHERE id = $3",
            &[Arg::Int(issued), Arg::Int(flagged), (&s.batch).into()],
        )?;
        self.w.run(
            "INSERT INTO syncs (station, batch_id, last_seq, head, synced_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (station, batch_id) DO UPDATE SET last_seq = excluded.last_seq, head = excluded.head,
             synced_at = excluded.synced_at",
            &[(&s.station).into(), (&s.batch).into(), Arg::Int(to_i64(s.to_seq)), (&s.to_head).into(), Arg::Int(s.now)],
        )?;
        Ok(out)
    }

    fn revoke(&mut self, serial: &str, reason: u8, at: i64) -> Result<(), StoreError> {
        match self.cert_status(serial)?.as_deref() {
            None => Err(StoreError::CertUnknown { serial: serial.into() }),
            Some("good") => {
                self.set_revoked(serial, reason, at)?;
                self.cert_revoked_event(serial, reason, at)
            }
            Some(_) => Err(StoreError::CertRevoked { serial: serial.into() }),
        }
    }

    /// Append an event to the outbox, in this transaction: it commits with
    /// the change it reports, or not at all. Its seq is the next one (every
    /// writer of every process or node waits for this transaction's write
    /// lock, so seqs grow in commit order).
    fn event(&mut self, kind: &str, subject: &str, at: i64, data: serde_json::Value) -> Result<(), StoreError> {
        self.w.run(
            "INSERT INTO events (seq, kind, subject, created_at, body)
             SELECT COALESCE(MAX(seq), 0) + 1, CAST($1 AS TEXT), CAST($2 AS TEXT), CAST($3 AS BIGINT),
                    CAST($4 AS TEXT) FROM events",
            &[kind.into(), subject.into(), Arg::Int(at), data.to_string().as_str().into()],
        )?;
        Ok(())
    }

    /// `certificate.revoked` for a certificate just revoked.
    fn cert_revoked_event(&mut self, serial: &str, reason: u8, at: i64) -> Result<(), StoreError> {
        let mut r = self
            .w
            .opt("SELECT ca, profile, subject, device_serial FROM certificates WHERE serial = $1", &[serial.into()])?
            .ok_or_else(|| StoreError::CertUnknown { serial: serial.into() })?;
        let data = json!({
            "serial": serial,
            "ca": r.text(0)?,
            "profile": r.text(1)?,
            "subject": r.text(2)?,
            "device_serial": r.opt_text(3)?,
            "reason_code": reason,
            "revoked_at": rfc3339(at),
        });
        self.event(EVENT_CERT_REVOKED, serial, at, data)
    }

    /// Take or keep the lease on a webhook's deliveries: see [`crate::Events::lease_webhook`].
    fn lease_webhook(&mut self, name: &str, owner: &str, now: i64, until: i64) -> Result<Option<u64>, StoreError> {
        if !self.w.exists("SELECT 1 FROM webhook_cursors WHERE name = $1", &[name.into()])? {
            let last = self.w.opt("SELECT COALESCE(MAX(seq), 0) FROM events", &[])?;
            let last = last.map(|mut r| r.int(0)).transpose()?.unwrap_or(0);
            self.w.run(
                "INSERT INTO webhook_cursors (name, delivered, lease_owner, lease_until) VALUES ($1, $2, NULL, 0)",
                &[name.into(), Arg::Int(last)],
            )?;
        }
        let took = self.w.run(
            "UPDATE webhook_cursors SET lease_owner = $2, lease_until = $4
             WHERE name = $1 AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until < $3)",
            &[name.into(), owner.into(), Arg::Int(now), Arg::Int(until)],
        )?;
        if took == 0 {
            return Ok(None);
        }
        let mut r = self
            .w
            .opt("SELECT delivered FROM webhook_cursors WHERE name = $1", &[name.into()])?
            .ok_or_else(|| StoreError::Database(format!("webhook {name}'s cursor vanished")))?;
        r.count(0).map(Some)
    }

    fn advance_webhook(&mut self, name: &str, owner: &str, seq: u64, until: i64) -> Result<(), StoreError> {
        let n = self.w.run(
            "UPDATE webhook_cursors SET delivered = CASE WHEN delivered < $3 THEN $3 ELSE delivered END,
                    lease_until = $4
             WHERE name = $1 AND lease_owner = $2",
            &[name.into(), owner.into(), Arg::Int(to_i64(seq)), Arg::Int(until)],
        )?;
        if n == 0 {
            return Err(StoreError::WebhookLeaseLost { webhook: name.into() });
        }
        Ok(())
    }

    fn release_webhook(&mut self, name: &str, owner: &str) -> Result<(), StoreError> {
        self.w.run(
            "UPDATE webhook_cursors SET lease_owner = NULL, lease_until = 0 WHERE name = $1 AND lease_owner = $2",
            &[name.into(), owner.into()],
        )?;
        Ok(())
    }

    /// One page of the certificates expiring in the window, in (notAfter,
    /// serial) order from the resume point (the notAfter index bounds the
    /// read): each current one not announced at this threshold gets its
    /// notice and its event.
    fn note_expiring(&mut self, s: &ExpiringScan) -> Result<ExpiringNoted, StoreError> {
        let until = s.now.saturating_add(i64::from(s.within_days) * 86_400);
        let (after_t, after_s) = match &s.after {
            Some((t, serial)) => (*t, serial.as_str()),
            None => (s.now, ""),
        };
        let rows = self.w.all(
            "SELECT serial, ca, profile, subject, device_serial, not_after, status, replaced_by FROM certificates
             WHERE not_after > $1 AND not_after <= $2 AND (not_after > $3 OR (not_after = $3 AND serial{c} > $4))
             ORDER BY not_after, serial{c} LIMIT $5",
            &[Arg::Int(s.now), Arg::Int(until), Arg::Int(after_t), after_s.into(), Arg::Int(i64::from(s.limit))],
        )?;
        let full = rows.len() >= s.limit as usize;
        let mut out = ExpiringNoted::default();
        let mut last = None;
        for mut r in rows {
            let (serial, not_after) = (r.text(0)?, r.int(5)?);
            last = Some((not_after, serial.clone()));
            if r.text(6)? != "good" || r.opt_text(7)?.is_some() {
                continue;
            }
            let new = self.w.run(
                "INSERT INTO expiry_notices (cert_serial, within_days, noticed_at) VALUES ($1, $2, $3)
                 ON CONFLICT (cert_serial, within_days) DO NOTHING",
                &[(&serial).into(), Arg::Int(i64::from(s.within_days)), Arg::Int(s.now)],
            )?;
            if new == 0 {
                continue;
            }
            let data = json!({
                "serial": serial,
                "ca": r.text(1)?,
                "profile": r.text(2)?,
                "subject": r.text(3)?,
                "device_serial": r.opt_text(4)?,
                "not_after": rfc3339(not_after),
                "within_days": s.within_days,
            });
            self.event(EVENT_CERT_EXPIRING, &serial, s.now, data)?;
            out.recorded += 1;
        }
        out.next = if full { last } else { None };
        Ok(out)
    }

    /// Every good certificate of the device, and its ownership when owned, in
    /// this transaction (which excludes every other writer: no issuance
    /// commits between the listing and the revocations).
    fn revoke_device(&mut self, r: &DeviceRevocation) -> Result<DeviceRevoked, StoreError> {
        let rows = self.w.all(
            "SELECT serial FROM certificates WHERE device_serial = $1 AND status = 'good'
             ORDER BY issued_at, serial{c}{lock}",
            &[(&r.device_serial).into()],
        )?;
        let serials = rows.into_iter().map(|mut row| row.text(0)).collect::<Result<Vec<_>, _>>()?;
        let owned = ownership_of(&mut self.w, &r.device_serial)?.is_some_and(|o| o.status == OwnershipStatus::Owned);
        if serials.is_empty() && !owned {
            return Err(StoreError::NothingToRevoke { device: r.device_serial.clone() });
        }
        if owned {
            self.release(&r.device_serial, OwnershipStatus::Revoked, r.at)?;
            self.append(&r.device_event())?;
        }
        for s in &serials {
            self.revoke(s, r.reason, r.at)?;
            self.append(&r.cert_event(s))?;
        }
        let data = json!({
            "device_serial": r.device_serial,
            "reason_code": r.reason,
            "certificates": serials,
            "ownership_released": owned,
            "revoked_at": rfc3339(r.at),
        });
        self.event(EVENT_DEVICE_REVOKED, &r.device_serial, r.at, data)?;
        Ok(DeviceRevoked { serials, released: owned })
    }

    /// Every good certificate of the device but its births revoked, its
    /// ownership transferred and the voucher published, in this transaction
    /// (which excludes every other writer, as [`Self::revoke_device`]'s does).
    fn hand_over(&mut self, h: &HandOver) -> Result<HandedOver, StoreError> {
        let event = |action: &str, target: String, detail: String| AuditEvent {
            at: h.at,
            actor: h.actor.clone(),
            action: action.into(),
            target,
            detail,
        };
        self.append(&event("voucher.issue", format!("device:{}", h.device_serial), h.detail.clone()))?;
        let mut revoked = Vec::new();
        for (serial, _) in self.good_non_births(&h.device_serial, &h.keep_cas)? {
            let detail = "reason=affiliationChanged (ownership voucher)";
            self.revoke_audited(&serial, AFFILIATION_CHANGED, h.at, &h.actor, detail)?;
            revoked.push(serial);
        }
        let owned = ownership_of(&mut self.w, &h.device_serial)?.is_some_and(|o| o.status == OwnershipStatus::Owned);
        if owned {
            self.release(&h.device_serial, OwnershipStatus::Transferred, h.at)?;
            self.append(&event("device.transfer", format!("device:{}", h.device_serial), format!("to={}", h.to)))?;
        }
        // Last: a voucher that is not newer than the one published refuses the
        // whole transaction, the revocations and the transfer with it.
        self.publish(&h.voucher)?;
        Ok(HandedOver { revoked, released: owned })
    }

    fn add_manufacturer(&mut self, m: &ManufacturerRecord) -> Result<(), StoreError> {
        let row = self.w.opt(
            "SELECT name FROM manufacturers WHERE name = $1 OR spki_sha256 = $2",
            &[(&m.name).into(), (&m.spki_sha256).into()],
        )?;
        if let Some(mut r) = row {
            return Err(StoreError::ManufacturerExists { name: r.text(0)? });
        }
        self.w.insert(
            "INSERT INTO manufacturers (name, cert_der, spki_sha256, added_at) VALUES ($1, $2, $3, $4)",
            &[(&m.name).into(), Arg::Blob(&m.cert_der), (&m.spki_sha256).into(), Arg::Int(m.added_at)],
            || StoreError::ManufacturerExists { name: m.name.clone() },
        )
    }

    fn claim(&mut self, claims: &[Claim], via: &str, at: i64) -> Result<u64, StoreError> {
        let mut n = 0;
        for c in claims {
            let new = self.w.run(
                "INSERT INTO owned_devices (device_serial, via, since, manufacturer_spki, birth_sha256) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_serial) DO NOTHING",
                &[
                    (&c.device_serial).into(),
                    via.into(),
                    Arg::Int(at),
                    (&c.manufacturer_spki).into(),
                    (&c.birth_sha256).into(),
                ],
            )?;
            self.touch(&c.device_serial);
            if new == 1 {
                n += 1;
                continue;
            }
            // A claim made by bare serial before claims named the birth: bound now.
            self.w.run(
                "UPDATE owned_devices SET manufacturer_spki = $1, birth_sha256 = $2 \
                 WHERE device_serial = $3 AND via = 'claim' AND birth_sha256 IS NULL",
                &[(&c.manufacturer_spki).into(), (&c.birth_sha256).into(), (&c.device_serial).into()],
            )?;
            if let Some(o) = ownership_of(&mut self.w, &c.device_serial)? {
                check_claim(&o, c)?;
            }
        }
        Ok(n)
    }

    fn owned(&mut self, serial: &str) -> Result<(), StoreError> {
        match ownership_of(&mut self.w, serial)? {
            None => Err(StoreError::NotOwned { device: serial.into() }),
            Some(o) if o.status == OwnershipStatus::Owned => Ok(()),
            Some(o) => Err(StoreError::DeviceReleased { device: serial.into(), status: o.status.as_str() }),
        }
    }

    fn release(&mut self, serial: &str, status: OwnershipStatus, at: i64) -> Result<(), StoreError> {
        if status == OwnershipStatus::Owned {
            return Err(StoreError::Database("release_device needs revoked or transferred".into()));
        }
        self.owned(serial)?;
        self.w.run(
            "UPDATE owned_devices SET status = $1, changed_at = $2 WHERE device_serial = $3",
            &[status.as_str().into(), Arg::Int(at), serial.into()],
        )?;
        self.touch(serial);
        Ok(())
    }

    fn publish(&mut self, a: &Artifact) -> Result<(), StoreError> {
        let row = self.w.opt("SELECT MAX(version) FROM artifacts WHERE kind = $1", &[(&a.kind).into()])?;
        let latest = match row {
            Some(mut r) => r.opt_int(0)?,
            None => None,
        };
        let version = i64::try_from(a.version).map_err(|_| StoreError::Database("version out of range".into()))?;
        if let Some(latest) = latest {
            if version <= latest {
                return Err(StoreError::NotNewer { kind: a.kind.clone(), latest: latest as u64, offered: a.version });
            }
        }
        self.w.run(
            "INSERT INTO artifacts (kind, version, body, published_at) VALUES ($1, $2, $3, $4)",
            &[(&a.kind).into(), Arg::Int(version), Arg::Blob(&a.body), Arg::Int(a.published_at)],
        )?;
        Ok(())
    }

    fn own_by_voucher(&mut self, serial: &str, via: &str, a: &Artifact, held: &Precondition) -> Result<(), StoreError> {
        match held {
            Precondition::VoucherHeld { device_serial, .. } if device_serial == serial => self.check(held, "")?,
            _ => {
                return Err(StoreError::Database(format!(
                    "own_by_voucher needs VoucherHeld for {serial}, not {held:?}"
                )))
            }
        }
        if let Some(o) = ownership_of(&mut self.w, serial)? {
            if o.status == OwnershipStatus::Revoked {
                return Err(StoreError::DeviceReleased { device: serial.into(), status: o.status.as_str() });
            }
        }
        self.w.run(
            "INSERT INTO owned_devices (device_serial, via, since) VALUES ($1, $2, $3)
             ON CONFLICT (device_serial) DO UPDATE SET via = excluded.via, since = excluded.since, status = 'owned', changed_at = NULL",
            &[serial.into(), via.into(), Arg::Int(a.published_at)],
        )?;
        self.touch(serial);
        Ok(())
    }

    fn crl_number(&mut self, ca: &str) -> Result<u64, StoreError> {
        let row = self.w.opt(
            "INSERT INTO crl_numbers (ca, last) VALUES ($1, 1)
             ON CONFLICT (ca) DO UPDATE SET last = crl_numbers.last + 1 RETURNING last",
            &[ca.into()],
        )?;
        let mut row = row.ok_or_else(|| StoreError::Database("a CRL number was not returned".into()))?;
        row.count(0)
    }

    /// The key registry's rules for a certificate about to be recorded: its
    /// key is not blocked, and is certified for no other device (nor, for a
    /// device, for something that is not one). Under the writers' lock, so
    /// two clones racing on two nodes cannot both pass.
    fn key_free(&mut self, c: &CertRecord) -> Result<(), StoreError> {
        // One statement: the key's block (on every row) and its certificates
        // (one row of NULLs when it has none).
        let mut rows = self.w.all(
            "SELECT (SELECT reason FROM blocked_keys WHERE spki_sha256 = $1), k.serial, k.device_serial, k.issued_at
             FROM (SELECT 1 AS one) o LEFT JOIN certificates k ON k.spki_sha256 = $1",
            &[(&c.spki_sha256).into()],
        )?;
        key_free_in(&mut rows, 0, c)
    }

    /// Block keys; with `revoke`, revoke their good certificates (but those
    /// of a spared profile) with reason keyCompromise.
    fn block_keys(&mut self, b: &KeyBlock) -> Result<KeysBlocked, StoreError> {
        let mut out = KeysBlocked::default();
        for k in &b.keys {
            let key: &str = &k.spki_sha256;
            if self.w.exists("SELECT 1 FROM blocked_keys WHERE spki_sha256 = $1", &[key.into()])? {
                out.already.push(key.into());
            } else {
                self.w.run(
                    "INSERT INTO blocked_keys (spki_sha256, reason, source, blocked_at, blocked_by)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[
                        key.into(),
                        (&k.reason).into(),
                        (&k.source).into(),
                        Arg::Int(k.blocked_at),
                        (&k.blocked_by).into(),
                    ],
                )?;
                out.blocked.push(key.into());
                self.append(&AuditEvent {
                    at: k.blocked_at,
                    actor: k.blocked_by.clone(),
                    action: "key.block".into(),
                    target: format!("key:{key}"),
                    detail: format!("reason={} source={}", k.reason, k.source),
                })?;
            }
            let rows = self.w.all(
                "SELECT serial, profile FROM certificates WHERE spki_sha256 = $1 AND status = 'good'
                 ORDER BY issued_at, serial{c}{lock}",
                &[key.into()],
            )?;
            for mut r in rows {
                let (serial, profile) = (r.text(0)?, r.text(1)?);
                if !b.revoke || b.spare_profiles.contains(&profile) {
                    out.spared.push(serial);
                    continue;
                }
                self.set_revoked(&serial, 1, k.blocked_at)?;
                self.cert_revoked_event(&serial, 1, k.blocked_at)?;
                self.append(&AuditEvent {
                    at: k.blocked_at,
                    actor: k.blocked_by.clone(),
                    action: "revoke".into(),
                    target: serial.clone(),
                    detail: format!("reason=keyCompromise key={key}"),
                })?;
                out.revoked.push(serial);
            }
        }
        let (at, actor, reason) = (b.at, &b.actor, &b.reason);
        for hash in &b.tokens {
            let row = self.w.opt(
                "SELECT t.device_serial FROM tokens t WHERE t.token_hash = $1 AND t.used_at IS NULL
                   AND NOT EXISTS (SELECT 1 FROM withdrawn_tokens w WHERE w.token_hash = t.token_hash)",
                &[hash.into()],
            )?;
            let Some(mut row) = row else { continue };
            let device = row.text(0)?;
            self.w.run(
                "INSERT INTO withdrawn_tokens (token_hash, withdrawn_at, reason) VALUES ($1, $2, $3)",
                &[hash.into(), Arg::Int(at), reason.into()],
            )?;
            self.append(&AuditEvent {
                at,
                actor: actor.clone(),
                action: "token.withdraw".into(),
                target: device.clone(),
                detail: format!("reason={reason} token_sha256={}", &hash[..hash.len().min(16)]),
            })?;
            out.withdrawn.push(device);
        }
        Ok(out)
    }

    fn insert_cert(&mut self, c: &CertRecord) -> Result<(), StoreError> {
        let args = cert_args(c, false);
        self.w.insert(&CERT_INSERT, &args, || StoreError::DuplicateSerial { serial: c.serial.clone() })?;
        if let (true, Some(d)) = (super::fleet::is_device_cert(c), &c.device_serial) {
            self.touch(d);
        }
        Ok(())
    }

    fn console_link(&mut self, l: &crate::ConsoleLink) -> Result<(), StoreError> {
        self.w.insert(
            "INSERT INTO console_links (link_hash, admin, role, created_at, expires_at, used_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                (&l.link_hash).into(),
                (&l.admin).into(),
                (&l.role).into(),
                Arg::Int(l.created_at),
                Arg::Int(l.expires_at),
                l.used_at.into(),
            ],
            || StoreError::TokenExists,
        )
    }

    /// Spend a console link in one statement when it is unused and not
    /// expired; when not, read it to say why.
    fn use_console_link(&mut self, hash: &str, now: i64) -> Result<crate::ConsoleLink, StoreError> {
        let spent = self.w.run(
            "UPDATE console_links SET used_at = $1 WHERE link_hash = $2 AND used_at IS NULL AND expires_at > $1",
            &[Arg::Int(now), hash.into()],
        )?;
        let row = self.w.opt(
            "SELECT link_hash, admin, role, created_at, expires_at, used_at FROM console_links WHERE link_hash = $1",
            &[hash.into()],
        )?;
        let mut row = row.ok_or(StoreError::TokenUnknown)?;
        let link = crate::ConsoleLink {
            link_hash: row.text(0)?,
            admin: row.text(1)?,
            role: row.text(2)?,
            created_at: row.int(3)?,
            expires_at: row.int(4)?,
            used_at: row.opt_int(5)?,
        };
        if spent == 1 {
            return Ok(link);
        }
        match link.used_at {
            Some(used_at) => Err(StoreError::TokenUsed { used_at }),
            None => Err(StoreError::TokenExpired { expires_at: link.expires_at }),
        }
    }

    fn token(&mut self, t: &TokenRecord) -> Result<(), StoreError> {
        self.w.insert(
            "INSERT INTO tokens (token_hash, device_serial, created_at, expires_at, used_at, cert_serial, template)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                (&t.token_hash).into(),
                (&t.device_serial).into(),
                Arg::Int(t.created_at),
                Arg::Int(t.expires_at),
                t.used_at.into(),
                t.cert_serial.as_ref().into(),
                t.template.as_ref().into(),
            ],
            || StoreError::TokenExists,
        )
    }
}

/// The table and columns of a certificate's row, as [`cert_args`] gives them.
pub(super) const CERT_TABLE: &str =
    "certificates (serial, ca, profile, subject, device_serial, not_before, not_after, \
    issued_at, spki_sha256, replaces, status, revoked_at, revocation_reason, der, replaced_by, template)";

/// A certificate's row: the arguments of [`CERT_TABLE`]. A certificate
/// recorded as it is issued has no successor yet, whatever the record says
/// (`successor`: keep the record's, as a bulk load of a registry does).
pub(super) fn cert_args(c: &CertRecord, successor: bool) -> [Arg<'_>; 16] {
    let (status, at, reason) = match c.status {
        CertStatus::Good => ("good", Arg::Null, Arg::Null),
        CertStatus::Revoked { at, reason } => ("revoked", Arg::Int(at), Arg::Int(i64::from(reason))),
    };
    [
        (&c.serial).into(),
        (&c.ca).into(),
        (&c.profile).into(),
        (&c.subject).into(),
        c.device_serial.as_ref().into(),
        Arg::Int(c.not_before),
        Arg::Int(c.not_after),
        Arg::Int(c.issued_at),
        (&c.spki_sha256).into(),
        c.replaces.as_ref().into(),
        status.into(),
        at,
        reason,
        Arg::Blob(&c.der),
        if successor { c.replaced_by.as_ref().into() } else { Arg::Null },
        c.template.as_ref().into(),
    ]
}

static CERT_INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| multi_insert(CERT_TABLE, 1, 16));

/// `INSERT INTO {head} VALUES (...), ...` of `rows` rows of `cols` arguments.
pub(super) fn multi_insert(head: &str, rows: usize, cols: usize) -> String {
    let mut sql = format!("INSERT INTO {head} VALUES ");
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            sql.push_str(&format!("{}${}", if c == 0 { "" } else { ", " }, r * cols + c + 1));
        }
        sql.push(')');
    }
    sql
}

/// Unix seconds as RFC 3339 (UTC), as events carry times.
pub(crate) fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

/// What a birth's checks read, for the station `{st}`, batch `{b}`, device
/// `{sn}` and key `{spki}`, from `{from}`: one row, or one per certificate of
/// the key. [`judge_birth`] reads columns 0 to 12 (9 to 12: the certificate
/// the station authenticates with, its status, its key and the block on that
/// key), [`key_free_in`] the rest.
pub(super) const BIRTH_READ_OF: &str = "SELECT s.status, b.quota, b.issued, b.valid_from, b.valid_until, b.status,
        (SELECT 1 FROM station_batches WHERE station = {st} AND batch_id = {b}),
        (SELECT 1 FROM batch_serials WHERE batch_id = {b} AND device_serial = {sn}),
        (SELECT cert_serial FROM births WHERE device_serial = {sn}),
        s.cert_serial, sc.status, sc.spki_sha256, (SELECT reason FROM blocked_keys WHERE spki_sha256 = sc.spki_sha256),
        (SELECT reason FROM blocked_keys WHERE spki_sha256 = {spki}), k.serial, k.device_serial, k.issued_at{more}
    FROM {from} LEFT JOIN stations s ON s.name = {st} LEFT JOIN certificates sc ON sc.serial = s.cert_serial
    LEFT JOIN batches b ON b.id = {b} LEFT JOIN certificates k ON k.spki_sha256 = {spki}";

/// [`BIRTH_READ_OF`] for one birth: `$1` the station, `$2` the batch, `$3` the device, `$4` the key.
static BIRTH_READ: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    BIRTH_READ_OF
        .replace("{st}", "$1")
        .replace("{b}", "$2")
        .replace("{sn}", "$3")
        .replace("{spki}", "$4")
        .replace("{more}", "")
        .replace("{from}", "(SELECT 1 AS one) o")
});

/// The first column of what [`BIRTH_READ_OF`] reads of the key.
pub(super) const BIRTH_KEY_COL: usize = 13;

/// The birth rules on one row of [`BIRTH_READ_OF`] (columns 0 to 12), in the
/// order a station would want to hear them, for device `serial` of `batch`
/// made by `station` at `now`, after `earlier` births of the batch that the
/// same transaction counted but the row does not: the batch's quota.
///
/// The station's own certificate is judged here too ([`judge_station`]), in
/// the transaction that records the birth.
pub(super) fn judge_birth(
    r: &mut Row,
    (batch, station, serial): (&str, &str, &str),
    now: i64,
    earlier: i64,
) -> Result<i64, StoreError> {
    judge_station(r, [0, 9, 10, 11, 12], station)?;
    let Some(quota) = r.opt_int(1)? else { return Err(StoreError::BatchUnknown { batch: batch.into() }) };
    let (issued, from, until, status) = (r.int(2)?, r.int(3)?, r.int(4)?, r.text(5)?);
    if r.opt_int(6)?.is_none() {
        return Err(StoreError::StationNotAuthorized { station: station.into(), batch: batch.into() });
    }
    if status != "open" {
        return Err(StoreError::BatchClosed { batch: batch.into() });
    }
    if now < from || now >= until {
        return Err(StoreError::BatchOutsideWindow { batch: batch.into(), from, until });
    }
    if issued + earlier >= quota {
        return Err(quota_exhausted(batch, quota));
    }
    if r.opt_int(7)?.is_none() {
        return Err(StoreError::SerialNotAllowed { batch: batch.into(), serial: serial.into() });
    }
    if let Some(cert) = r.opt_text(8)? {
        return Err(StoreError::AlreadyBorn { serial: serial.into(), cert });
    }
    Ok(quota)
}

/// What [`judge_station`] reads of station `$1`, in one row: its status, its
/// certificate's serial and status, that certificate's key and the block on it.
const STATION_READ: &str = "SELECT s.status, s.cert_serial, sc.status, sc.spki_sha256,
        (SELECT reason FROM blocked_keys WHERE spki_sha256 = sc.spki_sha256)
    FROM (SELECT 1 AS one) o LEFT JOIN stations s ON s.name = $1 LEFT JOIN certificates sc ON sc.serial = s.cert_serial";

/// Whether `station` may act now, on what `r` holds at columns `cols`: its
/// status, its certificate's serial and status, that certificate's key and
/// the block on it. The station exists and is active, and the certificate
/// it authenticates with is good and its key not blocked: revoked, or the
/// key blocked, after the station was let in (on a connection kept open, or
/// while its request was on its way), it acts no more.
pub(super) fn judge_station(r: &mut Row, cols: [usize; 5], station: &str) -> Result<(), StoreError> {
    let [status, cert, cert_status, key, block] = cols;
    match r.opt_text(status)?.as_deref() {
        None => return Err(StoreError::StationUnknown { station: station.into() }),
        Some("active") => {}
        Some(_) => return Err(StoreError::StationRevoked { station: station.into() }),
    }
    let refused = |serial: String, why: String| StoreError::StationCertificate { station: station.into(), serial, why };
    let serial = r.text(cert)?;
    match r.opt_text(cert_status)?.as_deref() {
        Some("good") => {}
        Some(_) => return Err(refused(serial, "it is revoked".into())),
        None => return Err(refused(serial, "it is not recorded".into())),
    }
    match r.opt_text(block)? {
        Some(reason) => Err(refused(serial, format!("its key {} is blocked: {reason}", r.text(key)?))),
        None => Ok(()),
    }
}

pub(super) fn quota_exhausted(batch: &str, quota: i64) -> StoreError {
    StoreError::QuotaExhausted { batch: batch.into(), quota: u64::try_from(quota).unwrap_or(0) }
}

/// `c`'s key is neither blocked nor another device's, on what `key_free`
/// reads: from column `at` on, the key's block (on every row), then the
/// serial, device and issuedAt of one certificate of the key (NULL for none).
/// KeyBlocked comes first; KeyInUse names the first other holder by
/// (issuedAt, serial compared bytewise), a row whose device differs (NULL
/// included).
pub(super) fn key_free_in(rows: &mut [Row], at: usize, c: &CertRecord) -> Result<(), StoreError> {
    let spki: &str = &c.spki_sha256;
    let mut other: Option<(i64, String, Option<String>)> = None;
    for (i, r) in rows.iter_mut().enumerate() {
        if i == 0 {
            if let Some(reason) = r.opt_text(at)? {
                return Err(StoreError::KeyBlocked { spki_sha256: spki.into(), reason });
            }
        }
        let Some(serial) = r.opt_text(at + 1)? else { continue };
        let device = r.opt_text(at + 2)?;
        if device == c.device_serial {
            continue;
        }
        let issued = r.int(at + 3)?;
        if other.as_ref().is_none_or(|(t, s, _)| (issued, serial.as_str()) < (*t, s.as_str())) {
            other = Some((issued, serial, device));
        }
    }
    match other {
        Some((_, serial, device)) => Err(StoreError::KeyInUse { spki_sha256: spki.into(), device, serial }),
        None => Ok(()),
    }
}

/// The group's audit entries, [`AUDIT_ROWS`] to a statement.
fn insert_audit(w: &mut dyn Writer, entries: &[(i64, AuditEvent, String, String)]) -> Result<(), StoreError> {
    for chunk in entries.chunks(AUDIT_ROWS) {
        let mut sql =
            String::from("INSERT INTO audit (seq, at, actor, action, target, detail, prev_hash, hash) VALUES ");
        let mut args = Vec::with_capacity(chunk.len() * 8);
        for (i, (seq, ev, prev, hash)) in chunk.iter().enumerate() {
            let p = i * 8;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 6,
                p + 7,
                p + 8
            ));
            args.extend([
                Arg::Int(*seq),
                Arg::Int(ev.at),
                (&ev.actor).into(),
                (&ev.action).into(),
                (&ev.target).into(),
                (&ev.detail).into(),
                prev.into(),
                hash.into(),
            ]);
        }
        w.run(&sql, &args).map_err(|e| match e {
            StoreError::Database(m) => StoreError::Database(format!("append audit: {m}")),
            e => e,
        })?;
    }
    Ok(())
}

/// A batch's Matter vendor id (`vendor`) or product id as stored: NULL for a device batch.
fn matter_id(p: &BatchProfile, vendor: bool) -> Arg<'static> {
    match p {
        BatchProfile::Device => Arg::Null,
        BatchProfile::MatterDac { vendor_id, product_id } => {
            Arg::Int(i64::from(if vendor { *vendor_id } else { *product_id }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Value;

    /// A row as [`STATION_READ`] answers it: the station's status, its
    /// certificate's serial and status, that certificate's key, the block on it.
    fn station_row(status: Option<&str>, cert_status: Option<&str>, block: Option<&str>) -> Row {
        let text = |v: Option<&str>| v.map_or(Value::Null, |s| Value::Text(s.into()));
        Row(vec![
            text(status),
            text(status.map(|_| "0A11")),
            text(cert_status),
            text(cert_status.map(|_| "ab12")),
            text(block),
        ])
    }

    fn judged(status: Option<&str>, cert_status: Option<&str>, block: Option<&str>) -> Result<(), StoreError> {
        judge_station(&mut station_row(status, cert_status, block), [0, 1, 2, 3, 4], "line-1")
    }

    fn why(r: Result<(), StoreError>) -> String {
        match r {
            Err(StoreError::StationCertificate { station, serial, why }) => {
                assert_eq!((station.as_str(), serial.as_str()), ("line-1", "0A11"));
                why
            }
            other => panic!("expected a refusal of the station's certificate, got {other:?}"),
        }
    }

    #[test]
    fn an_active_station_with_a_good_certificate_and_a_free_key_may_act() {
        judged(Some("active"), Some("good"), None).unwrap();
    }

    #[test]
    fn a_station_that_is_not_there_or_not_active_is_refused_as_such() {
        assert!(matches!(judged(None, None, None), Err(StoreError::StationUnknown { station }) if station == "line-1"));
        assert!(matches!(
            judged(Some("revoked"), Some("good"), None),
            Err(StoreError::StationRevoked { station }) if station == "line-1"
        ));
    }

    #[test]
    fn a_stations_certificate_revoked_missing_or_with_its_key_blocked_refuses_it() {
        assert_eq!(why(judged(Some("active"), Some("revoked"), None)), "it is revoked");
        // The station row names a certificate the store does not hold (no
        // foreign key ties them: a damaged or hand-edited store).
        assert_eq!(why(judged(Some("active"), None, None)), "it is not recorded");
        assert_eq!(why(judged(Some("active"), Some("good"), Some("leaked"))), "its key ab12 is blocked: leaked");
    }
}
