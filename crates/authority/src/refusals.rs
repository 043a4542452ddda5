//! Refusals in the audit log, with a bound on how much a flood of them writes.
//!
//! Within each window (`limits.refusal_audit_window_secs`), the first
//! `limits.refusal_audit_individual` refusals are written one entry each, as
//! they happen, with their reason. Past that, refusals are counted per (action,
//! HTTP status, kind of caller) and written as one entry per kind when the
//! window ends: "N refusals ... between T1 and T2". So a window adds at most
//! `individual + MAX_KINDS` refusal entries, however many refusals came and
//! from however many addresses (the server also rate limits refusals per
//! client address, before the authority is asked).
//!
//! The counts are flushed when a refusal arrives in a later window, on the
//! server's schedule (every window) and when the server shuts down
//! ([`crate::Authority::flush_refusals`]). A crash loses at most the counts of
//! the current window: the individual entries are already in the store.
//!
//! Refusals counted against a batch (an authenticated station's) are always
//! written one by one: the batch's `refused` counter moves in the same
//! transaction, and a station is rate limited by its certificate.
//!
//! Everything that came from the request and reaches an entry (the actor
//! named by a Basic user, the batch, the reason text) is cut to a bounded,
//! printable form first ([`clean`]).

use std::collections::BTreeMap;
use std::sync::Mutex;

use iotpki_store::{AuditEvent, Store};

/// Most distinct (action, status, caller kind) counts in one window; more
/// are counted under one catch-all kind.
pub const MAX_KINDS: usize = 64;

/// Longest request-supplied text (actor, target) kept in an audit entry.
pub const MAX_NAME: usize = 80;
/// Longest reason kept in an audit entry.
pub const MAX_DETAIL: usize = 400;

/// `s` as it may appear in an audit entry or a log line: printable ASCII
/// only (anything else as `?`), at most `max` characters, and a cut one
/// says how long it was.
pub fn clean(s: &str, max: usize) -> String {
    let printable = |c: char| c.is_ascii_graphic() || c == ' ';
    if s.len() <= max && s.chars().all(printable) {
        return s.to_string();
    }
    let keep = max.saturating_sub(24);
    let mut out: String = s.chars().take(keep).map(|c| if printable(c) { c } else { '?' }).collect();
    if s.chars().count() > keep {
        out.push_str(&format!("...({} bytes)", s.len()));
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Kind {
    action: String,
    status: u16,
    /// `device`, `cert`, `anonymous`, ...: the actor up to its first `:`.
    caller: String,
}

struct Count {
    n: u64,
    first: i64,
    last: i64,
    /// The first refusal's reason.
    example: String,
}

struct State {
    start: i64,
    written: u32,
    pending: BTreeMap<Kind, Count>,
}

/// The refusal writer (one per authority).
pub(crate) struct RefusalAudit {
    window: i64,
    individual: u32,
    state: Mutex<State>,
}

impl RefusalAudit {
    pub(crate) fn new(window_secs: u64, individual: u32) -> Self {
        Self {
            window: i64::try_from(window_secs.max(1)).unwrap_or(i64::MAX),
            individual,
            state: Mutex::new(State { start: i64::MIN, written: 0, pending: BTreeMap::new() }),
        }
    }

    /// Write `ev` (a refusal with HTTP `status`), or count it for this window's summary.
    pub(crate) fn record(&self, store: &dyn Store, batch: Option<&str>, mut ev: AuditEvent, status: u16) {
        ev.actor = clean(&ev.actor, MAX_NAME);
        ev.target = clean(&ev.target, MAX_NAME);
        ev.detail = clean(&ev.detail, MAX_DETAIL);
        let now = ev.at;
        let (due, individually) = {
            let Ok(mut st) = self.state.lock() else {
                tracing::error!("refusal audit state poisoned: writing the refusal as it is");
                write(store, batch, ev);
                return;
            };
            let due = if now < st.start || now >= st.start.saturating_add(self.window) {
                st.start = now;
                st.written = 0;
                std::mem::take(&mut st.pending)
            } else {
                BTreeMap::new()
            };
            let individually = batch.is_some() || st.written < self.individual;
            if individually {
                st.written += 1;
            } else {
                let caller = ev.actor.split(':').next().unwrap_or_default().to_string();
                let mut kind = Kind { action: ev.action.clone(), status, caller };
                if !st.pending.contains_key(&kind) && st.pending.len() >= MAX_KINDS - 1 {
                    kind = Kind { action: "refuse.other".into(), status: 0, caller: "*".into() };
                }
                let c =
                    st.pending.entry(kind).or_insert(Count { n: 0, first: now, last: now, example: ev.detail.clone() });
                c.n += 1;
                c.last = now;
            }
            (due, individually)
        };
        write_counts(store, due);
        if individually {
            write(store, batch, ev);
        }
    }

    /// Write the counts of the current window now (schedule, shutdown);
    /// returns how many refusals they summed up.
    pub(crate) fn flush(&self, store: &dyn Store) -> u64 {
        let due = match self.state.lock() {
            Ok(mut st) => std::mem::take(&mut st.pending),
            Err(_) => BTreeMap::new(),
        };
        let n = due.values().map(|c| c.n).sum();
        write_counts(store, due);
        n
    }
}

fn write(store: &dyn Store, batch: Option<&str>, ev: AuditEvent) {
    if let Err(e) = store.record_refusal(batch, ev) {
        tracing::error!(error = %e, "could not audit a refusal");
    }
}

/// One entry per kind: how many refusals of it, between when and when.
fn write_counts(store: &dyn Store, due: BTreeMap<Kind, Count>) {
    for (k, c) in due {
        let ev = AuditEvent {
            at: c.last,
            actor: format!("{}:*", k.caller),
            action: k.action,
            target: String::new(),
            detail: format!(
                "{} refusals (HTTP {}) between {} and {}, summed up; the first: {}",
                c.n,
                k.status,
                iotpki_core::time::rfc3339(c.first),
                iotpki_core::time::rfc3339(c.last),
                c.example
            ),
        };
        write(store, None, ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_cuts_long_and_unprintable_names() {
        assert_eq!(clean("SN-1", MAX_NAME), "SN-1");
        let long = "x".repeat(350_000);
        let c = clean(&long, MAX_NAME);
        assert!(c.len() <= MAX_NAME + 24, "{}", c.len());
        assert!(c.ends_with("...(350000 bytes)"), "{c}");
        assert_eq!(clean("a\nb\u{7f}", MAX_NAME), "a?b?");
    }

    /// The fleet overview counts the refusals a summed-up entry stands for
    /// (`iotpki_store::refusals_in` reads the entry this file writes).
    #[test]
    fn a_summed_up_entry_counts_every_refusal_it_sums_in_the_fleet_overview() {
        use iotpki_store::{AuditLog as _, Fleet as _};
        let d = tempfile::tempdir().unwrap();
        let s = iotpki_store::sqlite::SqliteStore::open(&d.path().join("s.db")).unwrap();
        let r = RefusalAudit::new(60, 1);
        for i in 0..4 {
            let ev = AuditEvent {
                at: 1_000_000 + i,
                actor: "device:SN".into(),
                action: "refuse.enroll".into(),
                target: "SN".into(),
                detail: "no".into(),
            };
            r.record(&s, None, ev, 403);
        }
        assert_eq!(r.flush(&s), 3);
        assert_eq!(s.audit_entries(1, 10).unwrap().len(), 2, "one entry, and one summing up three");
        let o = s.fleet_overview(1_000_100, 1).unwrap();
        assert_eq!(o.refused_per_day[29].count, 4);
    }
}
