//! Every role of [`crate::Store`], once, for any store built on the engine:
//! writes are queued for the group commit, reads run on a read connection.

use std::sync::LazyLock;

use super::writes::to_i64;
use super::{Arg, Backend as _, HasEngine, Recording, Row, Sql, SqlExt as _};
use crate::ops::{Done, Op};
use crate::{
    audit_hash, Artifact, Artifacts, AuditEntry, AuditEvent, AuditLog, AuditReport, BatchProfile, BatchRecord,
    BatchStatus, Batches, BlockedKey, Born, CertQuery, CertRecord, CertStatus, Certificates, Claim, DeviceRevocation,
    DeviceRevoked, Flag, HandOver, HandedOver, Health, Issuance, KeyBlock, Keys, KeysBlocked, ManufacturerRecord,
    Owners, Ownership, OwnershipStatus, Precondition, Presented, Revocations, RevokedCert, StationRecord,
    StationStatus, Stations, StoreError, SyncOutcome, SyncUpload, TokenRecord, Tokens, UnixTime, WriterStats,
    GENESIS_HASH,
};

const CERT_COLS: &str = "serial, ca, profile, subject, device_serial, not_before, not_after, issued_at, spki_sha256, \
                         replaces, status, revoked_at, revocation_reason, der, replaced_by, template";

/// [`Certificates::presented`]: the certificate (columns 0 to 15) and its key's block
/// (16 to 20) ...
static PRESENTED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {}, {} FROM certificates c LEFT JOIN blocked_keys b ON b.spki_sha256 = c.spki_sha256 \
         WHERE c.serial = $1",
        prefixed("c", CERT_COLS),
        prefixed("b", BLOCKED_COLS)
    )
});

/// ... and the station holding it (21 to 24), on a row for each of its batches (25).
static PRESENTED_STATION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {}, {}, s.name, s.status, s.created_at, s.revoked_at, sb.batch_id FROM certificates c \
         LEFT JOIN blocked_keys b ON b.spki_sha256 = c.spki_sha256 LEFT JOIN stations s ON s.cert_serial = c.serial \
         LEFT JOIN station_batches sb ON sb.station = s.name WHERE c.serial = $1 ORDER BY sb.batch_id{{c}}",
        prefixed("c", CERT_COLS),
        prefixed("b", BLOCKED_COLS)
    )
});

/// `cols` (comma-separated) each qualified by `table`.
fn prefixed(table: &str, cols: &str) -> String {
    cols.split(',').map(|c| format!("{table}.{}", c.trim())).collect::<Vec<_>>().join(", ")
}

const BATCH_SELECT: &str = "SELECT b.id, b.product, b.quota, b.issued, b.refused, b.flagged, b.valid_from, \
                            b.valid_until, b.status, b.created_at, \
                            (SELECT COUNT(*) FROM batch_serials s WHERE s.batch_id = b.id), \
                            b.profile, b.vendor_id, b.product_id, b.template, b.tpm_attestation FROM batches b";

/// An RFC 5280 reason code as stored (0, unspecified, when unreadable).
fn reason(v: Option<i64>) -> u8 {
    v.and_then(|v| u8::try_from(v).ok()).unwrap_or(0)
}

fn cert_row(mut r: Row) -> Result<CertRecord, StoreError> {
    cert_cols(&mut r)
}

/// Columns 0 to 15 of a row: one certificate's ([`CERT_COLS`]).
fn cert_cols(r: &mut Row) -> Result<CertRecord, StoreError> {
    let status = if r.text(10)? == "revoked" {
        CertStatus::Revoked { at: r.opt_int(11)?.unwrap_or(0), reason: reason(r.opt_int(12)?) }
    } else {
        CertStatus::Good
    };
    Ok(CertRecord {
        serial: r.text(0)?,
        ca: r.text(1)?,
        profile: r.text(2)?,
        subject: r.text(3)?,
        device_serial: r.opt_text(4)?,
        not_before: r.int(5)?,
        not_after: r.int(6)?,
        issued_at: r.int(7)?,
        spki_sha256: r.text(8)?,
        replaces: r.opt_text(9)?,
        replaced_by: r.opt_text(14)?,
        template: r.opt_text(15)?,
        status,
        der: r.blob(13)?,
    })
}

fn batch_row(mut r: Row) -> Result<BatchRecord, StoreError> {
    Ok(BatchRecord {
        id: r.text(0)?,
        product: r.text(1)?,
        quota: r.count(2)?,
        issued: r.count(3)?,
        refused: r.count(4)?,
        flagged: r.count(5)?,
        valid_from: r.int(6)?,
        valid_until: r.int(7)?,
        status: if r.text(8)? == "open" { BatchStatus::Open } else { BatchStatus::Closed },
        created_at: r.int(9)?,
        allowlist: r.count(10)?,
        profile: batch_profile(&mut r)?,
        template: r.opt_text(14)?,
        tpm_attestation: r.int(15)? != 0,
    })
}

/// Columns 11 to 13 of a batch row: its profile, and its Matter ids.
fn batch_profile(r: &mut Row) -> Result<BatchProfile, StoreError> {
    let profile = r.text(11)?;
    let id = |v: Option<i64>| v.and_then(|v| u16::try_from(v).ok());
    match (profile.as_str(), id(r.opt_int(12)?), id(r.opt_int(13)?)) {
        ("device", None, None) => Ok(BatchProfile::Device),
        ("matter-dac", Some(vendor_id), Some(product_id)) => Ok(BatchProfile::MatterDac { vendor_id, product_id }),
        (p, v, d) => Err(StoreError::Database(format!("batch profile {p:?} with vendor id {v:?}, product id {d:?}"))),
    }
}

/// A station by `name` or by `cert_serial` (the column is ours, never the caller's).
fn station_by<S: Sql + ?Sized>(
    db: &mut S,
    column: &'static str,
    value: &str,
) -> Result<Option<StationRecord>, StoreError> {
    let sql = format!("SELECT name, cert_serial, status, created_at, revoked_at FROM stations WHERE {column} = $1");
    let Some(mut row) = db.opt(&sql, &[value.into()])? else { return Ok(None) };
    let name = row.text(0)?;
    let batches = db
        .all("SELECT batch_id FROM station_batches WHERE station = $1 ORDER BY batch_id{c}", &[(&name).into()])?
        .into_iter()
        .map(|mut r| r.text(0))
        .collect::<Result<Vec<_>, _>>()?;
    let status = station_status(&row.text(2)?, row.opt_int(4)?);
    Ok(Some(StationRecord { name, cert_serial: row.text(1)?, batches, status, created_at: row.int(3)? }))
}

/// A station's status as stored: `active`, else revoked at `revoked_at`.
fn station_status(status: &str, revoked_at: Option<i64>) -> StationStatus {
    match status {
        "active" => StationStatus::Active,
        _ => StationStatus::Revoked { at: revoked_at.unwrap_or(0) },
    }
}

pub(super) fn ownership_of<S: Sql + ?Sized>(db: &mut S, serial: &str) -> Result<Option<Ownership>, StoreError> {
    let row = db.opt(
        "SELECT device_serial, via, since, status, changed_at, manufacturer_spki, birth_sha256 \
         FROM owned_devices WHERE device_serial = $1",
        &[serial.into()],
    )?;
    row.map(|mut r| {
        Ok(Ownership {
            device_serial: r.text(0)?,
            via: r.text(1)?,
            since: r.int(2)?,
            status: OwnershipStatus::parse(&r.text(3)?)?,
            changed_at: r.opt_int(4)?,
            manufacturer_spki: r.opt_text(5)?,
            birth_sha256: r.opt_text(6)?,
        })
    })
    .transpose()
}

pub(super) fn sync_state_of<S: Sql + ?Sized>(
    db: &mut S,
    station: &str,
    batch: &str,
) -> Result<(u64, String), StoreError> {
    let row = db.opt(
        "SELECT last_seq, head FROM syncs WHERE station = $1 AND batch_id = $2",
        &[station.into(), batch.into()],
    )?;
    match row {
        Some(mut r) => Ok((r.count(0)?, r.text(1)?)),
        None => Ok((0, GENESIS_HASH.to_string())),
    }
}

pub(super) const AUDIT_COLS: &str = "seq, at, actor, action, target, detail, prev_hash, hash";

pub(super) fn audit_row(mut r: Row) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        seq: r.count(0)?,
        event: AuditEvent {
            at: r.int(1)?,
            actor: r.text(2)?,
            action: r.text(3)?,
            target: r.text(4)?,
            detail: r.text(5)?,
        },
        prev_hash: r.text(6)?,
        hash: r.text(7)?,
    })
}

fn audit_entries_of(db: &mut dyn Sql, from: u64, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
    let sql = format!("SELECT {AUDIT_COLS} FROM audit WHERE seq >= $1 ORDER BY seq LIMIT $2");
    let rows = db.all(&sql, &[Arg::Int(to_i64(from)), Arg::Int(i64::from(limit))])?;
    rows.into_iter().map(audit_row).collect()
}

/// Read with the store's backend.
pub(super) fn read<E: HasEngine + ?Sized, T>(
    store: &E,
    f: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    store.engine().backend.read(f)
}

pub(super) fn submit<E: HasEngine + ?Sized>(store: &E, op: Op) -> Result<Done, StoreError> {
    store.engine().submit(op)
}

fn unit<E: HasEngine + ?Sized>(store: &E, op: Op) -> Result<(), StoreError> {
    submit(store, op).map(|_| ())
}

/// An answer of the wrong kind: a bug, reported rather than panicked on.
fn unexpected(what: &str, d: Done) -> StoreError {
    StoreError::Database(format!("{what} answered {d:?}"))
}

impl<E: HasEngine> Certificates for E {
    fn record_issuance(&self, issuance: Issuance) -> Result<(), StoreError> {
        unit(self, Op::Issue(Box::new(issuance)))
    }

    fn record_issuance_queued(&self, issuance: Issuance) -> Recording {
        self.engine().queue(Op::Issue(Box::new(issuance)))
    }

    fn certificate(&self, serial: &str) -> Result<Option<CertRecord>, StoreError> {
        let sql = format!("SELECT {CERT_COLS} FROM certificates WHERE serial = $1");
        read(self, |db| db.opt(&sql, &[serial.into()])?.map(cert_row).transpose())
    }

    fn presented(&self, serial: &str, station: bool) -> Result<Option<Presented>, StoreError> {
        let sql: &str = if station { &PRESENTED_STATION } else { &PRESENTED };
        let rows = read(self, |db| db.all(sql, &[serial.into()]))?;
        let mut rows = rows.into_iter();
        let Some(mut first) = rows.next() else { return Ok(None) };
        let record = cert_cols(&mut first)?;
        let key_blocked = blocked_cols(&mut first, 16)?;
        let station = match station.then(|| first.opt_text(21)).transpose()?.flatten() {
            None => None,
            Some(name) => {
                let status = station_status(&first.text(22)?, first.opt_int(24)?);
                let created_at = first.int(23)?;
                let mut batches = Vec::new();
                for mut r in std::iter::once(first).chain(rows) {
                    batches.extend(r.opt_text(25)?);
                }
                Some(StationRecord { name, cert_serial: record.serial.clone(), batches, status, created_at })
            }
        };
        Ok(Some(Presented { record, key_blocked, station }))
    }

    fn list_certificates(&self, q: &CertQuery) -> Result<Vec<CertRecord>, StoreError> {
        // Only the filters given, so that the planner can use an index for
        // them (`$1 IS NULL OR ...` hides it: a scan of every certificate).
        let mut args: Vec<Arg<'_>> = Vec::new();
        let mut conds = Vec::new();
        for (col, op, v) in [
            ("device_serial", "=", q.device_serial.as_ref().map(Arg::from)),
            ("ca", "=", q.ca.as_ref().map(Arg::from)),
            ("not_after", "<=", q.expiring_before.map(Arg::Int)),
            ("not_after", ">=", q.expiring_after.map(Arg::Int)),
            ("profile", "=", q.profile.as_ref().map(Arg::from)),
        ] {
            if let Some(v) = v {
                args.push(v);
                conds.push(format!("{col} {op} ${}", args.len()));
            }
        }
        let filter = if conds.is_empty() { String::new() } else { format!("WHERE {}", conds.join(" AND ")) };
        // Sorting whole rows (the DER with them) costs 4x the CPU of reading them
        // for 20,000 certificates (and spills past PostgreSQL's work_mem): all
        // of them are sorted here, and a limited list sorts only the keys in
        // SQL and reads just those rows.
        let sql = match q.limit {
            None => format!("SELECT {CERT_COLS} FROM certificates {filter}"),
            Some(limit) => {
                args.push(Arg::Int(i64::from(limit)));
                format!(
                    "SELECT {CERT_COLS} FROM certificates WHERE {{key}} IN
                       (SELECT {{key}} FROM certificates {filter} ORDER BY issued_at DESC, serial{{c}} LIMIT ${})",
                    args.len()
                )
            }
        };
        read(self, |db| {
            let mut rows = db.all(&sql, &args)?.into_iter().map(cert_row).collect::<Result<Vec<_>, _>>()?;
            crate::newest_first(&mut rows);
            Ok(rows)
        })
    }

    fn count_certificates(&self) -> Result<u64, StoreError> {
        read(self, |db| match db.opt("SELECT COUNT(*) FROM certificates", &[])? {
            Some(mut r) => r.count(0),
            None => Ok(0),
        })
    }

    fn latest_not_after(&self, ca: &str) -> Result<Option<UnixTime>, StoreError> {
        read(self, |db| {
            match db.opt("SELECT MAX(not_after) FROM certificates WHERE ca = $1 AND status = 'good'", &[ca.into()])? {
                Some(mut r) => r.opt_int(0),
                None => Ok(None),
            }
        })
    }

    fn count_expiring(&self, from: UnixTime, until: UnixTime) -> Result<u64, StoreError> {
        // The range on not_after is what the index (certificates_not_after) answers.
        read(self, |db| {
            match db.opt(
                "SELECT COUNT(*) FROM certificates WHERE not_after >= $1 AND not_after < $2 \
                 AND status = 'good' AND replaced_by IS NULL",
                &[Arg::Int(from), Arg::Int(until)],
            )? {
                Some(mut r) => r.count(0),
                None => Ok(0),
            }
        })
    }
}

impl<E: HasEngine> Health for E {
    fn probe(&self) -> Result<i64, StoreError> {
        read(self, |db| match db.opt("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[])? {
            Some(mut r) => r.int(0),
            None => Ok(0),
        })
    }

    fn writer_stats(&self) -> std::sync::Arc<WriterStats> {
        self.engine().stats.clone()
    }
}

impl<E: HasEngine> Tokens for E {
    fn create_token(&self, token: TokenRecord, audit: AuditEvent) -> Result<(), StoreError> {
        unit(self, Op::Token(token, audit))
    }

    fn token(&self, token_hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        read(self, |db| {
            let row = db.opt(
                "SELECT token_hash, device_serial, created_at, expires_at, used_at, cert_serial, template FROM tokens \
                 WHERE token_hash = $1",
                &[token_hash.into()],
            )?;
            row.map(|mut r| {
                Ok(TokenRecord {
                    token_hash: r.text(0)?,
                    device_serial: r.text(1)?,
                    created_at: r.int(2)?,
                    expires_at: r.int(3)?,
                    used_at: r.opt_int(4)?,
                    cert_serial: r.opt_text(5)?,
                    template: r.opt_text(6)?,
                })
            })
            .transpose()
        })
    }
}

impl<E: HasEngine> crate::ConsoleLinks for E {
    fn create_console_link(&self, link: crate::ConsoleLink, audit: AuditEvent) -> Result<(), StoreError> {
        unit(self, Op::ConsoleLink(Box::new(link), audit))
    }

    fn use_console_link(
        &self,
        link_hash: &str,
        now: UnixTime,
        audit: AuditEvent,
    ) -> Result<crate::ConsoleLink, StoreError> {
        match submit(self, Op::UseConsoleLink(link_hash.to_string(), now, audit))? {
            Done::ConsoleLink(l) => Ok(l),
            d => Err(unexpected("a console link", d)),
        }
    }

    fn console_link(&self, link_hash: &str) -> Result<Option<crate::ConsoleLink>, StoreError> {
        read(self, |db| {
            let row = db.opt(
                "SELECT link_hash, admin, role, created_at, expires_at, used_at FROM console_links \
                 WHERE link_hash = $1",
                &[link_hash.into()],
            )?;
            row.map(|mut r| {
                Ok(crate::ConsoleLink {
                    link_hash: r.text(0)?,
                    admin: r.text(1)?,
                    role: r.text(2)?,
                    created_at: r.int(3)?,
                    expires_at: r.int(4)?,
                    used_at: r.opt_int(5)?,
                })
            })
            .transpose()
        })
    }
}

impl<E: HasEngine> AuditLog for E {
    fn append_audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        unit(self, Op::Audit(event))
    }

    fn audit_entries(&self, from: u64, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        read(self, |db| audit_entries_of(db, from, limit))
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
}

impl<E: HasEngine> Batches for E {
    fn create_batch(&self, batch: BatchRecord, serials: Vec<String>, audit: AuditEvent) -> Result<(), StoreError> {
        unit(self, Op::CreateBatch(Box::new(batch), serials, audit))
    }

    fn batch(&self, id: &str) -> Result<Option<BatchRecord>, StoreError> {
        let sql = format!("{BATCH_SELECT} WHERE b.id = $1");
        read(self, |db| db.opt(&sql, &[id.into()])?.map(batch_row).transpose())
    }

    fn list_batches(&self) -> Result<Vec<BatchRecord>, StoreError> {
        let sql = format!("{BATCH_SELECT} ORDER BY b.created_at DESC, b.id{{c}}");
        read(self, |db| db.all(&sql, &[])?.into_iter().map(batch_row).collect())
    }

    fn close_batch(&self, id: &str, audit: AuditEvent) -> Result<(), StoreError> {
        unit(self, Op::CloseBatch(id.to_string(), audit))
    }

    fn unborn_serials(&self, id: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        read(self, |db| {
            db.all(
                "SELECT s.device_serial FROM batch_serials s LEFT JOIN births b ON b.device_serial = s.device_serial
                 WHERE s.batch_id = $1 AND b.device_serial IS NULL ORDER BY s.position LIMIT $2",
                &[id.into(), Arg::Int(i64::from(limit))],
            )?
            .into_iter()
            .map(|mut r| r.text(0))
            .collect()
        })
    }

    fn born(&self, device_serial: &str) -> Result<Option<Born>, StoreError> {
        read(self, |db| {
            let sql = "SELECT cert_serial, batch_id, station, born_at FROM births WHERE device_serial = $1";
            db.opt(sql, &[device_serial.into()])?
                .map(|mut r| {
                    Ok(Born { cert_serial: r.text(0)?, batch: r.text(1)?, station: r.text(2)?, born_at: r.int(3)? })
                })
                .transpose()
        })
    }

    fn record_refusal(&self, batch: Option<&str>, audit: AuditEvent) -> Result<(), StoreError> {
        unit(self, Op::Refusal(batch.map(str::to_string), audit))
    }

    fn flagged(&self, batch: &str) -> Result<Vec<(String, Flag)>, StoreError> {
        read(self, |db| {
            db.all(
                "SELECT cert_serial, reason FROM flags WHERE batch_id = $1 ORDER BY flagged_at, cert_serial{c}",
                &[batch.into()],
            )?
            .into_iter()
            .map(|mut r| {
                let f = match r.text(1)?.as_str() {
                    "off-allowlist" => Flag::OffAllowlist,
                    "clone" => Flag::Clone,
                    "blocked-key" => Flag::BlockedKey,
                    "shared-key" => Flag::SharedKey,
                    "non-canonical-key" => Flag::NonCanonicalKey,
                    _ => Flag::Overbuild,
                };
                Ok((r.text(0)?, f))
            })
            .collect()
        })
    }
}

impl<E: HasEngine> Stations for E {
    fn add_station(&self, station: StationRecord, cert: CertRecord, audit: AuditEvent) -> Result<(), StoreError> {
        unit(self, Op::AddStation(Box::new(station), Box::new(cert), audit))
    }

    fn station(&self, name: &str) -> Result<Option<StationRecord>, StoreError> {
        read(self, |db| station_by(db, "name", name))
    }

    fn station_by_cert(&self, cert_serial: &str) -> Result<Option<StationRecord>, StoreError> {
        read(self, |db| station_by(db, "cert_serial", cert_serial))
    }

    fn revoke_station(&self, name: &str, at: UnixTime, audit: AuditEvent) -> Result<(), StoreError> {
        unit(self, Op::RevokeStation(name.to_string(), at, audit))
    }

    fn add_delegation(
        &self,
        station: &str,
        batch: &str,
        cert: CertRecord,
        audit: AuditEvent,
    ) -> Result<(), StoreError> {
        unit(self, Op::Delegation(station.into(), batch.into(), Box::new(cert), audit))
    }

    fn delegation(&self, station: &str, batch: &str) -> Result<Option<String>, StoreError> {
        read(self, |db| {
            let sql = "SELECT cert_serial FROM delegations WHERE station = $1 AND batch_id = $2";
            db.opt(sql, &[station.into(), batch.into()])?.map(|mut r| r.text(0)).transpose()
        })
    }

    fn sync_state(&self, station: &str, batch: &str) -> Result<(u64, String), StoreError> {
        read(self, |db| sync_state_of(db, station, batch))
    }

    fn apply_sync(&self, sync: SyncUpload) -> Result<SyncOutcome, StoreError> {
        match submit(self, Op::Sync(Box::new(sync)))? {
            Done::Synced(o) => Ok(o),
            other => Err(unexpected("a sync", other)),
        }
    }
}

impl<E: HasEngine> Revocations for E {
    fn revoke(&self, serial: &str, reason: u8, at: UnixTime, audit: AuditEvent) -> Result<(), StoreError> {
        unit(self, Op::Revoke(serial.into(), reason, at, audit))
    }

    fn revoke_device(&self, revocation: DeviceRevocation) -> Result<DeviceRevoked, StoreError> {
        match submit(self, Op::RevokeDevice(Box::new(revocation)))? {
            Done::DeviceRevoked(d) => Ok(d),
            other => Err(unexpected("a device revocation", other)),
        }
    }

    fn revoked(&self, ca: &str) -> Result<Vec<RevokedCert>, StoreError> {
        read(self, |db| {
            db.all(
                "SELECT serial, revoked_at, revocation_reason, not_after FROM certificates
                 WHERE ca = $1 AND status = 'revoked' ORDER BY revoked_at, serial{c}",
                &[ca.into()],
            )?
            .into_iter()
            .map(|mut r| {
                Ok(RevokedCert {
                    serial: r.text(0)?,
                    revoked_at: r.opt_int(1)?.unwrap_or(0),
                    reason: reason(r.opt_int(2)?),
                    not_after: r.int(3)?,
                })
            })
            .collect()
        })
    }

    fn revocation_mark(&self, ca: &str) -> Result<(u64, UnixTime), StoreError> {
        read(self, |db| {
            let sql =
                "SELECT COUNT(*), COALESCE(MAX(revoked_at), 0) FROM certificates WHERE ca = $1 AND status = 'revoked'";
            match db.opt(sql, &[ca.into()])? {
                Some(mut r) => Ok((r.count(0)?, r.int(1)?)),
                None => Ok((0, 0)),
            }
        })
    }

    fn next_crl_number(&self, ca: &str, audit: AuditEvent) -> Result<u64, StoreError> {
        match submit(self, Op::CrlNumber(ca.into(), audit))? {
            Done::CrlNumber(n) => Ok(n),
            other => Err(unexpected("a CRL number", other)),
        }
    }
}

impl<E: HasEngine> Owners for E {
    fn add_manufacturer(&self, m: ManufacturerRecord, audit: AuditEvent) -> Result<(), StoreError> {
        unit(self, Op::AddManufacturer(Box::new(m), audit))
    }

    fn manufacturers(&self) -> Result<Vec<ManufacturerRecord>, StoreError> {
        read(self, |db| {
            db.all("SELECT name, cert_der, spki_sha256, added_at FROM manufacturers ORDER BY name{c}", &[])?
                .into_iter()
                .map(|mut r| {
                    Ok(ManufacturerRecord {
                        name: r.text(0)?,
                        cert_der: r.blob(1)?,
                        spki_sha256: r.text(2)?,
                        added_at: r.int(3)?,
                    })
                })
                .collect()
        })
    }

    fn claim_devices(&self, claims: Vec<Claim>, via: &str, at: UnixTime, audit: AuditEvent) -> Result<u64, StoreError> {
        match submit(self, Op::Claim(claims, via.into(), at, audit))? {
            Done::Count(n) => Ok(n),
            other => Err(unexpected("a claim", other)),
        }
    }

    fn ownership(&self, device_serial: &str) -> Result<Option<Ownership>, StoreError> {
        read(self, |db| ownership_of(db, device_serial))
    }

    fn own_by_voucher(
        &self,
        device_serial: &str,
        via: &str,
        voucher: Artifact,
        held: Precondition,
        audit: AuditEvent,
    ) -> Result<(), StoreError> {
        unit(self, Op::OwnByVoucher(device_serial.into(), via.into(), Box::new(voucher), Box::new(held), audit))
    }

    fn hand_over(&self, h: HandOver) -> Result<HandedOver, StoreError> {
        match submit(self, Op::HandOver(Box::new(h)))? {
            Done::HandedOver(d) => Ok(d),
            other => Err(unexpected("a hand-over", other)),
        }
    }

    fn release_device(
        &self,
        device_serial: &str,
        status: OwnershipStatus,
        at: UnixTime,
        audit: AuditEvent,
    ) -> Result<(), StoreError> {
        unit(self, Op::Release(device_serial.into(), status, at, audit))
    }
}

impl<E: HasEngine> Artifacts for E {
    fn publish_artifact(&self, artifact: Artifact, audit: AuditEvent) -> Result<(), StoreError> {
        unit(self, Op::Publish(Box::new(artifact), audit))
    }

    fn artifact(&self, kind: &str) -> Result<Option<Artifact>, StoreError> {
        read(self, |db| {
            let row = db.opt(
                "SELECT kind, version, body, published_at FROM artifacts WHERE kind = $1 ORDER BY version DESC LIMIT 1",
                &[kind.into()],
            )?;
            row.map(|mut r| {
                Ok(Artifact { kind: r.text(0)?, version: r.count(1)?, body: r.blob(2)?, published_at: r.int(3)? })
            })
            .transpose()
        })
    }
}

impl<E: HasEngine> Keys for E {
    fn block_keys(&self, block: KeyBlock) -> Result<KeysBlocked, StoreError> {
        match submit(self, Op::BlockKeys(Box::new(block)))? {
            Done::KeysBlocked(k) => Ok(k),
            other => Err(unexpected("blocking keys", other)),
        }
    }

    fn blocked_key(&self, spki_sha256: &str) -> Result<Option<BlockedKey>, StoreError> {
        let sql = format!("SELECT {BLOCKED_COLS} FROM blocked_keys WHERE spki_sha256 = $1");
        read(self, |db| db.opt(&sql, &[spki_sha256.into()])?.map(blocked_row).transpose())
    }

    fn blocked_keys(&self) -> Result<Vec<BlockedKey>, StoreError> {
        let sql = format!("SELECT {BLOCKED_COLS} FROM blocked_keys ORDER BY blocked_at, spki_sha256{{c}}");
        read(self, |db| db.all(&sql, &[])?.into_iter().map(blocked_row).collect())
    }

    fn certificates_by_key(&self, spki_sha256: &str) -> Result<Vec<CertRecord>, StoreError> {
        let sql = format!("SELECT {CERT_COLS} FROM certificates WHERE spki_sha256 = $1");
        read(self, |db| {
            let mut rows =
                db.all(&sql, &[spki_sha256.into()])?.into_iter().map(cert_row).collect::<Result<Vec<_>, _>>()?;
            crate::newest_first(&mut rows);
            Ok(rows)
        })
    }
}

const BLOCKED_COLS: &str = "spki_sha256, reason, source, blocked_at, blocked_by";

fn blocked_row(mut r: Row) -> Result<BlockedKey, StoreError> {
    blocked_cols(&mut r, 0)?.ok_or_else(|| StoreError::Database("a blocked key row without its key".into()))
}

/// A blocked key from a row's columns `at` to `at + 4` ([`BLOCKED_COLS`]); `None`
/// when they are NULL (a left join that found no block).
fn blocked_cols(r: &mut Row, at: usize) -> Result<Option<BlockedKey>, StoreError> {
    let Some(spki_sha256) = r.opt_text(at)? else { return Ok(None) };
    Ok(Some(BlockedKey {
        spki_sha256,
        reason: r.text(at + 1)?,
        source: r.text(at + 2)?,
        blocked_at: r.int(at + 3)?,
        blocked_by: r.text(at + 4)?,
    }))
}

impl<E: HasEngine> crate::Events for E {
    fn events_after(&self, after: u64, limit: u32) -> Result<Vec<crate::EventRecord>, StoreError> {
        read(self, |db| {
            db.all(
                "SELECT seq, kind, subject, created_at, body FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[Arg::Int(to_i64(after)), Arg::Int(i64::from(limit))],
            )?
            .into_iter()
            .map(|mut r| {
                Ok(crate::EventRecord {
                    seq: r.count(0)?,
                    kind: r.text(1)?,
                    subject: r.text(2)?,
                    created_at: r.int(3)?,
                    data: r.text(4)?,
                })
            })
            .collect()
        })
    }

    fn last_event_seq(&self) -> Result<u64, StoreError> {
        read(self, |db| match db.opt("SELECT COALESCE(MAX(seq), 0) FROM events", &[])? {
            Some(mut r) => r.count(0),
            None => Ok(0),
        })
    }

    fn webhook_cursor(&self, name: &str) -> Result<Option<u64>, StoreError> {
        read(self, |db| {
            db.opt("SELECT delivered FROM webhook_cursors WHERE name = $1", &[name.into()])?
                .map(|mut r| r.count(0))
                .transpose()
        })
    }

    fn lease_webhook(
        &self,
        name: &str,
        owner: &str,
        now: UnixTime,
        until: UnixTime,
    ) -> Result<Option<u64>, StoreError> {
        match submit(self, Op::LeaseWebhook(name.into(), owner.into(), now, until))? {
            Done::Lease(l) => Ok(l),
            other => Err(unexpected("leasing a webhook", other)),
        }
    }

    fn advance_webhook(&self, name: &str, owner: &str, seq: u64, until: UnixTime) -> Result<(), StoreError> {
        unit(self, Op::AdvanceWebhook(name.into(), owner.into(), seq, until))
    }

    fn release_webhook(&self, name: &str, owner: &str) -> Result<(), StoreError> {
        unit(self, Op::ReleaseWebhook(name.into(), owner.into()))
    }

    fn note_expiring(&self, scan: crate::ExpiringScan) -> Result<crate::ExpiringNoted, StoreError> {
        match submit(self, Op::NoteExpiring(Box::new(scan)))? {
            Done::Expiring(n) => Ok(n),
            other => Err(unexpected("noting expiring certificates", other)),
        }
    }
}
