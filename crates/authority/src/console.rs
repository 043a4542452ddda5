//! The web console's logins: one-time links and who a session acts as.
//!
//! `iotpki admin console-link --admin NAME` makes a link holding 256 random
//! bits, shown once; the store keeps only their SHA-256 ([`Authority::console_link`]).
//! Opening the link and confirming spends it ([`Authority::console_login`]):
//! once, before it expires, and only while the admin it names holds a good
//! admin certificate. The session that opens then acts as that admin, with the
//! role the link gave (`read`: reads only; `admin`: reads and actions), and is
//! checked again on every request ([`Authority::console_admin`]): revoking the
//! admin's certificate ends its console sessions too.
//!
//! Every link made, every login and every refused login is audited
//! (`console.link`, `console.login`, `refuse.console`).

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use iotpki_core::clock::Clock;
use iotpki_store::{AuditEvent, CertStatus, ConsoleLink, Store, StoreError};
use zeroize::Zeroizing;

use crate::admin::{admins, Admin};
use crate::{Authority, AuthorityError};

/// How long a link works unless asked otherwise.
pub const DEFAULT_LINK_TTL_SECS: u64 = 15 * 60;

/// Longest a link may work.
pub const MAX_LINK_TTL_SECS: u64 = 24 * 3600;

/// What a console session may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleRole {
    /// Read every page; no action.
    Read,
    /// Read, and act (revoke, tokens, claims, batches).
    Admin,
}

impl ConsoleRole {
    /// Its name in the store and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }

    /// `read` or `admin`.
    pub fn parse(s: &str) -> Result<Self, AuthorityError> {
        match s {
            "read" => Ok(Self::Read),
            "admin" => Ok(Self::Admin),
            _ => Err(AuthorityError::malformed(format!("console role {s:?}: read or admin"))),
        }
    }
}

/// Who a console login opened a session for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleLogin {
    /// The admin's name.
    pub admin: String,
    /// What the session may do.
    pub role: ConsoleRole,
    /// When the link stopped working (Unix seconds).
    pub link_expires_at: i64,
    /// The admin's certificate that was good at login: the session is bound
    /// to it ([`Authority::console_admin`] looks it up by serial on every request).
    pub cert_serial: String,
}

/// A link made: its secret (shown once) and when it stops working.
#[derive(Debug)]
pub struct NewConsoleLink {
    /// The secret to put in the URL (`/console/login?link=SECRET`).
    pub secret: Zeroizing<String>,
    /// Unix seconds.
    pub expires_at: i64,
}

/// SHA-256 of a link's secret, hex: the only form the store keeps.
pub fn link_hash(secret: &str) -> String {
    crate::tokens::hash(secret)
}

/// The admin `name`'s certificate that is good now (neither revoked nor
/// expired, its key not blocked), if it has one.
fn good_admin_cert(store: &dyn Store, now: i64, name: &str) -> Result<Option<String>, AuthorityError> {
    for a in admins(store)? {
        if a.name == name
            && a.record.status == CertStatus::Good
            && a.record.not_after > now
            && store.blocked_key(&a.record.spki_sha256)?.is_none()
        {
            return Ok(Some(a.record.serial));
        }
    }
    Ok(None)
}

/// Make a one-time console link for admin `name` (CLI: `iotpki admin
/// console-link`, which needs the store only), working for `ttl_secs`
/// ([`DEFAULT_LINK_TTL_SECS`] when `None`, at most [`MAX_LINK_TTL_SECS`]).
/// Refused unless `name` holds a good admin certificate. Audited as
/// `console.link` by `actor`.
pub fn make_link(
    store: &dyn Store,
    clock: &dyn Clock,
    name: &str,
    role: ConsoleRole,
    ttl_secs: Option<u64>,
    actor: &str,
) -> Result<NewConsoleLink, AuthorityError> {
    let ttl = ttl_secs.unwrap_or(DEFAULT_LINK_TTL_SECS);
    if !(1..=MAX_LINK_TTL_SECS).contains(&ttl) {
        return Err(AuthorityError::malformed(format!(
            "a console link works between 1 s and {} h",
            MAX_LINK_TTL_SECS / 3600
        )));
    }
    let now = clock.now();
    if good_admin_cert(store, now, name)?.is_none() {
        return Err(AuthorityError::not_found(format!(
            "admin {name:?} has no good admin certificate (iotpki admin add {name} first)"
        )));
    }
    let mut raw = Zeroizing::new([0u8; 32]);
    SystemRandom::new().fill(raw.as_mut()).map_err(|_| AuthorityError::Config("RNG failed".into()))?;
    let secret = Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref()));
    let expires_at = now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX));
    store.create_console_link(
        ConsoleLink {
            link_hash: link_hash(&secret),
            admin: name.into(),
            role: role.name().into(),
            created_at: now,
            expires_at,
            used_at: None,
        },
        AuditEvent {
            at: now,
            actor: actor.into(),
            action: "console.link".into(),
            target: format!("admin:{name}"),
            detail: format!("role={} ttl={ttl}s", role.name()),
        },
    )?;
    Ok(NewConsoleLink { secret, expires_at })
}

impl Authority {
    fn good_admin_cert(&self, name: &str) -> Result<Option<String>, AuthorityError> {
        good_admin_cert(self.store.as_ref(), self.clock.now(), name)
    }

    /// [`make_link`] with this authority's store and clock.
    pub fn console_link(
        &self,
        name: &str,
        role: ConsoleRole,
        ttl_secs: Option<u64>,
        actor: &str,
    ) -> Result<NewConsoleLink, AuthorityError> {
        make_link(self.store.as_ref(), self.clock.as_ref(), name, role, ttl_secs, actor)
    }

    /// Spend a console link: the session it opens acts as the link's admin,
    /// with its role. Refused (403, audited as `refuse.console`) when the link
    /// is unknown, used already, expired, or its admin holds no good admin
    /// certificate any more (summed up past the refusal window's bound, as
    /// every refusal). Audited as `console.login` when it opens.
    pub fn console_login(&self, secret: &str) -> Result<ConsoleLogin, AuthorityError> {
        let r = self.console_login_inner(&link_hash(secret));
        // Counted and audited like every refusal: one entry each up to the
        // window's bound, then summed up (bounded log growth under a flood).
        self.audit_refusal(&r, || "console".into(), None, "refuse.console");
        r
    }

    fn console_login_inner(&self, hash: &str) -> Result<ConsoleLogin, AuthorityError> {
        let refused = |m: String| AuthorityError::forbidden(m);
        let link =
            self.store.console_link(hash)?.ok_or_else(|| refused("this console link is not one of ours".into()))?;
        let role = ConsoleRole::parse(&link.role)?;
        let Some(cert_serial) = self.good_admin_cert(&link.admin)? else {
            return Err(refused(format!("admin {} holds no good admin certificate any more", link.admin)));
        };
        let now = self.clock.now();
        let audit = AuditEvent {
            at: now,
            actor: format!("admin:{}", link.admin),
            action: "console.login".into(),
            target: "console".into(),
            detail: format!("role={}", role.name()),
        };
        match self.store.use_console_link(hash, now, audit) {
            Ok(l) => Ok(ConsoleLogin { admin: l.admin, role, link_expires_at: l.expires_at, cert_serial }),
            Err(StoreError::TokenUsed { used_at }) => Err(refused(format!(
                "this console link was used already ({}): ask for a new one (iotpki admin console-link)",
                iotpki_core::time::rfc3339(used_at)
            ))),
            Err(StoreError::TokenExpired { expires_at }) => Err(refused(format!(
                "this console link expired at {}: ask for a new one (iotpki admin console-link)",
                iotpki_core::time::rfc3339(expires_at)
            ))),
            Err(StoreError::TokenUnknown) => Err(refused("this console link is not one of ours".into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Record that `name`'s console session was ended by its admin (`console.logout`).
    pub fn console_logout(&self, name: &str) -> Result<(), AuthorityError> {
        let ev = AuditEvent {
            at: self.clock.now(),
            actor: format!("admin:{name}"),
            action: "console.logout".into(),
            target: "console".into(),
            detail: String::new(),
        };
        Ok(self.store.append_audit(ev)?)
    }

    /// The admin a console session acts as, checked now: its certificate
    /// `cert_serial` (the one good at login, found by serial: one indexed read,
    /// whatever the registry's size) must still be an admin certificate, good
    /// and not expired (else 403, audited as `refuse.console`).
    pub fn console_admin(&self, name: &str, cert_serial: &str) -> Result<Admin<'_>, AuthorityError> {
        let now = self.clock.now();
        // A key blocked without its certificate revoked authenticates
        // nothing over mutual TLS; nor does a session opened with it.
        let good = match self.store.certificate(cert_serial)? {
            Some(r) => {
                r.profile == iotpki_core::profile::Profile::Admin.name()
                    && r.status == CertStatus::Good
                    && r.not_after > now
                    && self.store.blocked_key(&r.spki_sha256)?.is_none()
            }
            None => false,
        };
        if good {
            return Ok(Admin::new(self, name.into(), cert_serial.into()));
        }
        let r = Err(AuthorityError::forbidden(format!("admin {name} holds no good admin certificate any more")));
        self.audit_refusal(&r, || format!("admin:{name}"), None, "refuse.console");
        r
    }

    /// A console action refused to admin `name` before it was done (a
    /// session that may only read): audited as `refuse.console`, as every
    /// refusal (summed up past the refusal window's bound).
    pub fn console_refused(&self, name: &str, what: &str, why: &str) {
        let r: Result<(), _> = Err(AuthorityError::forbidden(format!("{what}: {why}")));
        self.audit_refusal(&r, || format!("admin:{name}"), None, "refuse.console");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_others_are_refused() {
        for r in [ConsoleRole::Read, ConsoleRole::Admin] {
            assert_eq!(ConsoleRole::parse(r.name()).unwrap(), r);
        }
        assert!(ConsoleRole::parse("root").is_err());
        assert_eq!(link_hash("x").len(), 64);
    }
}
