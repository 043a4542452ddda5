//! The factory line, authority side: production batches and stations.
//!
//! A batch names the serials it may give birth to (its allowlist), how many
//! (its quota) and when (its window). A station is a factory machine with its
//! own certificate from the manufacturing CA, authorised for some batches.
//! The key of a station is made on the station; the authority only ever sees
//! its public key. Every check of a birth runs in the store's transaction
//! (`Precondition::Birth`), so quotas and one-birth-per-serial hold under
//! concurrency and across processes.

use iotpki_core::keys;
use iotpki_core::matter::{ProductId, VendorId};
use iotpki_core::name::{self, DeviceSerial};
use iotpki_core::profile::{self, CertParams, Profile};
use iotpki_core::serial;
use iotpki_store::{
    AuditEvent, BatchProfile, BatchRecord, BatchStatus, CertRecord, CertStatus, StationRecord, StationStatus, Store,
    StoreError, SyncEntry, SyncOutcome, SyncUpload,
};
use spki::der::{Decode, Encode};

use crate::auth::Station;
use crate::{
    attest, delegated_crl_path, Authority, AuthorityError, Caller, Delegated, DelegatedCrlTerms, BACKDATE_SECS,
    BIRTH_LABEL, DELEGATED_CRL_SECS,
};
use iotpki_core::clock::Clock;

/// Most serials one batch may list.
pub const MAX_ALLOWLIST: usize = 1_000_000;

/// Most serials one delegated CA (a station's offline sub-CA) may name. Its
/// allowlist is signed into it, one permitted directoryName subtree per
/// serial (about 80 bytes each for short names), and the certificate travels
/// in every birth chain a device presents: TLS 1.3 implementations cap a
/// handshake message near 64 KiB (rustls: 0xffff), and small devices store
/// the chain. A batch with more unborn serials is delegated in slices
/// (`station delegate --serials FILE`); a larger request is refused.
pub const MAX_DELEGATED_SERIALS: usize = 256;

/// Most octets a delegated CA certificate may take (long serials and batch
/// names make each subtree larger): above it the delegation is refused.
pub const MAX_DELEGATED_CERT_BYTES: usize = 32 * 1024;

/// The serials a delegation names: `wanted` (each on the batch's allowlist
/// and not born yet, none twice) or, when `None`, every unborn serial; at
/// least one and at most [`MAX_DELEGATED_SERIALS`].
pub fn delegation_slice(
    batch: &str,
    unborn: &[String],
    wanted: Option<&[String]>,
) -> Result<Vec<String>, AuthorityError> {
    let out = match wanted {
        None => unborn.to_vec(),
        Some(w) => {
            let pool: std::collections::HashSet<&str> = unborn.iter().map(String::as_str).collect();
            let mut seen = std::collections::HashSet::new();
            for s in w {
                if !pool.contains(s.as_str()) {
                    return Err(AuthorityError::malformed(format!(
                        "serial {s} is not a serial of batch {batch} still to be born (off its allowlist, or born already)"
                    )));
                }
                if !seen.insert(s.as_str()) {
                    return Err(AuthorityError::malformed(format!("serial {s} is listed twice")));
                }
            }
            w.to_vec()
        }
    };
    if out.is_empty() {
        return Err(AuthorityError::malformed(format!("batch {batch} has no serial left to delegate")));
    }
    if out.len() > MAX_DELEGATED_SERIALS {
        return Err(AuthorityError::malformed(format!(
            "a delegated CA names at most {MAX_DELEGATED_SERIALS} serials (signed into its name constraints) and \
             {} were asked for batch {batch}: delegate a slice of the allowlist (--serials FILE)",
            out.len()
        )));
    }
    Ok(out)
}

/// What `iotpki batch create` asks for.
#[derive(Clone, Debug)]
pub struct NewBatch {
    /// The id; generated when `None`.
    pub id: Option<String>,
    /// The product name.
    pub product: String,
    /// The allowlist file's text: one serial per line (a CSV's first column);
    /// blank lines, `#` comments and a `serial` header line are skipped.
    pub allowlist: String,
    /// Most births.
    pub quota: u64,
    /// First second it issues in.
    pub from: i64,
    /// First second it no longer issues in.
    pub until: i64,
    /// What its births are (default: birth certificates under the manufacturing CA).
    pub profile: BatchProfile,
    /// The certificate template its births get (docs/templates.md; none:
    /// the birth label's, else the built-in device profile). The caller
    /// checks the name against the config ([`crate::templates::check_known`]).
    pub template: Option<String>,
    /// Its births must prove their key is in the TPM whose EK is registered
    /// for their serial ([`crate::attest`]). Fixed with the batch, in the
    /// same transaction: it can be neither added nor taken away later.
    pub tpm_attestation: bool,
}

impl NewBatch {
    /// Batch `id` of the serials in `allowlist` (one per line) for `product`, at
    /// most `quota` births from `from` until `until`: the default profile, no template.
    pub fn open(id: &str, product: &str, allowlist: String, quota: u64, (from, until): (i64, i64)) -> Self {
        NewBatch {
            id: Some(id.into()),
            product: product.into(),
            allowlist,
            quota,
            from,
            until,
            profile: BatchProfile::default(),
            template: None,
            tpm_attestation: false,
        }
    }
}

/// The profile `iotpki batch create` (or the admin API) asks for: `profile`
/// (`device`, the default, or `matter-dac`) with the Matter vendor and
/// product ids (four hex digits each), which only `matter-dac` takes and needs.
pub fn batch_profile(
    profile: Option<&str>,
    vendor_id: Option<&str>,
    product_id: Option<&str>,
) -> Result<BatchProfile, AuthorityError> {
    let bad = |e: iotpki_core::Error| AuthorityError::malformed(e.to_string());
    match (profile.unwrap_or("device"), vendor_id, product_id) {
        ("device", None, None) => Ok(BatchProfile::Device),
        ("device", _, _) => Err(AuthorityError::malformed(
            "--vendor-id and --product-id are for Matter batches: add --profile matter-dac".into(),
        )),
        ("matter-dac", Some(v), Some(p)) => Ok(BatchProfile::MatterDac {
            vendor_id: VendorId::parse(v).map_err(bad)?.0,
            product_id: ProductId::parse(p).map_err(bad)?.0,
        }),
        ("matter-dac", _, _) => Err(AuthorityError::malformed(
            "a matter-dac batch needs --vendor-id and --product-id (four hex digits each, such as FFF1 and 8000)"
                .into(),
        )),
        (other, _, _) => {
            Err(AuthorityError::malformed(format!("batch profile {other:?}: give device (the default) or matter-dac")))
        }
    }
}

/// The store's good PAI certificates for `vid` that may sign a DAC of `pid`
/// (their subject names `vid`, and no product or `pid`).
fn pai_recorded(store: &dyn Store, vid: VendorId, pid: ProductId) -> Result<bool, AuthorityError> {
    let q = iotpki_store::CertQuery { profile: Some(Profile::MatterPai.name().into()), ..Default::default() };
    for rec in store.list_certificates(&q)? {
        if rec.status != CertStatus::Good {
            continue;
        }
        let info = profile::cert_info(&rec.der)?;
        let (v, p) = iotpki_core::matter::ids_of(&info.cert.tbs_certificate.subject);
        if v.as_deref() == Some(vid.to_string().as_str()) && p.as_deref().is_none_or(|p| p == pid.to_string()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A name for a batch or a station: 1 to 64 of `A-Z a-z 0-9 - _ .`.
pub fn check_name(what: &str, s: &str) -> Result<(), AuthorityError> {
    if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(AuthorityError::malformed(format!("{what} {s:?} must be 1 to 64 of A-Z a-z 0-9 - _ .")));
    }
    Ok(())
}

/// Parse an allowlist: every serial valid, none twice.
pub fn parse_allowlist(text: &str) -> Result<Vec<String>, AuthorityError> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let field = line.split(',').next().unwrap_or_default().trim().trim_matches('"');
        if field.is_empty() || field.starts_with('#') || (out.is_empty() && field.eq_ignore_ascii_case("serial")) {
            continue;
        }
        let sn = DeviceSerial::parse(field)
            .map_err(|e| AuthorityError::malformed(format!("allowlist line {}: {e}", n + 1)))?;
        if !seen.insert(sn.to_string()) {
            return Err(AuthorityError::malformed(format!("allowlist line {}: serial {sn} is listed twice", n + 1)));
        }
        out.push(sn.to_string());
        if out.len() > MAX_ALLOWLIST {
            return Err(AuthorityError::malformed(format!("an allowlist holds at most {MAX_ALLOWLIST} serials")));
        }
    }
    if out.is_empty() {
        return Err(AuthorityError::malformed("the allowlist names no serial".into()));
    }
    Ok(out)
}

/// Create a batch (admin).
pub fn create_batch(
    store: &dyn Store,
    clock: &dyn Clock,
    nb: NewBatch,
    actor: &str,
) -> Result<BatchRecord, AuthorityError> {
    let serials = parse_allowlist(&nb.allowlist)?;
    let id = match nb.id {
        Some(id) => id,
        None => {
            let mut r = [0u8; 4];
            aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut r)
                .map_err(|_| AuthorityError::Config("RNG failed".into()))?;
            format!("B-{}", hex::encode(r))
        }
    };
    check_name("batch id", &id)?;
    if nb.product.trim().is_empty() {
        return Err(AuthorityError::malformed("--product must not be empty".into()));
    }
    if nb.quota == 0 || nb.quota > serials.len() as u64 {
        return Err(AuthorityError::malformed(format!(
            "the quota must be between 1 and the allowlist's {} serials (got {})",
            serials.len(),
            nb.quota
        )));
    }
    if nb.from >= nb.until {
        return Err(AuthorityError::malformed("the window must end after it starts (--from before --until)".into()));
    }
    if let BatchProfile::MatterDac { vendor_id, product_id } = nb.profile {
        // Parse again: a caller may build the profile by hand.
        let vid = VendorId::parse(&format!("{vendor_id:04X}")).map_err(|e| AuthorityError::malformed(e.to_string()))?;
        let pid =
            ProductId::parse(&format!("{product_id:04X}")).map_err(|e| AuthorityError::malformed(e.to_string()))?;
        if !pai_recorded(store, vid, pid)? {
            return Err(AuthorityError::malformed(format!(
                "this authority has no PAI for vendor id {vid} that may sign product {pid}: make one first \
                 (iotpki matter paa, then iotpki matter pai --vendor-id {vid})"
            )));
        }
    }
    if let Some(t) = &nb.template {
        check_name("template", t)?;
        if nb.profile != BatchProfile::Device {
            return Err(AuthorityError::malformed(format!(
                "a {} batch's births follow the Matter specification, not a template (--template {t})",
                nb.profile.name()
            )));
        }
    }
    let now = clock.now();
    let record = BatchRecord {
        id: id.clone(),
        product: nb.product.clone(),
        quota: nb.quota,
        issued: 0,
        refused: 0,
        flagged: 0,
        valid_from: nb.from,
        valid_until: nb.until,
        status: BatchStatus::Open,
        created_at: now,
        allowlist: serials.len() as u64,
        profile: nb.profile,
        template: nb.template.clone(),
        tpm_attestation: nb.tpm_attestation,
    };
    let mut matter = match nb.profile {
        BatchProfile::Device => String::new(),
        BatchProfile::MatterDac { vendor_id, product_id } => {
            format!(" profile=matter-dac vendor_id={vendor_id:04X} product_id={product_id:04X}")
        }
    };
    if let Some(t) = &nb.template {
        matter = format!("{matter} template={t}");
    }
    if nb.tpm_attestation {
        matter.push_str(" tpm-attestation=required");
    }
    let audit = AuditEvent {
        at: now,
        actor: actor.into(),
        action: "batch.create".into(),
        target: id.clone(),
        detail: format!(
            "product={} quota={} serials={} window={}..{}{matter}",
            nb.product,
            nb.quota,
            serials.len(),
            nb.from,
            nb.until
        ),
    };
    store.create_batch(record, serials, audit)?;
    store.batch(&id)?.ok_or_else(|| AuthorityError::Config(format!("batch {id} vanished after creation")))
}

/// Close a batch (admin): it issues nothing more.
pub fn close_batch(store: &dyn Store, clock: &dyn Clock, id: &str, actor: &str) -> Result<(), AuthorityError> {
    let audit = AuditEvent {
        at: clock.now(),
        actor: actor.into(),
        action: "batch.close".into(),
        target: id.into(),
        detail: String::new(),
    };
    Ok(store.close_batch(id, audit)?)
}

/// Revoke a station (admin): it and its certificate are refused from now on.
pub fn revoke_station(store: &dyn Store, clock: &dyn Clock, name: &str, actor: &str) -> Result<(), AuthorityError> {
    let now = clock.now();
    let audit = AuditEvent {
        at: now,
        actor: actor.into(),
        action: "station.revoke".into(),
        target: name.into(),
        detail: "reason=cessationOfOperation".into(),
    };
    Ok(store.revoke_station(name, now, audit)?)
}

impl Authority {
    /// A TPM attestation challenge for device `serial` of `batch`, asked by a
    /// station for the key whose TPMT_PUBLIC is `public_area`; `None` when the
    /// batch does not require attestation.
    pub fn tpm_challenge(
        &self,
        caller: &Caller,
        batch: &str,
        serial: &str,
        public_area: &[u8],
    ) -> Result<Option<attest::Challenge>, AuthorityError> {
        // Like a birth's, the refusal of an authorised station counts against the batch.
        let (r, counted) = match caller.station() {
            Ok(st) if !st.may_make(batch) => (
                Err(StoreError::StationNotAuthorized { station: st.record.name.clone(), batch: batch.into() }.into()),
                None,
            ),
            Ok(_) => (self.tpm_challenge_inner(batch, serial, public_area), Some(batch)),
            Err(e) => (Err(e), None),
        };
        self.audit_refusal(&r, || caller.actor(), counted, "refuse.tpm-challenge");
        r
    }

    fn tpm_challenge_inner(
        &self,
        batch: &str,
        serial: &str,
        public_area: &[u8],
    ) -> Result<Option<attest::Challenge>, AuthorityError> {
        if !self.batch_rules(batch)?.is_some_and(|r| r.tpm_attestation) {
            return Ok(None);
        }
        let serial = DeviceSerial::parse(serial).map_err(|e| AuthorityError::malformed(e.to_string()))?;
        let now = self.clock.now();
        Ok(Some(self.tpm_challenges.issue(self.store.as_ref(), now, batch, serial.as_str(), public_area)?))
    }

    /// What a station may know of one of its batches: the record and up to
    /// `limit` serials of its allowlist that are not born yet, in order.
    pub fn station_batch(
        &self,
        caller: &Caller,
        batch: &str,
        limit: u32,
    ) -> Result<(BatchRecord, Vec<String>), AuthorityError> {
        let st = caller.station()?;
        if !st.may_make(batch) {
            return Err(
                StoreError::StationNotAuthorized { station: st.record.name.clone(), batch: batch.into() }.into()
            );
        }
        let rec = self.store.batch(batch)?.ok_or_else(|| StoreError::BatchUnknown { batch: batch.into() })?;
        Ok((rec, self.store.unborn_serials(batch, limit.min(100_000))?))
    }

    /// Certify a new factory station `name` for `batches` (admin). Its key was
    /// made on the station: only its public key (`spki_der`) comes here. The
    /// certificate comes from the CA of the `birth` label (default: the
    /// manufacturing CA). Returns the certificate and its issuing chain.
    pub fn add_station(
        &self,
        name: &str,
        batches: &[String],
        spki_der: &[u8],
        actor: &str,
    ) -> Result<(Vec<u8>, Vec<Vec<u8>>), AuthorityError> {
        check_name("station name", name)?;
        if batches.is_empty() {
            return Err(AuthorityError::malformed("a station needs at least one batch (--batches B1,B2)".into()));
        }
        for b in batches {
            check_name("batch id", b)?;
        }
        let ca = &self.label(Some(BIRTH_LABEL))?.ca;
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(spki_der)
            .map_err(|e| AuthorityError::malformed(format!("station public key: {e}")))?;
        let now = self.clock.now();
        let (sn, sn_hex) = serial::system_random_serial(now)?;
        let subject = name::NameBuilder::default()
            .organization(&self.cfg.organization)?
            .organizational_unit("Factory stations")?
            .common_name(name)?
            .build();
        let params = CertParams {
            profile: Profile::Station,
            serial: sn,
            subject: subject.clone(),
            spki,
            not_before: now - BACKDATE_SECS,
            not_after: now + 2 * 365 * 86_400,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: None,
        };
        let cert = ca.sign(&params, sn_hex.clone(), None, None, now)?;
        let station = StationRecord {
            name: name.into(),
            cert_serial: sn_hex.clone(),
            batches: batches.to_vec(),
            status: StationStatus::Active,
            created_at: now,
        };
        let audit = AuditEvent {
            at: now,
            actor: actor.into(),
            action: "station.add".into(),
            target: name.into(),
            detail: format!("cert={sn_hex} batches={}", batches.join(",")),
        };
        let der = cert.der.clone();
        self.store.add_station(station, cert, audit)?;
        Ok((der, vec![ca.cert_der.clone()]))
    }

    /// Certify a station's offline sub-CA for `batch` (admin), for all the
    /// batch's serials not born yet: see [`Self::delegate_station_serials`].
    pub fn delegate_station(
        &self,
        station: &str,
        batch: &str,
        spki_der: &[u8],
        actor: &str,
    ) -> Result<Delegated, AuthorityError> {
        self.delegate_station_serials(station, batch, spki_der, None, actor)
    }

    /// Certify a station's offline sub-CA for `batch` (admin): issued by the
    /// `birth` label's CA, path length 0, valid only inside the batch's window,
    /// and name-constrained to exactly the device names of the serials it may
    /// give birth to (`O=org, OU=batch, CN=serial, serialNumber=serial`, one
    /// permitted directoryName subtree per serial), so that any RFC 5280
    /// validator refuses a birth it signs for any other serial. The serials are
    /// `serials` (a slice of the batch's allowlist, none born yet) or, when
    /// `None`, every serial of the batch not born yet; at most
    /// [`MAX_DELEGATED_SERIALS`], and the certificate at most
    /// [`MAX_DELEGATED_CERT_BYTES`] (above either: refused, delegate
    /// slices). Its key was made on the station; only `spki_der` comes here.
    /// Returns the certificate and its issuing chain, and the batch's terms for
    /// the station.
    pub fn delegate_station_serials(
        &self,
        station: &str,
        batch: &str,
        spki_der: &[u8],
        serials: Option<&[String]>,
        actor: &str,
    ) -> Result<Delegated, AuthorityError> {
        let rec = self.store.batch(batch)?.ok_or_else(|| StoreError::BatchUnknown { batch: batch.into() })?;
        if let BatchProfile::MatterDac { vendor_id, .. } = rec.profile {
            return Err(AuthorityError::forbidden(format!(
                "batch {batch} issues Matter DACs, which only the PAI of vendor id {vendor_id:04X} signs (a PAI's \
                 path length is 0, Matter 6.2.2.4: no delegated CA can sit under it): its stations give birth \
                 online only"
            )));
        }
        if rec.tpm_attestation {
            return Err(AuthorityError::forbidden(format!(
                "batch {batch} requires TPM attestation, which the authority checks online at each birth: \
                 its stations cannot issue offline"
            )));
        }
        let ca = &self.label(Some(BIRTH_LABEL))?.ca;
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(spki_der)
            .map_err(|e| AuthorityError::malformed(format!("delegated CA public key: {e}")))?;
        let now = self.clock.now();
        if now >= rec.valid_until {
            return Err(StoreError::BatchOutsideWindow {
                batch: batch.into(),
                from: rec.valid_from,
                until: rec.valid_until,
            }
            .into());
        }
        let unborn = self.store.unborn_serials(batch, u32::try_from(MAX_ALLOWLIST).unwrap_or(u32::MAX))?;
        let allowlist = delegation_slice(batch, &unborn, serials)?;
        let subtrees = allowlist
            .iter()
            .map(|sn| {
                let sn = DeviceSerial::parse(sn).map_err(|e| AuthorityError::Config(format!("allowlist: {e}")))?;
                Ok(name::batch_device_subject(&self.cfg.organization, batch, &sn)?)
            })
            .collect::<Result<Vec<_>, AuthorityError>>()?;
        let (sn, sn_hex) = serial::system_random_serial(now)?;
        let subject = name::NameBuilder::default()
            .organization(&self.cfg.organization)?
            .organizational_unit("Factory stations")?
            .common_name(&format!("{station} offline CA for {batch}"))?
            .build();
        let params = CertParams {
            profile: Profile::DelegatedCa,
            serial: sn,
            subject: subject.clone(),
            spki,
            not_before: rec.valid_from.max(now - BACKDATE_SECS),
            not_after: rec.valid_until,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: Some(subtrees),
        };
        let cert = ca.sign(&params, sn_hex.clone(), None, None, now)?;
        if cert.der.len() > MAX_DELEGATED_CERT_BYTES {
            return Err(AuthorityError::malformed(format!(
                "the delegated CA for {} serials of batch {batch} would take {} bytes, above the {} a device's TLS \
                 chain can carry: delegate fewer serials at once (--serials FILE with a slice of the allowlist)",
                allowlist.len(),
                cert.der.len(),
                MAX_DELEGATED_CERT_BYTES
            )));
        }
        let audit = AuditEvent {
            at: now,
            actor: actor.into(),
            action: "station.delegate".into(),
            target: station.into(),
            detail: format!(
                "batch={batch} cert={sn_hex} serials={} first={} last={}",
                allowlist.len(),
                allowlist.first().map(String::as_str).unwrap_or_default(),
                allowlist.last().map(String::as_str).unwrap_or_default()
            ),
        };
        let der = cert.der.clone();
        self.store.add_delegation(station, batch, cert, audit)?;
        let crl_url = ca.public_http_url.as_ref().map(|b| format!("{b}{}", delegated_crl_path(station, batch)));
        Ok(Delegated { cert: der, chain: vec![ca.cert_der.clone()], batch: rec, allowlist, crl_url })
    }

    /// The station's delegated CA for `batch`: its store name and certificate.
    fn delegate_of(&self, station: &str, batch: &str) -> Result<(String, Vec<u8>), AuthorityError> {
        let serial = self.store.delegation(station, batch)?.ok_or_else(|| {
            AuthorityError::forbidden(format!("station {station} has no delegated CA for batch {batch}"))
        })?;
        let rec = self
            .store
            .certificate(&serial)?
            .ok_or_else(|| AuthorityError::Config(format!("delegated CA {serial} is not in the store")))?;
        Ok((format!("delegated:{station}:{batch}"), rec.der))
    }

    /// What the station's next CRL for its delegated CA of `batch` must say:
    /// the births the authority revoked under it, its cRLNumber, and its
    /// nextUpdate (a week on, or the delegated CA's notAfter once the batch is
    /// closed: the final CRL, which must outlive every birth it covers).
    pub fn delegated_crl_terms(&self, caller: &Caller, batch: &str) -> Result<DelegatedCrlTerms, AuthorityError> {
        let station = &caller.station()?.record;
        let (ca, der) = self.delegate_of(&station.name, batch)?;
        let not_after = profile::cert_info(&der)?.not_after;
        let now = self.clock.now();
        let closed = self.store.batch(batch)?.is_some_and(|b| b.status == iotpki_store::BatchStatus::Closed);
        let next_update = if closed { not_after } else { (now + DELEGATED_CRL_SECS).min(not_after) };
        let number = self.store.artifact(&format!("crl/{ca}"))?.map(|a| a.version).unwrap_or(0) + 1;
        let revoked = self
            .store
            .revoked(&ca)?
            .into_iter()
            .map(|r| iotpki_core::crl::Revoked { serial: r.serial, at: r.revoked_at, reason: r.reason })
            .collect();
        Ok(DelegatedCrlTerms { number, next_update, revoked })
    }

    /// A station uploads the CRL it signed with its delegated CA for `batch`:
    /// checked against the delegated certificate (issuer, signature, current),
    /// its number above the last one, its nextUpdate no later than the terms
    /// allow, and its entries exactly the births the authority revoked under
    /// that CA (a station cannot leave one off). Then it is what
    /// `/crl/delegated/STATION/BATCH.crl` serves.
    pub fn upload_delegated_crl(&self, caller: &Caller, batch: &str, der: &[u8]) -> Result<u64, AuthorityError> {
        let r = (|| {
            let station = &caller.station()?.record;
            let terms = self.delegated_crl_terms(caller, batch)?;
            let (ca, cert) = self.delegate_of(&station.name, batch)?;
            let now = self.clock.now();
            let bad = |m: String| AuthorityError::forbidden(format!("delegated CA CRL for batch {batch}: {m}"));
            let checked = iotpki_core::crl::check(der, &cert, now, BACKDATE_SECS).map_err(|e| bad(e.to_string()))?;
            if checked.number < terms.number {
                return Err(bad(format!(
                    "cRLNumber {} is not above the last one ({})",
                    checked.number,
                    terms.number - 1
                )));
            }
            if checked.next_update > terms.next_update {
                return Err(bad(format!(
                    "nextUpdate {} is later than {} allows",
                    checked.next_update, terms.next_update
                )));
            }
            if checked.scope.is_some() {
                return Err(bad("a delegated CA's CRL is complete (no issuingDistributionPoint)".into()));
            }
            let mut want: Vec<&str> = terms.revoked.iter().map(|r| r.serial.as_str()).collect();
            let mut got: Vec<&str> = checked.revoked.iter().map(String::as_str).collect();
            want.sort_unstable();
            got.sort_unstable();
            if want != got {
                return Err(bad(format!(
                    "it lists {} certificates; the authority revoked {} under this CA (exactly those must be listed)",
                    got.len(),
                    want.len()
                )));
            }
            let audit = AuditEvent {
                at: now,
                actor: format!("station:{}", station.name),
                action: "factory.crl".into(),
                target: format!("batch:{batch}"),
                detail: format!("number={} revoked={} next_update={}", checked.number, got.len(), checked.next_update),
            };
            let art = iotpki_store::Artifact {
                kind: format!("crl/{ca}"),
                version: checked.number,
                body: der.to_vec(),
                published_at: now,
            };
            self.store.publish_artifact(art, audit)?;
            Ok(checked.number)
        })();
        self.audit_refusal(&r, || caller.actor(), None, "refuse.factory-crl");
        r
    }

    /// The latest CRL a station uploaded for its delegated CA: `rest` is
    /// `STATION/BATCH.crl` (the path after `/crl/delegated/`).
    pub fn delegated_crl(&self, rest: &str) -> Result<Vec<u8>, AuthorityError> {
        let not_found = || AuthorityError::not_found(format!("no delegated CA CRL at {rest:?}"));
        let (station, batch) = rest.strip_suffix(".crl").and_then(|r| r.split_once('/')).ok_or_else(not_found)?;
        check_name("station", station).map_err(|_| not_found())?;
        check_name("batch", batch).map_err(|_| not_found())?;
        let a = self.store.artifact(&format!("crl/delegated:{station}:{batch}"))?.ok_or_else(|| {
            AuthorityError::not_found(format!(
                "station {station} has uploaded no CRL for batch {batch} yet (it does at each factory sync)"
            ))
        })?;
        Ok(a.body)
    }

    /// A station uploads its production record for `batch` (the entries after
    /// the last sync). The chain must continue the synced one and every entry
    /// carry the station's signature; every certificate must come from the
    /// station's delegated CA for this batch, for the entry's serial, inside the
    /// batch's namespace. A forged upload is refused whole. Then every
    /// certificate is recorded: births within the batch's rights, the rest
    /// flagged (off the allowlist, a clone, beyond the quota) and revoked.
    pub fn sync(&self, caller: &Caller, batch: &str, record: &str) -> Result<SyncOutcome, AuthorityError> {
        let r = caller.station().and_then(|st| self.sync_inner(st, batch, record));
        self.audit_refusal(&r, || caller.actor(), None, "refuse.sync");
        r
    }

    fn sync_inner(&self, st: &Station, batch: &str, record: &str) -> Result<SyncOutcome, AuthorityError> {
        let (station, id) = (&st.record, &st.id);
        let entries = iotpki_core::record::parse(record)?;
        let (first, last) = match (entries.first(), entries.last()) {
            (Some(f), Some(l)) => (f.clone(), l.clone()),
            _ => return Err(AuthorityError::malformed("the production record upload is empty".into())),
        };
        let (synced, head) = self.store.sync_state(&station.name, batch)?;
        if first.seq != synced + 1 {
            return Err(StoreError::SyncOutOfOrder { expected_seq: synced + 1, got_seq: first.seq }.into());
        }
        iotpki_core::record::verify(&entries, synced + 1, &head, &id.cert.tbs_certificate.subject_public_key_info)
            .map_err(|e| AuthorityError::forbidden(e.to_string()))?;
        let delegate_serial = self.store.delegation(&station.name, batch)?.ok_or_else(|| {
            AuthorityError::forbidden(format!("station {} has no delegated CA for batch {batch}", station.name))
        })?;
        let delegate = self
            .store
            .certificate(&delegate_serial)?
            .ok_or_else(|| AuthorityError::Config(format!("delegated CA {delegate_serial} is not in the store")))?;
        let delegate = profile::cert_info(&delegate.der)?;
        let namespace = name::batch_namespace(&self.cfg.organization, batch)?;
        let now = self.clock.now();
        let mut out = Vec::with_capacity(entries.len());
        for e in &entries {
            let bad = |m: String| AuthorityError::forbidden(format!("production record entry {}: {m}", e.seq));
            if e.batch != batch {
                return Err(bad(format!("names batch {}, not {batch}", e.batch)));
            }
            let der = e.cert_der()?;
            let info = profile::cert_info(&der).map_err(|x| bad(x.to_string()))?;
            let tbs = &info.cert.tbs_certificate;
            let tbs_der = tbs.to_der().map_err(|x| bad(x.to_string()))?;
            let sig = info.cert.signature.as_bytes().ok_or_else(|| bad("malformed signature".into()))?;
            if tbs.issuer != delegate.cert.tbs_certificate.subject
                || keys::verify(
                    &delegate.cert.tbs_certificate.subject_public_key_info,
                    &info.cert.signature_algorithm,
                    &tbs_der,
                    sig,
                )
                .is_err()
            {
                return Err(bad("the certificate was not issued by the station's delegated CA for this batch".into()));
            }
            let serials = name::serial_numbers(&tbs.subject);
            let within =
                tbs.subject.0.len() > namespace.0.len() && tbs.subject.0[..namespace.0.len()] == namespace.0[..];
            if serials != vec![e.serial.clone()] || !within {
                return Err(bad(format!("the certificate does not name device {} inside batch {batch}", e.serial)));
            }
            // Outside the serials signed into the delegation: flagged, whatever the batch's allowlist says.
            let outside_delegation = !name::permitted_by(&delegate.cert, &tbs.subject)?;
            // A key in another encoding than its one canonical form (say an EC point compressed)
            // hashes to no key the store compares: a blocked key or another device's would slip
            // through. Recorded, flagged non-canonical-key and revoked, never a birth.
            let key_not_canonical = profile::key_canonical(&info.cert).is_err();
            out.push(SyncEntry {
                outside_delegation,
                key_not_canonical,
                device_serial: e.serial.clone(),
                cert: CertRecord {
                    serial: info.serial.clone(),
                    ca: format!("delegated:{}:{batch}", station.name),
                    profile: Profile::Device.name().into(),
                    subject: name::to_rfc4514(&tbs.subject),
                    device_serial: Some(e.serial.clone()),
                    not_before: info.not_before,
                    not_after: info.not_after,
                    issued_at: e.at,
                    spki_sha256: info.spki_sha256.clone(),
                    replaces: None,
                    replaced_by: None,
                    template: None,
                    status: CertStatus::Good,
                    der,
                },
            });
        }
        let audit = AuditEvent {
            at: now,
            actor: format!("station:{}", station.name),
            action: "factory.sync".into(),
            target: format!("batch:{batch}"),
            detail: format!("entries={}..={}", first.seq, last.seq),
        };
        Ok(self.store.apply_sync(SyncUpload {
            station: station.name.clone(),
            batch: batch.into(),
            from_seq: first.seq,
            from_head: head,
            to_seq: last.seq,
            to_head: last.hash.clone(),
            entries: out,
            now,
            audit,
        })?)
    }

    /// Where `station`'s record for `batch` was synced up to, for the station itself.
    pub fn sync_state(&self, caller: &Caller, batch: &str) -> Result<(u64, String), AuthorityError> {
        let station = &caller.station()?.record;
        Ok(self.store.sync_state(&station.name, batch)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlists() {
        assert_eq!(parse_allowlist("serial\nA-1\n\n# c\nA-2,extra\n\"A-3\"\n").unwrap(), vec!["A-1", "A-2", "A-3"]);
        assert!(parse_allowlist("A-1\nA-1\n").unwrap_err().to_string().contains("twice"));
        assert!(parse_allowlist("bad_serial\n").unwrap_err().to_string().contains("line 1"));
        assert!(parse_allowlist("\n# only comments\n").is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("batch id", "B-2026.11_a").is_ok());
        assert!(check_name("batch id", "").is_err());
        assert!(check_name("batch id", "a/b").is_err());
    }
}
