//! The fleet console (issue #18): the summaries every write keeps (in its
//! own transaction, per device it touched), their rebuild from the registry,
//! and the console's reads. The state rules are in `crate::fleet`.

use std::collections::BTreeMap;

use super::reads::{audit_row, read, submit, AUDIT_COLS};
use super::writes::{cert_args, multi_insert, to_i64, Tx, CERT_TABLE};
use super::{Arg, HasEngine, Row, Sql, SqlExt as _, Value};
use crate::fleet::{DAY, EXPIRING_SECS, HISTORY_DAYS, MAX_AUDIT_PAGE, MAX_OVERVIEW_DAYS};
use crate::ops::Op;
use crate::{
    day_of, refusals_in, AuditEntry, AuditFilter, BatchProgress, Batches as _, CaRevocations, CertRecord, DayCount,
    DeviceStates, Fleet, FleetOverview, StationActivity, StoreError, UnixTime,
};

const HOUR: i64 = 3_600;

/// A certificate the fleet counts: of profile `device`, naming a device.
pub(super) fn is_device_cert(c: &CertRecord) -> bool {
    c.profile == "device" && c.device_serial.is_some()
}

fn hour_of(t: i64) -> i64 {
    t.div_euclid(HOUR)
}

/// A device's row of `fleet_devices`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Summary {
    state: &'static str,
    cert_serial: Option<String>,
    not_after: Option<i64>,
}

/// The device's summary from its certificates, births and ownership (the
/// rules of `crate::fleet`); `None` when the store does not know it. Each
/// row's columns 0 to 6 are one certificate's ([`CERT_COLS`]; all NULL for
/// none), `owner` the status of its ownership.
fn summarize(rows: &mut [Row], owner: Option<&str>) -> Result<Option<Summary>, StoreError> {
    // Newest first by (issuedAt, serial): the current operational certificate, the newest birth.
    let mut current: Option<(i64, String, i64, bool)> = None;
    let mut birth: Option<(i64, String, bool)> = None;
    let mut any = false;
    for r in rows {
        let Some(serial) = r.opt_text(0)? else { continue };
        any = true;
        let (issued, not_after, revoked) = (r.int(1)?, r.int(2)?, r.text(3)? == "revoked");
        let successor = r.opt_text(4)?.is_some();
        let is_birth = r.opt_int(5)?.is_some() || r.opt_int(6)?.is_some();
        if is_birth {
            if birth.as_ref().is_none_or(|(i, s, _)| (issued, serial.as_str()) > (*i, s.as_str())) {
                birth = Some((issued, serial, revoked));
            }
        } else if !successor && current.as_ref().is_none_or(|(i, s, _, _)| (issued, serial.as_str()) > (*i, s.as_str()))
        {
            current = Some((issued, serial, not_after, revoked));
        }
    }
    if !any && owner.is_none() {
        return Ok(None);
    }
    let (cert_serial, not_after) = match &current {
        Some((_, s, n, _)) => (Some(s.clone()), Some(*n)),
        None => (None, None),
    };
    let state = match (&current, owner, &birth) {
        (Some((_, _, _, true)), _, _) => "revoked",
        (Some(_), _, _) => "certified",
        (None, Some("revoked"), _) | (None, _, Some((_, _, true))) => "revoked",
        (None, Some("owned"), _) => "commissioned",
        _ => "born",
    };
    Ok(Some(Summary { state, cert_serial, not_after }))
}

/// The columns of a device certificate `c` that [`summarize`] reads.
const CERT_COLS: &str = "c.serial, c.issued_at, c.not_after, c.status, c.replaced_by,
    (SELECT 1 FROM births b WHERE b.device_serial = c.device_serial AND b.cert_serial = c.serial),
    (SELECT 1 FROM flags f WHERE f.cert_serial = c.serial)";

/// A device's summary as kept (its row of `fleet_devices`) and as its
/// registry rows make it now, for the device `{sn}`, from `{from}`: one row
/// per certificate of the device (one of NULLs when it has none), each with
/// the device's ownership and kept summary (columns 7 to 10).
const SUMMARY_READ_OF: &str = "SELECT {CERT_COLS},
        (SELECT status FROM owned_devices WHERE device_serial = {sn}), d.state, d.cert_serial, d.not_after{more}
    FROM {from} LEFT JOIN fleet_devices d ON d.device_serial = {sn}
    LEFT JOIN certificates c ON c.device_serial = {sn} AND c.profile = 'device'";

/// [`SUMMARY_READ_OF`] from `from` for the device `sn`, with `more` columns.
pub(super) fn summary_read(sn: &str, from: &str, more: &str) -> String {
    SUMMARY_READ_OF
        .replace("{CERT_COLS}", CERT_COLS)
        .replace("{sn}", sn)
        .replace("{from}", from)
        .replace("{more}", more)
}

static SUMMARY_READ: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| summary_read("$1", "(SELECT 1 AS one) o", ""));

/// A device's summary as kept and as made now ([`SUMMARY_READ_OF`]).
fn kept_and_summary(db: &mut dyn Sql, device: &str) -> Result<(Option<Summary>, Option<Summary>), StoreError> {
    kept_and_summary_in(db.all(&SUMMARY_READ, &[device.into()])?, None)
}

/// A device's summary as kept and as made now, from its rows of
/// [`SUMMARY_READ_OF`] and, with `born`, the device's birth certificate
/// recorded after them.
pub(super) fn kept_and_summary_in(
    mut rows: Vec<Row>,
    born: Option<&CertRecord>,
) -> Result<(Option<Summary>, Option<Summary>), StoreError> {
    let first = rows.first_mut().ok_or_else(|| StoreError::Database("the fleet summary read no row".into()))?;
    let owner = first.opt_text(7)?;
    let kept = match first.opt_text(8)? {
        None => None,
        Some(state) => {
            let state = match state.as_str() {
                "born" => "born",
                "commissioned" => "commissioned",
                "certified" => "certified",
                _ => "revoked",
            };
            Some(Summary { state, cert_serial: first.opt_text(9)?, not_after: first.opt_int(10)? })
        }
    };
    if let Some(c) = born {
        // As CERT_COLS would read it once recorded (with no successor yet: `cert_args`).
        let status = if matches!(c.status, crate::CertStatus::Good) { "good" } else { "revoked" };
        rows.push(Row(vec![
            Value::Text(c.serial.clone()),
            Value::Int(c.issued_at),
            Value::Int(c.not_after),
            Value::Text(status.into()),
            Value::Null,
            Value::Int(1),
            Value::Null,
        ]));
    }
    Ok((kept, summarize(&mut rows, owner.as_deref())?))
}

/// What operations moved the counters by (devices per state, certified
/// devices per hour of expiry, issued/renewed/refused per day): kept in
/// memory per operation, merged into the transaction's when the operation
/// succeeds, written once when the group commits ([`Deltas::write`]).
#[derive(Debug, Default)]
pub(crate) struct Deltas {
    /// The operation rebuilt every summary from the registry: what earlier
    /// operations of the transaction moved is in the rebuild already.
    reset: bool,
    states: BTreeMap<&'static str, i64>,
    hours: BTreeMap<i64, i64>,
    days: BTreeMap<i64, [i64; 3]>,
}

impl Deltas {
    fn add_state(&mut self, s: &Summary, n: i64) {
        *self.states.entry(s.state).or_default() += n;
        if let (Some(t), "certified") = (s.not_after, s.state) {
            *self.hours.entry(hour_of(t)).or_default() += n;
        }
    }

    /// An operation's deltas, once it succeeded.
    pub(super) fn merge(&mut self, op: Deltas) {
        if op.reset {
            *self = Deltas::default();
        }
        for (k, v) in op.states {
            *self.states.entry(k).or_default() += v;
        }
        for (k, v) in op.hours {
            *self.hours.entry(k).or_default() += v;
        }
        for (k, v) in op.days {
            let d = self.days.entry(k).or_default();
            for i in 0..3 {
                d[i] += v[i];
            }
        }
    }

    /// Write the counters' moves (those that are not zero).
    pub(super) fn write(&self, db: &mut dyn Sql) -> Result<(), StoreError> {
        for (k, n) in self.states.iter().filter(|(_, n)| **n != 0) {
            db.run(
                "INSERT INTO fleet_states (state, n) VALUES ($1, $2)
                 ON CONFLICT (state) DO UPDATE SET n = fleet_states.n + excluded.n",
                &[(*k).into(), Arg::Int(*n)],
            )?;
        }
        for (k, n) in self.hours.iter().filter(|(_, n)| **n != 0) {
            db.run(
                "INSERT INTO fleet_expiry (hour, n) VALUES ($1, $2)
                 ON CONFLICT (hour) DO UPDATE SET n = fleet_expiry.n + excluded.n",
                &[Arg::Int(*k), Arg::Int(*n)],
            )?;
        }
        for (k, [i, r, f]) in self.days.iter().filter(|(_, v)| v.iter().any(|n| *n != 0)) {
            db.run(
                "INSERT INTO fleet_days (day, issued, renewed, refused) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (day) DO UPDATE SET issued = fleet_days.issued + excluded.issued,
                 renewed = fleet_days.renewed + excluded.renewed, refused = fleet_days.refused + excluded.refused",
                &[Arg::Int(*k), Arg::Int(*i), Arg::Int(*r), Arg::Int(*f)],
            )?;
        }
        Ok(())
    }
}

/// Recompute one device's summary and move the counters by the difference.
fn refresh_device(db: &mut dyn Sql, device: &str, deltas: &mut Deltas) -> Result<(), StoreError> {
    let (old, new) = kept_and_summary(db, device)?;
    match moved(old, new, deltas) {
        Moved::Same => {}
        Moved::To(s) => {
            db.run(&UPSERT_DEVICES[1], &upsert_args(device, &s))?;
        }
        Moved::Gone => {
            db.run("DELETE FROM fleet_devices WHERE device_serial = $1", &[device.into()])?;
        }
    }
    Ok(())
}

/// What a device's row of `fleet_devices` becomes.
pub(super) enum Moved {
    Same,
    To(Summary),
    Gone,
}

/// Move the counters from a device's summary as kept (`old`) to `new`.
pub(super) fn moved(old: Option<Summary>, new: Option<Summary>, deltas: &mut Deltas) -> Moved {
    if old == new {
        return Moved::Same;
    }
    if let Some(o) = &old {
        deltas.add_state(o, -1);
    }
    match new {
        Some(s) => {
            deltas.add_state(&s, 1);
            Moved::To(s)
        }
        None => Moved::Gone,
    }
}

/// `UPSERT_DEVICES[n]`: the upsert of `n` devices' rows of `fleet_devices`
/// (1 to [`super::bulk::MAX_ROWS`]).
pub(super) static UPSERT_DEVICES: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    (0..=super::bulk::MAX_ROWS)
        .map(|n| {
            multi_insert("fleet_devices (device_serial, state, cert_serial, not_after)", n, 4)
                + " ON CONFLICT (device_serial) DO UPDATE SET state = excluded.state, \
                   cert_serial = excluded.cert_serial, not_after = excluded.not_after"
        })
        .collect()
});

/// A device's row of `fleet_devices`.
pub(super) fn upsert_args<'a>(device: &'a str, s: &'a Summary) -> [Arg<'a>; 4] {
    [device.into(), s.state.into(), s.cert_serial.as_ref().into(), s.not_after.into()]
}

/// The summaries of every device at once, from the registry: the rules of
/// `crate::fleet` in SQL (the writes apply them device by device, in Rust;
/// the conformance suite checks that the two agree).
const REBUILD_DEVICES: &str = "
WITH dev AS (
    SELECT device_serial FROM certificates WHERE profile = 'device' AND device_serial IS NOT NULL
    UNION SELECT device_serial FROM owned_devices
), kind AS (
    SELECT c.device_serial, c.serial, c.issued_at, c.not_after, c.status, c.replaced_by,
           CASE WHEN EXISTS (SELECT 1 FROM births b WHERE b.device_serial = c.device_serial AND b.cert_serial = c.serial)
                  OR EXISTS (SELECT 1 FROM flags f WHERE f.cert_serial = c.serial) THEN 1 ELSE 0 END AS birth
    FROM certificates c WHERE c.profile = 'device' AND c.device_serial IS NOT NULL
), op AS (
    SELECT device_serial, serial, not_after, status,
           ROW_NUMBER() OVER (PARTITION BY device_serial ORDER BY issued_at DESC, serial{c} DESC) AS rn
    FROM kind WHERE birth = 0 AND replaced_by IS NULL
), bi AS (
    SELECT device_serial, status,
           ROW_NUMBER() OVER (PARTITION BY device_serial ORDER BY issued_at DESC, serial{c} DESC) AS rn
    FROM kind WHERE birth = 1
)
INSERT INTO fleet_devices (device_serial, state, cert_serial, not_after)
SELECT dev.device_serial,
       CASE WHEN op.serial IS NOT NULL AND op.status = 'revoked' THEN 'revoked'
            WHEN op.serial IS NOT NULL THEN 'certified'
            WHEN o.status = 'revoked' OR bi.status = 'revoked' THEN 'revoked'
            WHEN o.status = 'owned' THEN 'commissioned'
            ELSE 'born' END,
       op.serial, op.not_after
FROM dev
LEFT JOIN op ON op.device_serial = dev.device_serial AND op.rn = 1
LEFT JOIN bi ON bi.device_serial = dev.device_serial AND bi.rn = 1
LEFT JOIN owned_devices o ON o.device_serial = dev.device_serial";

impl Tx<'_> {
    /// The running operation changed `device`.
    pub(super) fn touch(&mut self, device: &str) {
        if !self.touched.iter().any(|d| d == device) {
            self.touched.push(device.to_string());
        }
    }

    /// The running operation changed certificate `serial` (its device's, if it is one).
    pub(super) fn touch_cert(&mut self, serial: &str) -> Result<(), StoreError> {
        let row = self.w.opt("SELECT device_serial, profile FROM certificates WHERE serial = $1", &[serial.into()])?;
        if let Some(mut r) = row {
            if let (Some(d), "device") = (r.opt_text(0)?, r.text(1)?.as_str()) {
                self.touch(&d);
            }
        }
        Ok(())
    }

    /// Bring the summaries of the devices the operation touched up to date.
    pub(super) fn refresh_touched(&mut self) -> Result<(), StoreError> {
        for d in std::mem::take(&mut self.touched) {
            refresh_device(&mut self.w, &d, &mut self.op_deltas)?;
        }
        Ok(())
    }

    /// Count on the day of `at`.
    pub(super) fn count_day(&mut self, at: i64, issued: u64, renewed: u64, refused: u64) -> Result<(), StoreError> {
        let d = self.op_deltas.days.entry(day_of(at)).or_default();
        for (i, n) in [issued, renewed, refused].into_iter().enumerate() {
            d[i] += to_i64(n);
        }
        Ok(())
    }

    /// Build every summary from the registry (when never built, or `force`).
    pub(super) fn rebuild_fleet(&mut self, force: bool) -> Result<(), StoreError> {
        let built = self.w.opt("SELECT built FROM fleet_meta WHERE id = 1", &[])?.map(|mut r| r.int(0)).transpose()?;
        if built == Some(1) && !force {
            return Ok(());
        }
        self.op_deltas = Deltas { reset: true, ..Deltas::default() };
        for t in ["fleet_devices", "fleet_states", "fleet_expiry", "fleet_days"] {
            self.w.run(&format!("DELETE FROM {t}"), &[])?;
        }
        self.w.run(REBUILD_DEVICES, &[])?;
        self.w
            .run("INSERT INTO fleet_states (state, n) SELECT state, COUNT(*) FROM fleet_devices GROUP BY state", &[])?;
        // Hours by integer division, as `hour_of` (notAfter is never negative).
        self.w.run(
            "INSERT INTO fleet_expiry (hour, n) SELECT not_after / 3600, COUNT(*) FROM fleet_devices
             WHERE state = 'certified' GROUP BY not_after / 3600",
            &[],
        )?;
        self.w.run(
            "INSERT INTO fleet_days (day, issued, renewed, refused)
             SELECT (c.issued_at / 86400) * 86400, COUNT(*), SUM(CASE WHEN c.replaces IS NULL THEN 0 ELSE 1 END), 0
             FROM certificates c WHERE c.profile = 'device' AND c.device_serial IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM births b WHERE b.device_serial = c.device_serial AND b.cert_serial = c.serial)
               AND NOT EXISTS (SELECT 1 FROM flags f WHERE f.cert_serial = c.serial)
             GROUP BY (c.issued_at / 86400) * 86400",
            &[],
        )?;
        let rows = self.w.all(
            "SELECT at, actor, action, detail FROM audit WHERE action{c} >= 'refuse.' AND action{c} < 'refuse/'",
            &[],
        )?;
        let mut refused: BTreeMap<i64, u64> = BTreeMap::new();
        for mut r in rows {
            let ev = crate::AuditEvent {
                at: r.int(0)?,
                actor: r.text(1)?,
                action: r.text(2)?,
                target: String::new(),
                detail: r.text(3)?,
            };
            *refused.entry(day_of(ev.at)).or_default() += refusals_in(&ev);
        }
        for (day, n) in refused {
            self.count_day(day, 0, 0, n)?;
        }
        self.w.run("UPDATE fleet_meta SET built = 1 WHERE id = 1", &[])?;
        Ok(())
    }
}

/// Rows to a multi-row INSERT of [`Tx::bulk_load`].
const BULK_ROWS: usize = 64;

impl Tx<'_> {
    /// [`crate::BulkLoad`]: the rows as they are, nothing else.
    pub(super) fn bulk_load(&mut self, b: &crate::BulkLoad) -> Result<(), StoreError> {
        for chunk in b.certs.chunks(BULK_ROWS) {
            let sql = multi_insert(CERT_TABLE, chunk.len(), 16);
            let args: Vec<Arg<'_>> = chunk.iter().flat_map(|c| cert_args(c, true)).collect();
            self.w.run(&sql, &args)?;
        }
        for chunk in b.births.chunks(BULK_ROWS) {
            let sql = multi_insert("births (device_serial, cert_serial, batch_id, station, born_at)", chunk.len(), 5);
            let mut args = Vec::with_capacity(chunk.len() * 5);
            for (d, c, batch, st, at) in chunk {
                args.extend([d.into(), c.into(), batch.into(), st.into(), Arg::Int(*at)]);
            }
            self.w.run(&sql, &args)?;
        }
        for chunk in b.owned.chunks(BULK_ROWS) {
            let sql = multi_insert("owned_devices (device_serial, via, since)", chunk.len(), 3);
            let mut args = Vec::with_capacity(chunk.len() * 3);
            for (d, at) in chunk {
                args.extend([d.into(), "claim".into(), Arg::Int(*at)]);
            }
            self.w.run(&sql, &args)?;
        }
        Ok(())
    }
}

/// For benchmarks: write `load` as it is ([`crate::BulkLoad`]).
pub(crate) fn bulk_load<E: HasEngine + ?Sized>(store: &E, load: crate::BulkLoad) -> Result<(), StoreError> {
    submit(store, Op::BulkLoad(Box::new(load))).map(|_| ())
}

/// Build the summaries of a store migrated to version 11 (nothing to do on
/// any later open): called when a store is opened.
pub(crate) fn ensure_built<E: HasEngine + ?Sized>(store: &E) -> Result<(), StoreError> {
    submit(store, Op::FleetRebuild(false)).map(|_| ())
}

/// `prefix` and the first string after every string that starts with it
/// (bytewise): `[prefix, end)` is the range of those strings. `None` for
/// the end when there is none (a prefix of only U+10FFFF).
fn prefix_range(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=0x10_FFFF).find_map(char::from_u32);
        if let Some(n) = next {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

impl<E: HasEngine> Fleet for E {
    fn fleet_overview(&self, now: UnixTime, days: u32) -> Result<FleetOverview, StoreError> {
        let days = days.min(MAX_OVERVIEW_DAYS);
        // Boundaries x_d = now + d days, d = 0..=span: N(< x) is counted as the
        // certified devices of the whole hours before x's hour (fleet_expiry)
        // and those of x's own hour before x (fleet_devices, by index). Every
        // boundary has the same offset in its hour (a day is 24 hours).
        let span = days.max(30);
        let last = now + i64::from(span) * DAY;
        read(self, |db| {
            let mut states = DeviceStates::default();
            let mut certified = 0u64;
            for mut r in db.all("SELECT state, n FROM fleet_states", &[])? {
                let (state, n) = (r.text(0)?, r.count(1)?);
                match state.as_str() {
                    "born" => states.born = n,
                    "commissioned" => states.commissioned = n,
                    "certified" => certified = n,
                    _ => states.revoked = n,
                }
            }
            let below = db
                .opt(
                    "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM fleet_expiry WHERE hour < $1",
                    &[Arg::Int(hour_of(now))],
                )?
                .map(|mut r| r.int(0))
                .transpose()?
                .unwrap_or(0);
            let hours = db.all(
                "SELECT hour, n FROM fleet_expiry WHERE hour >= $1 AND hour <= $2 AND n <> 0 ORDER BY hour",
                &[Arg::Int(hour_of(now)), Arg::Int(hour_of(last))],
            )?;
            let hours =
                hours.into_iter().map(|mut r| Ok((r.int(0)?, r.int(1)?))).collect::<Result<Vec<_>, StoreError>>()?;
            let partial = db.all(
                "WITH RECURSIVE k(d) AS (SELECT 0 UNION ALL SELECT d + 1 FROM k WHERE d < $3)
                 SELECT d, (SELECT COUNT(*) FROM fleet_devices
                            WHERE state = 'certified' AND not_after >= CAST($1 AS BIGINT) + d * 86400
                              AND not_after < CAST($2 AS BIGINT) + d * 86400)
                 FROM k ORDER BY d",
                &[Arg::Int(hour_of(now) * HOUR), Arg::Int(now), Arg::Int(i64::from(span))],
            )?;
            // N(< x_d), for d = 0..=span.
            let mut below_x = Vec::with_capacity(partial.len());
            let (mut sum, mut i) = (below, 0usize);
            for (d, mut r) in partial.into_iter().enumerate() {
                let x_hour = hour_of(now + d as i64 * DAY);
                while i < hours.len() && hours[i].0 < x_hour {
                    sum += hours[i].1;
                    i += 1;
                }
                below_x.push(sum + r.int(1)?);
            }
            let n = |d: usize| -> Result<u64, StoreError> {
                let v =
                    below_x.get(d).copied().ok_or_else(|| StoreError::Database("expiry boundary missing".into()))?;
                u64::try_from(v).map_err(|_| StoreError::Database(format!("negative expiry count {v}")))
            };
            let month = usize::try_from(EXPIRING_SECS / DAY).unwrap_or(30);
            states.expired = n(0)?;
            states.expiring = n(month)?.saturating_sub(n(0)?);
            states.active = certified.saturating_sub(n(month)?);
            states.total =
                states.born + states.commissioned + states.active + states.expiring + states.expired + states.revoked;
            let expiring_per_day = (0..days as usize)
                .map(|d| Ok(n(d + 1)?.saturating_sub(n(d)?)))
                .collect::<Result<Vec<_>, StoreError>>()?;

            let today = day_of(now);
            let first = today - i64::from(HISTORY_DAYS - 1) * DAY;
            let mut per_day: BTreeMap<i64, (u64, u64, u64)> = BTreeMap::new();
            for mut r in db.all(
                "SELECT day, issued, renewed, refused FROM fleet_days WHERE day >= $1 AND day <= $2",
                &[Arg::Int(first), Arg::Int(today)],
            )? {
                per_day.insert(r.int(0)?, (r.count(1)?, r.count(2)?, r.count(3)?));
            }
            let series = |pick: fn(&(u64, u64, u64)) -> u64| -> Vec<DayCount> {
                (0..i64::from(HISTORY_DAYS))
                    .map(|k| {
                        let day = first + k * DAY;
                        DayCount { day, count: per_day.get(&day).map(pick).unwrap_or(0) }
                    })
                    .collect()
            };
            Ok(FleetOverview {
                states,
                expiring_per_day,
                issued_per_day: series(|c| c.0),
                renewed_per_day: series(|c| c.1),
                refused_per_day: series(|c| c.2),
            })
        })
    }

    fn stations_activity(&self) -> Result<Vec<StationActivity>, StoreError> {
        read(self, |db| {
            let rows = db.all(
                "SELECT s.name, s.status, s.revoked_at,
                        (SELECT MAX(born_at) FROM births b WHERE b.station = s.name),
                        (SELECT MAX(created_at) FROM delegations d WHERE d.station = s.name),
                        (SELECT MAX(synced_at) FROM syncs y WHERE y.station = s.name),
                        (SELECT COUNT(*) FROM births b WHERE b.station = s.name)
                 FROM stations s ORDER BY s.name{c}",
                &[],
            )?;
            let mut links: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for mut r in db.all("SELECT station, batch_id FROM station_batches ORDER BY batch_id{c}", &[])? {
                links.entry(r.text(0)?).or_default().push(r.text(1)?);
            }
            rows.into_iter()
                .map(|mut r| {
                    let name = r.text(0)?;
                    let revoked_at = if r.text(1)? == "revoked" { Some(r.opt_int(2)?.unwrap_or(0)) } else { None };
                    let last_activity = [r.opt_int(3)?, r.opt_int(4)?, r.opt_int(5)?].into_iter().flatten().max();
                    let births = r.count(6)?;
                    let batches = links.remove(&name).unwrap_or_default();
                    Ok(StationActivity { name, revoked_at, last_activity, births, batches })
                })
                .collect()
        })
    }

    fn audit_search(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = f.limit.min(MAX_AUDIT_PAGE);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let prefix = f.action_prefix.as_deref().filter(|p| !p.is_empty());
        let end = prefix.and_then(prefix_range);
        let mut args: Vec<Arg<'_>> = Vec::new();
        let mut conds: Vec<String> = Vec::new();
        let mut cond = |args: &mut Vec<Arg<'_>>, sql: &str| {
            conds.push(sql.replace('?', &format!("${}", args.len())));
        };
        if let Some(p) = prefix {
            args.push(p.into());
            cond(&mut args, "action{c} >= ?");
            if let Some(e) = &end {
                args.push(Arg::Text(e));
                cond(&mut args, "action{c} < ?");
            }
        }
        if let Some(a) = &f.actor {
            args.push(a.into());
            cond(&mut args, "actor = ?");
        }
        if let Some(t) = &f.target {
            args.push(t.into());
            cond(&mut args, "target = ?");
        }
        if let Some(b) = f.before_seq {
            args.push(Arg::Int(to_i64(b)));
            cond(&mut args, "seq < ?");
        }
        args.push(Arg::Int(i64::from(limit)));
        let filter = if conds.is_empty() { String::new() } else { format!("WHERE {}", conds.join(" AND ")) };
        let sql = format!("SELECT {AUDIT_COLS} FROM audit {filter} ORDER BY seq DESC LIMIT ${}", args.len());
        read(self, |db| db.all(&sql, &args)?.into_iter().map(audit_row).collect())
    }

    fn batch_progress(&self) -> Result<Vec<BatchProgress>, StoreError> {
        Ok(self
            .list_batches()?
            .into_iter()
            .map(|b| BatchProgress { born: b.issued, refusals: b.refused, flags: b.flagged, batch: b })
            .collect())
    }

    fn revocation_stats(&self) -> Result<Vec<CaRevocations>, StoreError> {
        read(self, |db| {
            let mut out: BTreeMap<String, CaRevocations> = BTreeMap::new();
            let empty = |ca: &str| CaRevocations { ca: ca.into(), revoked: 0, crl_number: 0, last_revocation_at: None };
            for mut r in db.all(
                "SELECT ca, COUNT(*), MAX(revoked_at) FROM certificates WHERE status = 'revoked' GROUP BY ca",
                &[],
            )? {
                let ca = r.text(0)?;
                let e = out.entry(ca.clone()).or_insert_with(|| empty(&ca));
                e.revoked = r.count(1)?;
                e.last_revocation_at = r.opt_int(2)?;
            }
            for mut r in db.all("SELECT ca, last FROM crl_numbers", &[])? {
                let ca = r.text(0)?;
                out.entry(ca.clone()).or_insert_with(|| empty(&ca)).crl_number = r.count(1)?;
            }
            Ok(out.into_values().collect())
        })
    }

    fn rebuild_fleet(&self) -> Result<(), StoreError> {
        submit(self, Op::FleetRebuild(true)).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_covers_exactly_the_strings_that_start_with_it() {
        assert_eq!(prefix_range("refuse.").as_deref(), Some("refuse/"));
        assert_eq!(prefix_range("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_range("\u{10FFFF}"), None);
        assert_eq!(prefix_range("\u{D7FF}").as_deref(), Some("\u{E000}"));
    }
}
