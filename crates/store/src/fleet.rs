//! The fleet console's reads (issue #18): the overview of the device
//! registry, stations, batches, the audit log searched, revocations per CA.
//!
//! # A device's state
//!
//! A *device* is a device serial the store knows: one with a certificate of
//! profile `device` naming it, a birth recorded for it, or this authority's
//! ownership of it. Its certificates of profile `device` are its *birth
//! certificates* (recorded as a birth: online on the line, or from a
//! station's production record, flagged or not) and its *operational
//! certificates* (every other one: enrolled with a token, commissioned,
//! renewed). Its *current certificate* is its newest operational certificate
//! (by issuedAt, then serial) that has no successor (not renewed).
//!
//! Each device is in exactly one state, the first rule that holds:
//!
//! 1. **revoked**: its current certificate is revoked; or it has no current
//!    certificate and either its ownership here was revoked
//!    (`device.revoke`) or its newest birth certificate is revoked (flagged
//!    by a sync, blocked key, revoked device);
//! 2. **expired**: its current certificate is good and its notAfter has
//!    passed (`not_after < now`);
//! 3. **expiring**: its current certificate is good and expires within 30
//!    days (`now <= not_after < now + 30 days`);
//! 4. **active**: its current certificate is good and expires later
//!    (`not_after >= now + 30 days`);
//! 5. **commissioned**: no operational certificate yet, and this authority
//!    owns it (claimed or by voucher, not handed on): it may commission;
//! 6. **born**: everything else: a birth certificate and nothing more, or a
//!    device handed on to its next owner before it was ever certified here.
//!
//! `total` is the number of devices, the sum of the six.
//!
//! # How the overview stays fast
//!
//! The store keeps a summary of every device (`fleet_devices`: its state
//! without the clock, and its current certificate's notAfter), counters per
//! state, devices by the hour their current certificate expires, and
//! issuances, renewals and refusals per day, all updated in the transaction
//! of every write that changes them (the engine recomputes each device a
//! write touched from the certificates, births and ownership it has). The
//! overview reads these: a few thousand rows, whatever the fleet's size.

use crate::{AuditEntry, AuditEvent, BatchRecord, StoreError, UnixTime};

/// Seconds in a day.
pub const DAY: i64 = 86_400;

/// A certificate expiring within this many seconds is `expiring`, not `active`.
pub const EXPIRING_SECS: i64 = 30 * DAY;

/// Most days [`Fleet::fleet_overview`] lays out (`days` is capped to it).
pub const MAX_OVERVIEW_DAYS: u32 = 1_830;

/// Days of history in the per-day series of [`FleetOverview`].
pub const HISTORY_DAYS: u32 = 30;

/// Most entries [`Fleet::audit_search`] answers at once.
pub const MAX_AUDIT_PAGE: u32 = 1_000;

/// Devices by state: see the module documentation for the exact rules.
/// Each device is in exactly one state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceStates {
    /// A birth certificate and nothing more (or handed on before ever being certified here).
    pub born: u64,
    /// Owned here, no operational certificate yet.
    pub commissioned: u64,
    /// Current certificate good, expires in 30 days or later.
    pub active: u64,
    /// Current certificate good, expires within 30 days.
    pub expiring: u64,
    /// Current certificate good, past its notAfter.
    pub expired: u64,
    /// Current certificate revoked (or, with none, ownership or birth revoked).
    pub revoked: u64,
    /// Every device.
    pub total: u64,
}

/// A count for one UTC day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DayCount {
    /// The day's first second (00:00 UTC).
    pub day: UnixTime,
    /// How many.
    pub count: u64,
}

/// The fleet at a glance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetOverview {
    /// Devices by state.
    pub states: DeviceStates,
    /// `days` entries: `[d]` = devices whose current certificate is good and
    /// expires in `[now + d days, now + d + 1 days)`.
    pub expiring_per_day: Vec<u64>,
    /// The last [`HISTORY_DAYS`] UTC days (today last), oldest first:
    /// operational certificates issued (enrollments, commissionings, renewals).
    pub issued_per_day: Vec<DayCount>,
    /// The same days: renewals only.
    pub renewed_per_day: Vec<DayCount>,
    /// The same days: refusals recorded in the audit log (an entry summing up
    /// N refusals counts N: [`refusals_in`]).
    pub refused_per_day: Vec<DayCount>,
}

/// A factory station and what it did last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StationActivity {
    /// Its name.
    pub name: String,
    /// When it was revoked, if it was.
    pub revoked_at: Option<UnixTime>,
    /// Its last birth, production record sync or delegation, if any.
    pub last_activity: Option<UnixTime>,
    /// Births recorded for it (online, and synced without a flag).
    pub births: u64,
    /// The batches it may serve.
    pub batches: Vec<String>,
}

/// What [`Fleet::audit_search`] looks for; every filter given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// The action starts with this (`refuse.`, `revoke`, `admin.`).
    pub action_prefix: Option<String>,
    /// The actor is exactly this (`admin:alice`, `device:SN-1`).
    pub actor: Option<String>,
    /// The target is exactly this (a certificate serial, `device:SN-1`).
    pub target: Option<String>,
    /// Only entries before this sequence number (to page backwards: the
    /// last page's smallest `seq`).
    pub before_seq: Option<u64>,
    /// At most this many, capped at [`MAX_AUDIT_PAGE`].
    pub limit: u32,
}

/// A batch and its progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchProgress {
    /// The batch (its quota among it: progress is `born / batch.quota`).
    pub batch: BatchRecord,
    /// Births counted against its quota.
    pub born: u64,
    /// Requests refused for it.
    pub refusals: u64,
    /// Certificates flagged in it (off-allowlist, clone, overbuild, keys).
    pub flags: u64,
}

/// Revocations of one CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaRevocations {
    /// The CA's name.
    pub ca: String,
    /// Its certificates revoked (superseded renewals included).
    pub revoked: u64,
    /// The last CRL number it allocated (0: none yet).
    pub crl_number: u64,
    /// Its latest revocation.
    pub last_revocation_at: Option<UnixTime>,
}

/// The console's reads.
pub trait Fleet {
    /// The fleet at `now`, with an expiry timeline of `days` days (capped at
    /// [`MAX_OVERVIEW_DAYS`]). Reads summaries kept by every write: its cost
    /// does not grow with the number of devices.
    fn fleet_overview(&self, now: UnixTime, days: u32) -> Result<FleetOverview, StoreError>;

    /// Every station, by name, with its last activity.
    fn stations_activity(&self) -> Result<Vec<StationActivity>, StoreError>;

    /// Audit entries matching `filter`, newest first, at most its limit
    /// (capped at [`MAX_AUDIT_PAGE`]); indexed by action, actor and target.
    fn audit_search(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError>;

    /// Every batch with its progress, newest first.
    fn batch_progress(&self) -> Result<Vec<BatchProgress>, StoreError>;

    /// Per CA (by name): revocations and the last CRL number.
    fn revocation_stats(&self) -> Result<Vec<CaRevocations>, StoreError>;

    /// The device's summary recomputed from scratch from the certificates,
    /// births, ownership and audit log (what the writes keep up to date
    /// incrementally); for tests and repairs.
    #[doc(hidden)]
    fn rebuild_fleet(&self) -> Result<(), StoreError>;
}

/// For benchmarks and tests only: rows written as they are, without
/// preconditions, audit entries or fleet summaries (call
/// [`Fleet::rebuild_fleet`] afterwards). Births and ownership rows must name
/// an existing batch and station.
#[doc(hidden)]
#[derive(Clone, Debug, Default)]
pub struct BulkLoad {
    /// Certificates (`replaced_by` is written too).
    pub certs: Vec<crate::CertRecord>,
    /// Births: device serial, certificate serial, batch, station, when.
    pub births: Vec<(String, String, String, String, UnixTime)>,
    /// Devices owned (by claim) since when.
    pub owned: Vec<(String, UnixTime)>,
}

/// How many refusals an audit entry records: 0 for an entry that is not a
/// refusal (its action does not start with `refuse.`), N for an entry
/// summing up N refusals of a window (actor `KIND:*`, detail starting `N
/// refusals`), else 1.
pub fn refusals_in(ev: &AuditEvent) -> u64 {
    if !ev.action.starts_with("refuse.") {
        return 0;
    }
    if ev.actor.ends_with(":*") {
        if let Some((n, rest)) = ev.detail.split_once(' ') {
            if rest.starts_with("refusals") {
                if let Ok(n) = n.parse::<u64>() {
                    return n;
                }
            }
        }
    }
    1
}

/// The UTC day (its first second) of `t`.
pub fn day_of(t: UnixTime) -> UnixTime {
    t.div_euclid(DAY) * DAY
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(actor: &str, action: &str, detail: &str) -> AuditEvent {
        AuditEvent { at: 1, actor: actor.into(), action: action.into(), target: String::new(), detail: detail.into() }
    }

    #[test]
    fn refusals_are_counted_and_summed_ones_count_what_they_sum() {
        assert_eq!(refusals_in(&ev("device:SN", "enroll", "")), 0);
        assert_eq!(refusals_in(&ev("device:SN", "refuse.enroll", "12 refusals")), 1);
        assert_eq!(refusals_in(&ev("device:*", "refuse.enroll", "12 refusals (HTTP 403) between")), 12);
        assert_eq!(refusals_in(&ev("device:*", "refuse.enroll", "twelve refusals")), 1);
        assert_eq!(day_of(86_400 * 3 + 5), 86_400 * 3);
    }
}
