//! Revocation: `iotpki revoke`, a CRL per issuing CA, and each root's ARL.
//!
//! A root's CRL (ARL) lists the CA certificates it revoked. The root key is
//! never loaded by the server, so the ARL is signed by an admin command that
//! unlocks it ([`sign_arl`], [`revoke_ca`]; `init` and `ca rotate` sign the
//! first), published in the store, and served as stored.
//!
//! A CRL is made on request and cached. It is made again when a revocation
//! happened since (the store's revocation mark changed, whichever process
//! revoked) or when half its validity has passed, so clients always find
//! one well before its nextUpdate. Each new CRL takes the next CRL number
//! from the store (durable, monotonic, audited).
//!
//! Several nodes on one database (PostgreSQL): no node trusts its own cache
//! without asking the store first. Every CRL and every OCSP request reads the
//! CA's revocation mark (count of revoked certificates, latest revocation
//! time: one indexed query) before it uses a cached answer, and a cached
//! answer is used only while the mark is unchanged. The count only grows
//! (revocations are never undone), so any revocation, committed by whichever
//! node or CLI process, changes the mark. The bound is therefore zero: a
//! request that starts after a revocation committed is answered from the
//! store's state including it, on every node; only a request already being
//! answered when it committed may still say good. Nothing is pushed between
//! nodes and there is no polling interval to tune.

use std::sync::Arc;

use iotpki_core::keys::{KeyType, Signer, SoftKey};
use iotpki_core::name::{self, DeviceSerial};
use iotpki_core::profile::{CertParams, Profile};
use iotpki_core::serial;
use iotpki_store::{AuditEvent, CertStatus, DeviceRevocation, Issuance, Store, StoreError};
use spki::der::{Decode, Encode};

use crate::{config, ocsp_cache, Authority, AuthorityError, CaKey, CrlScope, BACKDATE_SECS};
use iotpki_core::clock::Clock;

/// How long a CRL is valid (thisUpdate to nextUpdate).
pub const CRL_VALIDITY_SECS: i64 = 24 * 3600;

/// How long after its certificate's notAfter an entry stays on the CRLs.
/// RFC 5280 3.3: an entry may leave once one regularly scheduled CRL issued
/// after the certificate expired has listed it; CRLs are made again at half
/// their validity (on request and by the server's schedule), so two
/// validities leave room for several.
pub const EXPIRED_KEPT_SECS: i64 = 2 * CRL_VALIDITY_SECS;

/// What to revoke.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// One certificate by serial (hex).
    Serial(&'a str),
    /// Every good certificate of a device.
    Device(&'a DeviceSerial),
}

/// Revoke (admin) with an RFC 5280 reason code; returns the serials revoked.
///
/// A device is revoked by one store operation ([`Store::revoke_device`](iotpki_store::Revocations::revoke_device)):
/// its good certificates are listed and revoked in the same transaction, so
/// a renewal or enrollment racing the revocation either committed before it
/// (and is revoked by it) or comes after (and finds its predecessor revoked,
/// or the device no longer owned).
///
/// A CA certificate (issued by a root) is not revoked here: the root's CRL
/// (ARL) must be signed again with the root key, which the server never
/// holds; `iotpki ca revoke` does both.
pub fn revoke(
    store: &dyn Store,
    clock: &dyn Clock,
    target: Target<'_>,
    reason: u8,
    actor: &str,
) -> Result<Vec<String>, AuthorityError> {
    let now = clock.now();
    let detail = format!("reason={}", iotpki_core::crl::reason_name(reason));
    match target {
        Target::Serial(s) => {
            let s = s.to_ascii_lowercase();
            if let Some(rec) = store.certificate(&s)? {
                if [Profile::MatterPaa, Profile::MatterPai].iter().any(|p| p.name() == rec.profile) {
                    return Err(AuthorityError::malformed(format!(
                        "certificate {s} is a Matter {}: revoking a PAA or a PAI is not supported (no CRL is \
                         published for them; docs/matter.md)",
                        rec.profile
                    )));
                }
                if is_ca_profile(&rec.profile) {
                    return Err(AuthorityError::malformed(format!(
                        "certificate {s} is a CA certificate ({}) issued by {}: revoke it with `iotpki ca revoke \
                         --serial {s}`, which also signs the root's revocation list again",
                        rec.profile, rec.ca
                    )));
                }
            }
            let audit = AuditEvent { at: now, actor: actor.into(), action: "revoke".into(), target: s.clone(), detail };
            store.revoke(&s, reason, now, audit)?;
            Ok(vec![s])
        }
        Target::Device(d) => {
            let r = DeviceRevocation { device_serial: d.to_string(), reason, at: now, actor: actor.into(), detail };
            match store.revoke_device(r) {
                Ok(out) => Ok(out.serials),
                Err(StoreError::NothingToRevoke { .. }) => {
                    Err(AuthorityError::not_found(format!("device {d} has no certificate that is not revoked")))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Whether a certificate of this profile (as stored) is a CA's issued by a root.
pub(crate) fn is_ca_profile(profile: &str) -> bool {
    [Profile::IssuingCa, Profile::DelegatingCa].iter().any(|p| p.name() == profile)
}

/// A CRL made earlier, and what it was made from.
#[derive(Clone, Debug)]
pub(crate) struct Cached {
    pub(crate) der: Vec<u8>,
    pub(crate) mark: (u64, i64),
    pub(crate) this_update: i64,
    /// [`entries_digest`] of its entries.
    pub(crate) entries: [u8; 32],
}

/// A CA's revoked certificates as of a revocation mark.
pub(crate) struct RevokedList {
    pub(crate) mark: (u64, i64),
    pub(crate) entries: std::sync::Arc<Vec<iotpki_store::RevokedCert>>,
}

/// SHA-256 over a CRL's entries (serial, time, reason): equal digests, equal entries.
pub(crate) fn entries_digest(entries: &[iotpki_core::crl::Revoked]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for r in entries {
        h.update((r.serial.len() as u64).to_be_bytes());
        h.update(r.serial.as_bytes());
        h.update(r.at.to_be_bytes());
        h.update([r.reason]);
    }
    h.finalize().into()
}

/// How long an OCSP answer is valid (thisUpdate to nextUpdate).
pub const OCSP_VALIDITY_SECS: i64 = 3600;

/// How long a delegated OCSP signer's certificate lives; a new one is made
/// when less than a quarter of that is left.
pub const OCSP_SIGNER_SECS: i64 = 30 * 86_400;

/// A CA's delegated OCSP responder.
pub(crate) struct OcspSigner {
    pub(crate) key: iotpki_core::keys::SoftKey,
    pub(crate) cert_der: Vec<u8>,
    pub(crate) not_after: i64,
}

/// How long a root's ARL is valid by default (thisUpdate to nextUpdate). The
/// root key is locked (the server never holds it), so the ARL cannot be made
/// on request like an issuing CA's CRL: an operator signs it with `iotpki ca
/// sign-arl`, at least once per this period, and whenever a CA certificate is
/// revoked (`iotpki ca revoke` does it). A year keeps that a yearly ceremony;
/// a relying party refuses a stale one, so the date is explicit.
pub const ARL_VALIDITY_SECS: i64 = 365 * 86_400;

/// How long before an ARL's nextUpdate the server starts warning (in its
/// log, at most hourly) that the next must be signed.
pub const ARL_WARN_SECS: i64 = 30 * 86_400;

/// Shortest and longest ARL validity `ca sign-arl --validity-days` takes.
pub const ARL_VALIDITY_RANGE: std::ops::RangeInclusive<i64> = 86_400..=5 * 365 * 86_400;

/// The artifact kind under which root `root`'s ARL is published in the store.
pub fn arl_kind(root: &str) -> String {
    format!("arl/{root}")
}

/// A root's ARL, as signed and published.
#[derive(Clone, Debug)]
pub struct SignedArl {
    /// The root's name in the config.
    pub root: String,
    /// Its cRLNumber.
    pub number: u64,
    /// Its nextUpdate, Unix seconds.
    pub next_update: i64,
    /// How many CA certificates it lists.
    pub entries: usize,
    /// The ARL, DER.
    pub der: Vec<u8>,
}

/// Sign root `root`'s ARL (every CA certificate it revoked; RFC 5280 5: a
/// complete CRL of the root, which issues only CA certificates) with the next
/// CRL number, valid for `validity_secs` (clamped to the root's notAfter),
/// and publish it in the store (artifact [`arl_kind`]), audited.
pub(crate) fn publish_arl(
    store: &dyn Store,
    root: &str,
    issuer: &iotpki_core::profile::Issuer<'_>,
    now: i64,
    validity_secs: i64,
    actor: &str,
) -> Result<SignedArl, AuthorityError> {
    if !ARL_VALIDITY_RANGE.contains(&validity_secs) {
        return Err(AuthorityError::malformed(format!(
            "an ARL validity of {} days is outside 1 to {} days",
            validity_secs / 86_400,
            ARL_VALIDITY_RANGE.end() / 86_400
        )));
    }
    let next_update = (now + validity_secs).min(issuer.not_after);
    if next_update <= now {
        return Err(AuthorityError::Config(format!("root {root} has expired: it can sign no revocation list")));
    }
    let revoked: Vec<iotpki_core::crl::Revoked> = store
        .revoked(root)?
        .into_iter()
        .filter(|r| r.not_after.saturating_add(EXPIRED_KEPT_SECS) > now)
        .map(|r| iotpki_core::crl::Revoked { serial: r.serial, at: r.revoked_at, reason: r.reason })
        .collect();
    let number = store.next_crl_number(
        root,
        AuditEvent {
            at: now,
            actor: actor.into(),
            action: "arl.number".into(),
            target: root.into(),
            detail: format!("entries={}", revoked.len()),
        },
    )?;
    let der = iotpki_core::crl::build(issuer, number, now, next_update, &revoked)?;
    store.publish_artifact(
        iotpki_store::Artifact { kind: arl_kind(root), version: number, body: der.clone(), published_at: now },
        AuditEvent {
            at: now,
            actor: actor.into(),
            action: "arl.sign".into(),
            target: root.into(),
            detail: format!(
                "number={number} entries={} next_update={}",
                revoked.len(),
                iotpki_core::time::rfc3339(next_update)
            ),
        },
    )?;
    Ok(SignedArl { root: root.into(), number, next_update, entries: revoked.len(), der })
}

/// A root with its key unlocked.
struct UnlockedRoot {
    name: String,
    subject: x509_cert::name::Name,
    key_id: Vec<u8>,
    not_after: i64,
    signer: Box<dyn iotpki_core::keys::Signer>,
}

impl UnlockedRoot {
    fn issuer(&self) -> iotpki_core::profile::Issuer<'_> {
        iotpki_core::profile::Issuer {
            subject: &self.subject,
            key_id: &self.key_id,
            not_after: self.not_after,
            signer: self.signer.as_ref(),
        }
    }
}

/// Unlock the keys of the roots named by `which` (every root, current and
/// retiring, when `None`): key files with the passphrase, keys in the `[hsm]`
/// token with its PIN (`pin`, else `$IOTPKI_PIN`). Each key must match its
/// certificate. Nothing is written.
fn unlock_roots(
    dir: &std::path::Path,
    cfg: &crate::Config,
    which: Option<&str>,
    pass: &crate::Passphrase,
    pin: Option<&crate::Pin>,
) -> Result<Vec<UnlockedRoot>, AuthorityError> {
    use crate::config::CaRole;
    use crate::keyfile;
    let roots: Vec<_> =
        cfg.ca.iter().filter(|c| c.role != CaRole::Issuing && which.is_none_or(|w| w == c.name)).collect();
    if roots.is_empty() {
        return Err(AuthorityError::not_found(match which {
            Some(w) => format!("no root named {w:?} in the config"),
            None => "the config names no root".into(),
        }));
    }
    let token = match (&cfg.hsm, roots.iter().any(|c| c.key.is_none())) {
        (Some(h), true) => {
            let pin = match pin {
                Some(p) => p.clone(),
                None => crate::Pin::from_file_or_env(None)?,
            };
            let module = keyfile::resolve(dir, &h.module);
            let token = iotpki_hsm::Token::open(&module, &iotpki_hsm::Pkcs11Uri::parse(&h.token)?)?;
            token.check_pin(&pin)?;
            Some((token, pin))
        }
        _ => None,
    };
    let mut out = Vec::new();
    for ca in roots {
        let path = keyfile::resolve(dir, &ca.cert);
        let text = std::fs::read_to_string(&path).map_err(|e| AuthorityError::io(&path, e))?;
        let der = iotpki_core::pem::decode_one("CERTIFICATE", &text)
            .map_err(|e| AuthorityError::Config(format!("{}: {e}", path.display())))?;
        let signer: Box<dyn iotpki_core::keys::Signer> = match (&ca.key, &ca.key_uri, &token) {
            (Some(file), _, _) => Box::new(keyfile::read_encrypted(&keyfile::resolve(dir, file), pass)?),
            (None, Some(uri), Some((token, pin))) => {
                Box::new(iotpki_hsm::HsmKey::open(token, pin, &iotpki_hsm::Pkcs11Uri::parse(uri)?)?)
            }
            _ => return Err(AuthorityError::Config(format!("root {}: no key configured", ca.name))),
        };
        let info = iotpki_core::profile::cert_info(&der)?;
        if iotpki_core::keys::spki_fingerprint(signer.public_key_der()) != info.spki_sha256 {
            return Err(AuthorityError::Config(format!("root {}: key does not match certificate", ca.name)));
        }
        let key_id = info.ski.clone().ok_or_else(|| AuthorityError::Config(format!("root {}: no SKI", ca.name)))?;
        out.push(UnlockedRoot {
            name: ca.name.clone(),
            subject: info.cert.tbs_certificate.subject.clone(),
            key_id,
            not_after: info.not_after,
            signer,
        });
    }
    Ok(out)
}

/// `iotpki ca sign-arl`: unlock each root's key (current and retiring, or
/// only `root`) and sign and publish its ARL, valid for `validity_secs`.
/// `serve` serves the latest at `/crl/ROOT.crl` (what the CA certificates
/// name in their cRLDistributionPoints).
pub fn sign_arl(
    dir: &std::path::Path,
    root: Option<&str>,
    pass: &crate::Passphrase,
    pin: Option<&crate::Pin>,
    clock: &dyn Clock,
    validity_secs: i64,
    actor: &str,
) -> Result<Vec<SignedArl>, AuthorityError> {
    if !ARL_VALIDITY_RANGE.contains(&validity_secs) {
        return Err(AuthorityError::malformed(format!(
            "--validity-days {}: an ARL is valid from 1 to {} days",
            validity_secs / 86_400,
            ARL_VALIDITY_RANGE.end() / 86_400
        )));
    }
    let cfg = crate::Config::load(dir)?;
    let roots = unlock_roots(dir, &cfg, root, pass, pin)?;
    let store = crate::open_store(dir, &cfg)?;
    let now = clock.now();
    roots.iter().map(|r| publish_arl(store.as_ref(), &r.name, &r.issuer(), now, validity_secs, actor)).collect()
}

/// `iotpki ca revoke`: revoke a CA certificate issued by a root (an issuing
/// CA's, under the current or a retiring root) and sign that root's ARL again
/// at once. The root key is unlocked first: a wrong passphrase or PIN
/// changes nothing.
#[allow(clippy::too_many_arguments)]
pub fn revoke_ca(
    dir: &std::path::Path,
    serial: &str,
    reason: u8,
    pass: &crate::Passphrase,
    pin: Option<&crate::Pin>,
    clock: &dyn Clock,
    validity_secs: i64,
    actor: &str,
) -> Result<SignedArl, AuthorityError> {
    let serial = serial.to_ascii_lowercase();
    let cfg = crate::Config::load(dir)?;
    let store = crate::open_store(dir, &cfg)?;
    let rec = store
        .certificate(&serial)?
        .ok_or_else(|| AuthorityError::not_found(format!("certificate {serial} is not in the store")))?;
    if !is_ca_profile(&rec.profile)
        || !cfg.ca.iter().any(|c| c.name == rec.ca && c.role != crate::config::CaRole::Issuing)
    {
        return Err(AuthorityError::malformed(format!(
            "certificate {serial} is a {} certificate from {}, not a CA certificate from a root: use `iotpki revoke`",
            rec.profile, rec.ca
        )));
    }
    let root = unlock_roots(dir, &cfg, Some(&rec.ca), pass, pin)?.remove(0);
    let now = clock.now();
    if !ARL_VALIDITY_RANGE.contains(&validity_secs) {
        return Err(AuthorityError::malformed(format!(
            "--validity-days {}: an ARL is valid from 1 to {} days",
            validity_secs / 86_400,
            ARL_VALIDITY_RANGE.end() / 86_400
        )));
    }
    store.revoke(
        &serial,
        reason,
        now,
        AuditEvent {
            at: now,
            actor: actor.into(),
            action: "ca.revoke".into(),
            target: serial.clone(),
            detail: format!("{} {} reason={}", rec.profile, rec.subject, iotpki_core::crl::reason_name(reason)),
        },
    )?;
    publish_arl(store.as_ref(), &root.name, &root.issuer(), now, validity_secs, actor)
}

impl Authority {
    /// The current CRL (DER) of the issuing CA `ca`, complete (every
    /// certificate it revoked): cached, made again when something was revoked
    /// since or half its validity has passed.
    pub fn crl(&self, ca: &str) -> Result<Vec<u8>, AuthorityError> {
        self.crl_scoped(ca, None)
    }

    /// The current CRL (DER) of the issuing CA `ca`: complete when `shard` is
    /// `None`, else shard `k` of `s` of its partitioned CRL
    /// ([`iotpki_core::crl::shard_path`]): the revoked certificates of that
    /// shard, with a critical issuingDistributionPoint naming its URL. Any
    /// valid shard count is served, so certificates issued under an earlier
    /// count stay covered. Cached; made again when its own entries changed or
    /// half its validity has passed.
    pub fn crl_scoped(&self, ca: &str, shard: Option<(u32, u32)>) -> Result<Vec<u8>, AuthorityError> {
        if shard.is_none() && self.cfg.ca.iter().any(|c| c.name == ca && c.role != config::CaRole::Issuing) {
            return self.arl(ca);
        }
        if let Some((s, k)) = shard {
            if !iotpki_core::crl::valid_shard_count(s) || k >= s {
                return Err(AuthorityError::not_found(format!(
                    "no CRL shard {k} of {s}: shard counts are powers of two from 2 to {}",
                    iotpki_core::crl::MAX_SHARDS
                )));
            }
        }
        let key = self
            .issuing
            .iter()
            .find(|c| c.name == ca)
            .ok_or_else(|| AuthorityError::not_found(format!("no issuing CA named {ca:?}")))?;
        let scope_url = match shard {
            None => None,
            Some((s, k)) => {
                let base = key.public_http_url.as_ref().ok_or_else(|| {
                    AuthorityError::not_found(format!(
                        "CA {ca} has no partitioned CRLs (the authority has no server.public_http_url)"
                    ))
                })?;
                Some(format!("{base}{}", iotpki_core::crl::shard_path(ca, s, k)))
            }
        };
        let cache_key = CrlScope { ca: ca.to_string(), shard };
        let now = self.clock.now();
        let mark = self.store.revocation_mark(ca)?;
        let fresh = |c: &Cached| now < c.this_update + CRL_VALIDITY_SECS / 2;
        let mut cache = self.crls.lock().map_err(|_| AuthorityError::Config("CRL cache poisoned".into()))?;
        if let Some(c) = cache.get(&cache_key) {
            if c.mark == mark && fresh(c) {
                return Ok(c.der.clone());
            }
        }
        let all = self.revoked_list(ca, mark)?;
        // An entry stays until its certificate has been expired for a while
        // (RFC 5280 3.3: at least one regularly scheduled CRL after its expiry
        // lists it); after that it leaves, so a CRL holds about one
        // certificate lifetime of revocations, not every one ever made.
        let revoked: Vec<iotpki_core::crl::Revoked> = all
            .iter()
            .filter(|r| r.not_after.saturating_add(EXPIRED_KEPT_SECS) > now)
            .filter(|r| shard.is_none_or(|(s, k)| iotpki_core::crl::shard_of(&r.serial, s) == Some(k)))
            .map(|r| iotpki_core::crl::Revoked { serial: r.serial.clone(), at: r.revoked_at, reason: r.reason })
            .collect();
        let digest = entries_digest(&revoked);
        if let Some(c) = cache.get_mut(&cache_key) {
            // A revocation in another shard: this one's entries are the same.
            if c.entries == digest && fresh(c) {
                c.mark = mark;
                return Ok(c.der.clone());
            }
        }
        let audit = AuditEvent {
            at: now,
            actor: "authority".into(),
            action: "crl.issue".into(),
            target: match shard {
                None => ca.to_string(),
                Some((s, k)) => format!("{ca}/{s}/{k}"),
            },
            detail: format!("entries={}", revoked.len()),
        };
        let number = self.store.next_crl_number(ca, audit)?;
        let der = iotpki_core::crl::build_scoped(
            &key.issuer(),
            number,
            now,
            now + CRL_VALIDITY_SECS,
            &revoked,
            scope_url.as_deref(),
        )?;
        cache.insert(cache_key, Cached { der: der.clone(), mark, this_update: now, entries: digest });
        Ok(der)
    }

    /// The ARL of root `root` (current or retiring), as `iotpki ca sign-arl`
    /// (or init, or rotation) last signed and published it: the server never
    /// holds a root key, so it serves the stored one, never makes one. A
    /// stale one (past its nextUpdate) is still served: the relying party
    /// decides. Within [`ARL_WARN_SECS`] of its nextUpdate, or
    /// past it, the log says so (at most hourly) so that an operator signs
    /// the next.
    pub fn arl(&self, root: &str) -> Result<Vec<u8>, AuthorityError> {
        let art = self.store.artifact(&arl_kind(root))?.ok_or_else(|| {
            AuthorityError::not_found(format!(
                "root {root} has no revocation list yet: sign one with `iotpki ca sign-arl` (it needs the root key)"
            ))
        })?;
        let now = self.clock.now();
        if let Ok(next) = iotpki_core::crl::next_update(&art.body) {
            let last = self.arl_warned.load(std::sync::atomic::Ordering::Relaxed);
            if next <= now.saturating_add(ARL_WARN_SECS) && now.saturating_sub(last) >= 3600 {
                self.arl_warned.store(now, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    root,
                    next_update = %iotpki_core::time::rfc3339(next),
                    "the root's ARL is stale or nearly so: sign the next with `iotpki ca sign-arl`"
                );
            }
        }
        Ok(art.body)
    }

    /// The CA's revoked certificates as of `mark`, read from the store once per mark.
    pub(crate) fn revoked_list(
        &self,
        ca: &str,
        mark: (u64, i64),
    ) -> Result<Arc<Vec<iotpki_store::RevokedCert>>, AuthorityError> {
        let mut lists =
            self.revoked_lists.lock().map_err(|_| AuthorityError::Config("revoked list cache poisoned".into()))?;
        if let Some(l) = lists.get(ca) {
            if l.mark == mark {
                return Ok(l.entries.clone());
            }
        }
        let entries = Arc::new(self.store.revoked(ca)?);
        lists.insert(ca.into(), RevokedList { mark, entries: entries.clone() });
        Ok(entries)
    }

    /// The CRLs this node keeps fresh ([`Self::crl_scoped`]): the complete CRL
    /// of each issuing CA, and every shard someone asked for; and each root's
    /// ARL, which it cannot sign but looks at (a warning in the log when it
    /// is missing or within [`ARL_WARN_SECS`] of its nextUpdate).
    pub fn crl_scopes(&self) -> Vec<CrlScope> {
        let mut out: Vec<CrlScope> = self
            .cfg
            .ca
            .iter()
            .filter(|c| c.role != config::CaRole::Issuing)
            .map(|c| CrlScope { ca: c.name.clone(), shard: None })
            .chain(self.issuing.iter().map(|c| CrlScope { ca: c.name.clone(), shard: None }))
            .collect();
        if let Ok(cache) = self.crls.lock() {
            out.extend(cache.keys().filter(|k| k.shard.is_some()).cloned());
        }
        out
    }

    /// Per CA with a CRL made on this node: seconds since the thisUpdate of
    /// its oldest CRL (complete or shard) now served, sorted by CA.
    pub fn crl_ages(&self) -> Vec<(String, i64)> {
        let now = self.clock.now();
        let mut oldest: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
        let Ok(cache) = self.crls.lock() else { return Vec::new() };
        for (scope, c) in cache.iter() {
            let e = oldest.entry(scope.ca.as_str()).or_insert(c.this_update);
            *e = (*e).min(c.this_update);
        }
        let mut out: Vec<(String, i64)> = oldest.into_iter().map(|(ca, t)| (ca.to_string(), now - t)).collect();
        out.sort();
        out
    }

    /// Answer an OCSP request (DER) with an OCSP response (DER), always: a
    /// malformed request gets `malformedRequest`, one about a CA we do not
    /// serve `unauthorized`, our own failure `internalError` (logged).
    /// Answers without a nonce are cached until something is revoked or half
    /// their validity has passed.
    pub fn ocsp(&self, request: &[u8]) -> Vec<u8> {
        match self.ocsp_inner(request) {
            Ok(der) => der,
            Err(e) => {
                tracing::error!(error = %e, "OCSP answer failed");
                x509_ocsp_internal_error()
            }
        }
    }

    pub(crate) fn ocsp_inner(&self, request: &[u8]) -> Result<Vec<u8>, AuthorityError> {
        let Ok(req) = iotpki_core::ocsp::parse_request(request) else { return Ok(iotpki_core::ocsp::malformed()) };
        let found =
            self.issuing.iter().find(|c| req.cert_ids.iter().all(|id| iotpki_core::ocsp::issued_by(id, &c.cert)));
        let Some(ca) = found.cloned() else { return Ok(iotpki_core::ocsp::unauthorized()) };
        let now = self.clock.now();
        let mark = self.store.revocation_mark(&ca.name)?;
        // Only one certificate's answer, without a nonce, is cached, keyed by its CertID.
        let cache_key = match (req.nonce.is_none(), req.cert_ids.as_slice()) {
            (true, [id]) => id.to_der().ok(),
            _ => None,
        };
        if let Some(key) = &cache_key {
            let cache = self.ocsp_cache.lock().map_err(|_| AuthorityError::Config("OCSP cache poisoned".into()))?;
            if let Some(c) = cache.get(key) {
                if c.ca == ca.name && c.mark == mark && now < c.produced + OCSP_VALIDITY_SECS / 2 {
                    self.metrics.ocsp_cache_hits.inc();
                    return Ok(c.der.clone());
                }
            }
        }
        self.metrics.ocsp_cache_misses.inc();
        let mut answers = Vec::with_capacity(req.cert_ids.len());
        for id in &req.cert_ids {
            let serial = hex::encode(id.serial_number.as_bytes());
            let status = match self.store.certificate(&serial)? {
                Some(rec) if rec.ca == ca.name => match rec.status {
                    CertStatus::Good => iotpki_core::ocsp::Status::Good,
                    CertStatus::Revoked { at, reason } => iotpki_core::ocsp::Status::Revoked { at, reason },
                },
                _ => iotpki_core::ocsp::Status::Unknown,
            };
            answers.push((id.clone(), status));
        }
        // An answer about a serial we never issued is not kept: anyone can ask about any number.
        let known = answers.iter().all(|(_, s)| !matches!(s, iotpki_core::ocsp::Status::Unknown));
        let signer = self.ocsp_signer(&ca, now)?;
        let der = iotpki_core::ocsp::respond(
            &signer.key,
            &signer.cert_der,
            now,
            now + OCSP_VALIDITY_SECS,
            &answers,
            req.nonce,
        )?;
        if let (Some(key), true) = (cache_key, known) {
            let mut cache = self.ocsp_cache.lock().map_err(|_| AuthorityError::Config("OCSP cache poisoned".into()))?;
            cache.insert(key, ocsp_cache::Cached { der: der.clone(), ca: ca.name.clone(), mark, produced: now });
        }
        Ok(der)
    }

    /// Answers in the OCSP cache, and their bytes (for tests and metrics).
    pub fn ocsp_cache_size(&self) -> (usize, usize) {
        self.ocsp_cache.lock().map(|c| c.size()).unwrap_or_default()
    }

    /// The CA's delegated OCSP signer, made (and recorded) when first needed
    /// or when its certificate has less than a quarter of its life left.
    pub(crate) fn ocsp_signer(&self, ca: &Arc<CaKey>, now: i64) -> Result<Arc<OcspSigner>, AuthorityError> {
        let mut signers =
            self.ocsp_signers.lock().map_err(|_| AuthorityError::Config("OCSP signers poisoned".into()))?;
        if let Some(s) = signers.get(&ca.name) {
            if now < s.not_after - OCSP_SIGNER_SECS / 4 {
                return Ok(s.clone());
            }
        }
        let key = SoftKey::generate(KeyType::from_name(&self.cfg.key_type)?)?;
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(key.public_key_der())
            .map_err(|e| AuthorityError::Config(format!("OCSP key: {e}")))?;
        let (sn, sn_hex) = serial::system_random_serial(now)?;
        let subject = name::NameBuilder::default()
            .organization(&self.cfg.organization)?
            .common_name(&format!("{} {} OCSP responder", self.cfg.organization, ca.name))?
            .build();
        let params = CertParams {
            profile: Profile::OcspSigner,
            serial: sn,
            subject,
            spki,
            not_before: now - BACKDATE_SECS,
            not_after: now + OCSP_SIGNER_SECS,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: None,
        };
        let record = ca.sign(&params, sn_hex.clone(), None, None, now)?;
        let signer = Arc::new(OcspSigner { key, cert_der: record.der.clone(), not_after: record.not_after });
        let audit = AuditEvent {
            at: now,
            actor: "authority".into(),
            action: "ocsp.signer".into(),
            target: sn_hex,
            detail: format!("ca={}", ca.name),
        };
        self.store.record_issuance(Issuance { cert: record, preconditions: vec![], audit })?;
        self.metrics.issued.with(&["ocsp.signer"]).inc();
        signers.insert(ca.name.clone(), signer.clone());
        Ok(signer)
    }
}

fn x509_ocsp_internal_error() -> Vec<u8> {
    // OCSPResponse { responseStatus internalError (2) }
    vec![0x30, 0x03, 0x0a, 0x01, 0x02]
}
