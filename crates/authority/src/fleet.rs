//! What the fleet console reads (issue #18), as an authenticated admin.
//!
//! These reads are not audited (the lead's call for issue #18: a console
//! polls them, and an entry per page view would bury the log's real events);
//! a refusal of one is (`refuse.admin`), as every refusal. They change
//! nothing: no CRL is made to answer [`Admin::ca_status`], which reports the
//! CRLs this node has made and what the store holds.

use iotpki_core::name::DeviceSerial;
use iotpki_store::{
    Artifact, AuditEntry, AuditFilter, BatchProgress, CertQuery, CertRecord, FleetOverview, Ownership, StationActivity,
    MAX_AUDIT_PAGE,
};

use crate::admin::{Admin, MAX_LIST};
use crate::revocation::{arl_kind, CRL_VALIDITY_SECS, EXPIRED_KEPT_SECS};
use crate::{config, AuthorityError, CrlScope};

/// Days of the overview's expiry timeline.
pub const TIMELINE_DAYS: u32 = 365;

/// Most audit entries of a device's page.
pub const DEVICE_AUDIT: u32 = 200;

/// Most of a device's certificates whose audit entries its page looks up.
const DEVICE_AUDIT_CERTS: usize = 50;

/// A device's page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceView {
    /// Every certificate of the device (births too), newest first (at most [`MAX_LIST`]).
    pub certificates: Vec<CertRecord>,
    /// This authority's ownership of it, if it ever had it.
    pub ownership: Option<Ownership>,
    /// The ownership voucher held for it (its chain of owners), if any.
    pub voucher: Option<Artifact>,
    /// Its audit entries, newest first (at most [`DEVICE_AUDIT`]): those
    /// about it (`SN`, `device:SN`), about its certificates, and by it (actor `device:SN`).
    pub audit: Vec<AuditEntry>,
}

/// Revocation state of one CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaStatus {
    /// The CA's name.
    pub ca: String,
    /// The last CRL number it allocated (shared by its complete CRL and its shards; 0: none).
    pub crl_number: u64,
    /// thisUpdate of the complete CRL this node serves now, or of a root's
    /// published ARL; `None` when none was made yet (one is made on the first request).
    pub this_update: Option<i64>,
    /// Its nextUpdate.
    pub next_update: Option<i64>,
    /// Its certificates revoked (superseded renewals included).
    pub revoked: u64,
    /// For a CA with a partitioned CRL: per shard `k`, the entries its CRL
    /// lists now (revoked, not expired for long). Empty for one CRL.
    pub shards: Vec<(u32, u64)>,
}

fn bounded_serial(serial: &str) -> Result<DeviceSerial, AuthorityError> {
    DeviceSerial::parse(serial).map_err(|e| AuthorityError::malformed(format!("device serial: {e}")))
}

impl Admin<'_> {
    /// Refusals are audited (`refuse.admin`); answers are not.
    fn read<T>(&self, r: Result<T, AuthorityError>, action: &str, target: &str) -> Result<T, AuthorityError> {
        r.map_err(|e| self.refused(e, action, target))
    }

    /// The fleet at a glance, now, with a [`TIMELINE_DAYS`]-day expiry timeline.
    pub fn fleet_overview(&self) -> Result<FleetOverview, AuthorityError> {
        let a = self.authority();
        let r = a.store.fleet_overview(a.clock.now(), TIMELINE_DAYS).map_err(AuthorityError::from);
        self.read(r, "fleet.overview", "")
    }

    /// Every station with its last activity, by name.
    pub fn stations_activity(&self) -> Result<Vec<StationActivity>, AuthorityError> {
        let r = self.authority().store.stations_activity().map_err(AuthorityError::from);
        self.read(r, "station.list", "")
    }

    /// The audit log searched, newest first (at most [`MAX_AUDIT_PAGE`] a page).
    pub fn audit_search(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, AuthorityError> {
        let f = AuditFilter { limit: filter.limit.min(MAX_AUDIT_PAGE), ..filter.clone() };
        let r = self.authority().store.audit_search(&f).map_err(AuthorityError::from);
        self.read(r, "audit.search", "")
    }

    /// Every batch with its progress, newest first.
    pub fn batch_progress(&self) -> Result<Vec<BatchProgress>, AuthorityError> {
        let r = self.authority().store.batch_progress().map_err(AuthorityError::from);
        self.read(r, "batch.list", "")
    }

    /// A device's page: its certificates, ownership, voucher and audit
    /// entries. A serial the store does not know: not found.
    pub fn device_view(&self, serial: &str) -> Result<DeviceView, AuthorityError> {
        let target = format!("device:{}", crate::refusals::clean(serial, crate::refusals::MAX_NAME));
        let r = bounded_serial(serial).and_then(|d| self.device_view_inner(d.as_str()));
        self.read(r, "device.show", &target)
    }

    fn device_view_inner(&self, serial: &str) -> Result<DeviceView, AuthorityError> {
        let store = self.authority().store.as_ref();
        let q = CertQuery { device_serial: Some(serial.into()), limit: Some(MAX_LIST), ..Default::default() };
        let certificates = store.list_certificates(&q)?;
        let ownership = store.ownership(serial)?;
        if certificates.is_empty() && ownership.is_none() {
            return Err(AuthorityError::not_found(format!("no device {serial}")));
        }
        let voucher = store.artifact(&format!("voucher/{serial}"))?;
        let device = format!("device:{serial}");
        let mut filters: Vec<AuditFilter> = [serial.to_string(), device.clone()]
            .into_iter()
            .chain(certificates.iter().take(DEVICE_AUDIT_CERTS).map(|c| c.serial.clone()))
            .map(|t| AuditFilter { target: Some(t), limit: DEVICE_AUDIT, ..Default::default() })
            .collect();
        filters.push(AuditFilter { actor: Some(device), limit: DEVICE_AUDIT, ..Default::default() });
        let mut audit: Vec<AuditEntry> = Vec::new();
        for f in &filters {
            audit.extend(store.audit_search(f)?);
        }
        audit.sort_unstable_by_key(|e| std::cmp::Reverse(e.seq));
        audit.dedup_by_key(|e| e.seq);
        audit.truncate(DEVICE_AUDIT as usize);
        Ok(DeviceView { certificates, ownership, voucher, audit })
    }

    /// Per CA (roots and issuing CAs, as configured): CRL numbers, the CRL
    /// this node serves (or the root's published ARL), revocations, and the
    /// entries of each shard of a partitioned CRL. Makes no CRL.
    pub fn ca_status(&self) -> Result<Vec<CaStatus>, AuthorityError> {
        let r = self.ca_status_inner();
        self.read(r, "ca.status", "")
    }

    fn ca_status_inner(&self) -> Result<Vec<CaStatus>, AuthorityError> {
        let a = self.authority();
        let now = a.clock.now();
        let stats = a.store.revocation_stats()?;
        let mut out = Vec::new();
        for c in &a.cfg.ca {
            let st = stats.iter().find(|s| s.ca == c.name);
            let mut status = CaStatus {
                ca: c.name.clone(),
                crl_number: st.map_or(0, |s| s.crl_number),
                this_update: None,
                next_update: None,
                revoked: st.map_or(0, |s| s.revoked),
                shards: Vec::new(),
            };
            if c.role == config::CaRole::Issuing {
                let scope = CrlScope { ca: c.name.clone(), shard: None };
                if let Some(cached) = a.crls.lock().ok().and_then(|m| m.get(&scope).map(|c| c.this_update)) {
                    status.this_update = Some(cached);
                    status.next_update = Some(cached + CRL_VALIDITY_SECS);
                }
                if let Some(s) = c.crl_shards.filter(|s| iotpki_core::crl::valid_shard_count(*s)) {
                    let mark = a.store.revocation_mark(&c.name)?;
                    let list = a.revoked_list(&c.name, mark)?;
                    let mut counts = vec![0u64; s as usize];
                    for r in list.iter().filter(|r| r.not_after.saturating_add(EXPIRED_KEPT_SECS) > now) {
                        if let Some(slot) =
                            iotpki_core::crl::shard_of(&r.serial, s).and_then(|k| counts.get_mut(k as usize))
                        {
                            *slot += 1;
                        }
                    }
                    status.shards = (0..s).zip(counts).collect();
                }
            } else if let Some(arl) = a.store.artifact(&arl_kind(&c.name))? {
                status.this_update = Some(arl.published_at);
                status.next_update = iotpki_core::crl::next_update(&arl.body).ok();
            }
            out.push(status);
        }
        Ok(out)
    }
}
