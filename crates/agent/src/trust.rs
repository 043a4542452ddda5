//! What the device trusts beyond its identity, and how it changes: the trust
//! bundle, the ownership voucher, and CRLs of the CAs it knows. Each can come
//! from the server, a relay or any intermediary (`iotpki agent apply FILE`):
//! none of them is trusted, the signatures are.
//!
//! - A bundle replaces the installed one only if [`bundle::verify_update`]
//!   accepts it (threshold of distinct keys named in the installed bundle and
//!   in its own, a higher version, not expired). The first one comes from the
//!   factory ([`apply`] with `initial`), or, on a device with no bundle whose
//!   voucher names an owner, from that owner: signed with the owner's key
//!   ([`bundle::verify_owned`]), as after a hand-over.
//! - A voucher is verified from the manufacturing CA in the device's birth
//!   chain to its last owner ([`voucher::verify`]), for this device's serial
//!   and birth certificate, and must extend the installed one
//!   ([`voucher::check_extends`]: the installed entries octet for octet, then
//!   new ones, times not going back), so a past owner's fork from an older copy
//!   and a rollback are refused. The owner it names is what commissioning then trusts.
//! - A CRL must be signed by a CA the device knows, current (a stale one past
//!   its nextUpdate is refused), and not older than the installed one.
//!
//! Every refusal leaves the state as it was; every change is written with
//! [`state::write_atomic`] (temporary file, fsync, rename, fsync of the directory).

use std::path::Path;

use iotpki_core::bundle::{self, Bundle};
use iotpki_core::name::DeviceSerial;
use iotpki_core::{crl, pem, voucher};
use spki::der::{Decode, Encode};

use crate::clock::now;
use crate::{state, AgentError};

/// The installed trust bundle.
pub const BUNDLE_FILE: &str = "bundle.cbor";
/// The installed ownership voucher.
pub const VOUCHER_FILE: &str = "voucher.cbor";
/// Where a hand-over sets aside the previous owner's trust bundle (kept to
/// be looked at, never used).
pub const PREVIOUS_OWNER_BUNDLE_FILE: &str = "bundle.previous-owner.cbor";
/// The roots bundle updates dropped (PEM): never trusted again.
pub const RETIRED_ROOTS_FILE: &str = "retired-roots.pem";

/// The roots a bundle update dropped: retired, whatever else names them.
pub fn retired_roots(dir: &Path) -> Result<Vec<Vec<u8>>, AgentError> {
    let p = dir.join(RETIRED_ROOTS_FILE);
    match std::fs::read_to_string(&p) {
        Ok(t) => pem::decode_all("CERTIFICATE", &t).map_err(|e| AgentError::State(format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(AgentError::io(&p, e)),
    }
}

/// Allowed clock difference for "not in the future" checks.
const SKEW: i64 = 300;

/// What an apply did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A trust bundle of this version is installed now.
    Bundle {
        /// Its version.
        version: u64,
    },
    /// A voucher with this many entries is installed; it names this owner key (SHA-256 of its SPKI).
    Voucher {
        /// Entries.
        entries: usize,
        /// The owner's key fingerprint.
        owner: String,
    },
    /// A CRL with this number from this issuer is installed; `own_revoked` if it lists our certificate.
    Crl {
        /// The issuer's subject.
        issuer: String,
        /// Its cRLNumber.
        number: u64,
        /// Whether the device's current certificate is on it.
        own_revoked: bool,
    },
    /// The same thing is installed already: nothing changed.
    Unchanged(String),
}

/// What kind of thing some octets are.
fn kind(bytes: &[u8]) -> &'static str {
    match bytes {
        [0xd8, 0x62, ..] => "bundle",
        [b, ..] if (0x80..=0x9b).contains(b) => "voucher",
        [0x30, ..] => "crl",
        _ if bytes.starts_with(b"-----BEGIN X509 CRL-----") => "crl-pem",
        _ => "unknown",
    }
}

/// Apply a bundle, voucher or CRL (detected from its octets) to the device in `dir`.
pub fn apply(dir: &Path, bytes: &[u8], initial: bool) -> Result<Applied, AgentError> {
    match kind(bytes) {
        "bundle" => apply_bundle(dir, bytes, initial),
        "voucher" => apply_voucher(dir, bytes),
        "crl" => apply_crl(dir, bytes),
        "crl-pem" => {
            let text = String::from_utf8_lossy(bytes);
            let der = pem::decode_one("X509 CRL", &text).map_err(|e| AgentError::Untrusted(format!("CRL: {e}")))?;
            apply_crl(dir, &der)
        }
        _ => Err(AgentError::Usage(
            "not a trust bundle (COSE_Sign), an ownership voucher (CBOR array) or a CRL (DER or PEM)".into(),
        )),
    }
}

/// The installed bundle, if any.
pub fn installed_bundle(dir: &Path) -> Result<Option<Bundle>, AgentError> {
    let p = dir.join(BUNDLE_FILE);
    match std::fs::read(&p) {
        Ok(b) => Bundle::decode(&b).map(Some).map_err(|e| AgentError::State(format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::io(&p, e)),
    }
}

/// The host (lowercase, IPv6 without brackets) and `host:port` of an `https://` or `http://` URL.
fn url_host(url: &str) -> Option<(String, String)> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .or_else(|| url.strip_prefix("coaps://"))?;
    let authority = rest.split('/').next()?.to_ascii_lowercase();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?.to_string(),
        None => authority.rsplit_once(':').map_or(authority.as_str(), |(h, _)| h).to_string(),
    };
    (!host.is_empty()).then_some((host, authority))
}

/// The trust bundle's `servers` rule (docs/trust-bundle.md): when the installed
/// bundle names servers, the device talks to a server (EST: renewal,
/// commissioning) only if its URL's host is one of them (or its `host:port` is
/// listed exactly), case-insensitively. No bundle, or an empty list: any server
/// the device is told of (its trust anchors still decide whom it trusts).
pub fn check_server(dir: &Path, server_url: &str) -> Result<(), AgentError> {
    let Some(b) = installed_bundle(dir)? else { return Ok(()) };
    let servers = &b.content().servers;
    if servers.is_empty() {
        return Ok(());
    }
    let (host, authority) =
        url_host(server_url).ok_or_else(|| AgentError::Usage(format!("no host in the server URL {server_url:?}")))?;
    if servers.iter().any(|s| s.eq_ignore_ascii_case(&host) || s.eq_ignore_ascii_case(&authority)) {
        return Ok(());
    }
    Err(AgentError::Untrusted(format!(
        "the trust bundle (version {}) lets this device talk only to {}, not to {host}: use one of those, \
         or install a bundle that names this server",
        b.content().version,
        servers.join(", ")
    )))
}

fn apply_bundle(dir: &Path, bytes: &[u8], initial: bool) -> Result<Applied, AgentError> {
    let refused = |e: bundle::BundleError| AgentError::Untrusted(format!("trust bundle refused: {e}"));
    let installed = installed_bundle(dir)?;
    if let Some(cur) = &installed {
        if cur.encode() == bytes {
            return Ok(Applied::Unchanged(format!("bundle version {} is installed already", cur.content().version)));
        }
    }
    let b = match (&installed, initial) {
        (Some(cur), _) => {
            let b = bundle::verify_update(cur, bytes, now()).map_err(refused)?;
            // The roots it drops are retired, before it is installed: a power
            // cut between the two leaves them retired under the older bundle
            // (trusting less), and applying it again installs it.
            let dropped: Vec<&Vec<u8>> =
                cur.content().anchors.iter().filter(|a| !b.content().anchors.contains(a)).collect();
            if !dropped.is_empty() {
                let mut retired = retired_roots(dir)?;
                retired.extend(dropped.into_iter().filter(|d| !retired.contains(d)).cloned().collect::<Vec<_>>());
                let text: String = retired.iter().map(|r| pem::encode("CERTIFICATE", r)).collect();
                state::write_atomic(dir, RETIRED_ROOTS_FILE, text.as_bytes())?;
            }
            b
        }
        (None, true) => bundle::verify_initial(bytes, now()).map_err(refused)?,
        // Its owner's first: signed with the key its voucher names.
        (None, false) => owners_first_bundle(dir, bytes)?,
    };
    state::write_atomic(dir, BUNDLE_FILE, bytes)?;
    Ok(Applied::Bundle { version: b.content().version })
}

/// The manufacturing CA of the device: the CA in its birth chain that its
/// birth anchor signed (the manufacturer's key in vouchers).
fn manufacturer_cert(birth: &state::BirthCredential) -> Result<Vec<u8>, AgentError> {
    let anchor = pem::decode_one("CERTIFICATE", &birth.anchor_pem).map_err(|e| AgentError::State(e.to_string()))?;
    let anchor = x509_cert::Certificate::from_der(&anchor).map_err(|e| AgentError::State(e.to_string()))?;
    let chain = pem::decode_all("CERTIFICATE", &birth.chain_pem).map_err(|e| AgentError::State(e.to_string()))?;
    for c in chain {
        let cert = x509_cert::Certificate::from_der(&c).map_err(|e| AgentError::State(e.to_string()))?;
        if cert.tbs_certificate.issuer == anchor.tbs_certificate.subject {
            return Ok(c);
        }
    }
    Err(AgentError::State("the birth chain holds no CA under the birth anchor".into()))
}

fn spki_der(cert_der: &[u8]) -> Result<Vec<u8>, AgentError> {
    let c = x509_cert::Certificate::from_der(cert_der).map_err(|e| AgentError::State(e.to_string()))?;
    c.tbs_certificate.subject_public_key_info.to_der().map_err(|e| AgentError::State(e.to_string()))
}

/// The installed voucher, verified again now (but for its expiry, which only
/// bounded when it could be installed): the owner key it names (DER SPKI), if any.
pub fn voucher_owner(dir: &Path) -> Result<Option<Vec<u8>>, AgentError> {
    Ok(installed_voucher(dir)?.map(|v| v.owner_anchor))
}

/// The installed voucher, verified again now as [`voucher_owner`] does.
fn installed_voucher(dir: &Path) -> Result<Option<voucher::Verified>, AgentError> {
    let p = dir.join(VOUCHER_FILE);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AgentError::io(&p, e)),
    };
    verify_voucher(dir, &bytes, voucher::verify_accepted).map(Some)
}

/// The first bundle of the owner the installed voucher names: signed with
/// that owner's key, issued since the voucher's last entry was made
/// ([`bundle::verify_owned`]), and not by a root the device retired.
fn owners_first_bundle(dir: &Path, bytes: &[u8]) -> Result<Bundle, AgentError> {
    let Some(v) = installed_voucher(dir)? else {
        return Err(AgentError::Untrusted(
            "this device has no trust bundle yet and no ownership voucher: the first one is put in at \
             the factory (apply --initial), or, once a voucher names its owner, signed by that owner's \
             root key (iotpki bundle sign --dir)"
                .into(),
        ));
    };
    for r in retired_roots(dir)? {
        if spki_der(&r)? == v.owner_anchor {
            return Err(AgentError::Untrusted(
                "trust bundle refused: the owner key the ownership voucher names is a root this device has retired"
                    .into(),
            ));
        }
    }
    let since = v.entries.last().map_or(i64::MAX, |e| e.created_at);
    bundle::verify_owned(bytes, &v.owner_anchor, since, now())
        .map_err(|e| AgentError::Untrusted(format!("trust bundle refused: {e}")))
}

type VerifyFn = fn(&[u8], &[u8], &DeviceSerial, &[u8], i64) -> Result<voucher::Verified, voucher::VoucherError>;

fn verify_voucher(dir: &Path, bytes: &[u8], verify: VerifyFn) -> Result<voucher::Verified, AgentError> {
    let id = state::load(dir)?;
    let birth = id.birth.as_ref().ok_or_else(|| {
        AgentError::State(
            "this device has no birth certificate: vouchers name devices by their birth certificate".into(),
        )
    })?;
    let birth_der = pem::decode_one("CERTIFICATE", &birth.cert_pem).map_err(|e| AgentError::State(e.to_string()))?;
    let maker = spki_der(&manufacturer_cert(birth)?)?;
    let serial = DeviceSerial::parse(&id.device_serial).map_err(|e| AgentError::State(e.to_string()))?;
    verify(bytes, &maker, &serial, &birth_der, now())
        .map_err(|e| AgentError::Untrusted(format!("ownership voucher refused: {e}")))
}

fn apply_voucher(dir: &Path, bytes: &[u8]) -> Result<Applied, AgentError> {
    let p = dir.join(VOUCHER_FILE);
    // The installed voucher again is nothing to do, whatever its date; a
    // longer one is verified in full below, its last entry valid now.
    let previous_owner = match std::fs::read(&p) {
        Ok(old) => match voucher::check_extends(&old, bytes, now()) {
            Ok(voucher::Extension::Unchanged) => {
                return Ok(Applied::Unchanged("this voucher is installed already".into()))
            }
            Ok(voucher::Extension::Extended { .. }) => Some(
                voucher::Voucher::decode(&old)
                    .map(|v| v.owner().to_vec())
                    .map_err(|e| AgentError::State(format!("the installed voucher: {e}")))?,
            ),
            Err(e) => return Err(AgentError::Untrusted(format!("ownership voucher refused: {e}"))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(AgentError::io(&p, e)),
    };
    let v = verify_voucher(dir, bytes, voucher::verify)?;
    let handed_on = match &previous_owner {
        Some(o) => *o != v.owner_anchor,
        None => check_first_voucher(dir, &v)?,
    };
    // A hand-over: the trust bundle is the previous owner's (its signers, its
    // roots, its servers). It no longer decides anything here; the new owner
    // puts in its own, signed with the key this voucher names
    // (`bundle::verify_owned`), or `apply --initial` as at the factory. Set aside
    // before the voucher is written: a power cut between the two leaves the
    // device without the previous owner's bundle; the roots its updates
    // retired stay retired (`retired_roots`).
    if handed_on && dir.join(BUNDLE_FILE).exists() {
        iotpki_fs::rename_durable(&dir.join(BUNDLE_FILE), &dir.join(PREVIOUS_OWNER_BUNDLE_FILE))?;
    }
    state::write_atomic(dir, VOUCHER_FILE, bytes)?;
    Ok(Applied::Voucher { entries: v.entries.len(), owner: iotpki_core::keys::spki_fingerprint(&v.owner_anchor) })
}

/// A device's first voucher, when it was commissioned already (its
/// operational certificate is not its birth certificate) by an owner other
/// than its manufacturer: the voucher must carry that owner's consent, an
/// entry naming the key of a root the device trusts (its identity's anchor, or
/// its bundle's, none retired), every later entry then signed by that owner.
/// Else the manufacturer, which alone signs a first entry, could hand on a
/// device someone else owns (and the owner its voucher names could then put in
/// its bundle, [`bundle::verify_owned`]). A device only born, or owned by its
/// manufacturer's own PKI, has no other owner to ask: its first voucher is
/// taken on first use. Whether the voucher hands the device on (its last
/// owner is none of those roots): its bundle is then the previous owner's.
fn check_first_voucher(dir: &Path, v: &voucher::Verified) -> Result<bool, AgentError> {
    let id = state::load(dir)?;
    let Some(birth) = &id.birth else { return Ok(false) };
    let anchor = pem::decode_one("CERTIFICATE", &id.anchor_pem).map_err(|e| AgentError::State(e.to_string()))?;
    let maker_root = pem::decode_one("CERTIFICATE", &birth.anchor_pem).map_err(|e| AgentError::State(e.to_string()))?;
    if id.cert_pem == birth.cert_pem || anchor == maker_root {
        return Ok(false);
    }
    let mut owners = Vec::new();
    for root in crate::flow::trusted_roots(dir, &anchor)? {
        owners.push(spki_der(&root)?);
    }
    if v.entries.iter().any(|e| owners.contains(&e.next_owner)) {
        return Ok(!owners.contains(&v.owner_anchor));
    }
    Err(AgentError::Untrusted(format!(
        "ownership voucher refused: this device is commissioned with the owner whose root key is {} and holds no \
         voucher yet; its first voucher must name that owner (the manufacturer's entry handing the device to it), \
         so that only its owner hands it on",
        iotpki_core::keys::spki_fingerprint(&spki_der(&anchor)?)
    )))
}

/// Every CA certificate the device knows: its anchors and the chains of its identities.
fn known_cas(dir: &Path) -> Result<Vec<Vec<u8>>, AgentError> {
    let id = state::load(dir)?;
    let mut pems = vec![id.anchor_pem.clone(), id.chain_pem.clone()];
    if let Some(b) = &id.birth {
        pems.push(b.anchor_pem.clone());
        pems.push(b.chain_pem.clone());
    }
    let mut out = Vec::new();
    for p in pems {
        for c in pem::decode_all("CERTIFICATE", &p).map_err(|e| AgentError::State(e.to_string()))? {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    if let Some(b) = installed_bundle(dir)? {
        for a in &b.content().anchors {
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
    }
    Ok(out)
}

/// Where the CRL of the CA `issuer` is kept: named by the CA's name and key,
/// not its certificate's octets, so that the CA certified again (a root
/// rotation re-certifies the issuing CAs: same name and key, new octets) keeps
/// its CRL number, and an older CRL is still a rollback.
fn crl_file(issuer: &x509_cert::Certificate) -> Result<String, AgentError> {
    let tbs = &issuer.tbs_certificate;
    let mut id = tbs.subject.to_der().map_err(|e| AgentError::State(e.to_string()))?;
    id.extend(tbs.subject_public_key_info.to_der().map_err(|e| AgentError::State(e.to_string()))?);
    Ok(format!("crl-ca-{}.der", &iotpki_core::keys::sha256_hex(&id)[..16]))
}

/// The name an earlier version kept a CA's CRL under (its certificate's octets).
fn legacy_crl_file(issuer_cert: &[u8]) -> String {
    format!("crl-{}.der", &iotpki_core::keys::sha256_hex(issuer_cert)[..16])
}

fn apply_crl(dir: &Path, der: &[u8]) -> Result<Applied, AgentError> {
    // Read without decoding its entries (a CRL may list many): its issuer first.
    let issuer_name = crl::issuer(der).map_err(|e| AgentError::Untrusted(format!("CRL refused: {e}")))?;
    let t = now();
    // The device's own certificate: the one serial it asks the CRL about.
    let id = state::load(dir)?;
    let own: Vec<String> = pem::decode_one("CERTIFICATE", &id.cert_pem)
        .ok()
        .and_then(|c| iotpki_core::profile::cert_info(&c).ok())
        .map(|i| i.serial)
        .into_iter()
        .collect();
    let mut why = format!("no CA this device knows is named {issuer_name}");
    let dp_urls = crl_urls(dir)?;
    for ca in known_cas(dir)? {
        let Ok(c) = x509_cert::Certificate::from_der(&ca) else { continue };
        if c.tbs_certificate.subject != issuer_name {
            continue;
        }
        match crl::check_for(der, &ca, t, SKEW, &own) {
            Ok(checked) if !crl::covers(&checked, &dp_urls) => {
                // A shard of a partitioned CRL that is not the one our
                // certificates name: it says nothing about them.
                why = format!(
                    "it is the partitioned CRL {}, which covers none of this device's certificates",
                    checked.scope.unwrap_or_default().join(", ")
                );
            }
            Ok(checked) => {
                let file = crl_file(&c)?;
                let installed = match std::fs::read(dir.join(&file)) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::read(dir.join(legacy_crl_file(&ca))),
                    r => r,
                };
                if let Ok(old) = installed {
                    if old == der {
                        return Ok(Applied::Unchanged(format!(
                            "CRL {} of {issuer_name} is installed already",
                            checked.number
                        )));
                    }
                    // The installed one may have gone stale since; its number still counts.
                    if let Ok(prev) = crl::number(&old) {
                        if checked.number <= prev {
                            return Err(AgentError::Untrusted(format!(
                                "CRL refused: number {} is not newer than the installed {prev} (a rollback)",
                                checked.number
                            )));
                        }
                    }
                }
                state::write_atomic(dir, &file, der)?;
                return Ok(Applied::Crl {
                    issuer: issuer_name.to_string(),
                    number: checked.number,
                    own_revoked: !checked.revoked.is_empty(),
                });
            }
            Err(e) => why = e.to_string(),
        }
    }
    Err(AgentError::Untrusted(format!("CRL refused: {why}")))
}

/// GET `url` (http:// or https://) and return the body of a 200 answer;
/// `Ok(None)` for a 404 (nothing published). Over https the server must
/// chain to one of `anchors`. Bodies are bounded.
pub async fn fetch(url: &str, anchors: &[Vec<u8>]) -> Result<Option<Vec<u8>>, AgentError> {
    const MAX: usize = crl::MAX_CRL_BYTES;
    let (status, body) = exchange("GET", url, None, Vec::new(), anchors, MAX).await?;
    answer(status, body, MAX)
}

/// `method` `url` (http:// or https://) with `body`: the status and at most `max`
/// octets of the answer, within 30 s. Over https the server must chain to one of `anchors`.
pub async fn exchange(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
    anchors: &[Vec<u8>],
    max: usize,
) -> Result<(u16, Vec<u8>), AgentError> {
    if url.starts_with("https://") {
        let (base, path) = split_url(url, "https://")?;
        let c = crate::est_client::EstClient::new(&base, None, anchors, None)?.with_max_answer(max);
        return c.request(method, &path, content_type, body).await;
    }
    let (base, path) = split_url(url, "http://")?;
    let host = base.trim_start_matches("http://").to_string();
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(host.as_str())
            .await
            .map_err(|e| AgentError::Connect(format!("{host}: {e}")))?;
        let req = crate::http1::Request { method, path: &path, host: &host, headers: &[], content_type, body: &body };
        match crate::http1::Connection::new(tcp).send(&req, max).await {
            Ok(r) => Ok((r.status, r.body)),
            Err(e @ crate::http1::Error::Request(_)) => Err(AgentError::Usage(e.to_string())),
            Err(e @ (crate::http1::Error::TooLarge { .. } | crate::http1::Error::Malformed(_))) => {
                Err(AgentError::BadAnswer(format!("{host}: {e}")))
            }
            Err(e) => Err(AgentError::Connect(format!("{host}: {e}"))),
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), fut)
        .await
        .map_err(|_| AgentError::Connect(format!("{host}: no answer within 30 s")))?
}

fn answer(status: u16, body: Vec<u8>, max: usize) -> Result<Option<Vec<u8>>, AgentError> {
    match status {
        200 if body.len() <= max => Ok(Some(body)),
        200 => Err(AgentError::BadAnswer(format!("answer of {} octets is too large", body.len()))),
        404 => Ok(None),
        s => Err(AgentError::Refused {
            status: s,
            reason: String::from_utf8_lossy(&body).lines().next().unwrap_or_default().into(),
        }),
    }
}

fn split_url(url: &str, scheme: &str) -> Result<(String, String), AgentError> {
    let rest =
        url.strip_prefix(scheme).ok_or_else(|| AgentError::Usage(format!("{url:?} must start with {scheme}")))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(AgentError::Usage(format!("no host in {url:?}")));
    }
    Ok((format!("{scheme}{host}"), path.to_string()))
}

/// The paths of the CRLs that cover the device's certificates (from their
/// cRLDistributionPoints), e.g. `/crl/operational.crl` or, for a partitioned
/// CRL, the certificate's shard `/crl/operational/64/7.crl`.
fn crl_paths(dir: &Path) -> Result<Vec<String>, AgentError> {
    let mut out = Vec::new();
    for url in crl_urls(dir)? {
        if let Ok((_, path)) = split_url(&url, "http://") {
            if !out.contains(&path) {
                out.push(path);
            }
        }
    }
    Ok(out)
}

/// The cRLDistributionPoints URLs of the device's certificates and their chains.
fn crl_urls(dir: &Path) -> Result<Vec<String>, AgentError> {
    use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
    use x509_cert::ext::pkix::CrlDistributionPoints;
    let id = state::load(dir)?;
    let mut pems = vec![id.cert_pem.clone(), id.chain_pem.clone()];
    if let Some(b) = &id.birth {
        pems.push(b.cert_pem.clone());
    }
    let mut out = Vec::new();
    for p in pems {
        for der in pem::decode_all("CERTIFICATE", &p).map_err(|e| AgentError::State(e.to_string()))? {
            let Ok(c) = x509_cert::Certificate::from_der(&der) else { continue };
            for e in c.tbs_certificate.extensions.as_deref().unwrap_or_default() {
                if e.extn_id != const_oid_crl_dp() {
                    continue;
                }
                let Ok(dps) = CrlDistributionPoints::from_der(e.extn_value.as_bytes()) else { continue };
                for dp in dps.0 {
                    if let Some(DistributionPointName::FullName(names)) = dp.distribution_point {
                        for n in names {
                            if let GeneralName::UniformResourceIdentifier(u) = n {
                                let u = u.to_string();
                                if !out.contains(&u) {
                                    out.push(u);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

fn const_oid_crl_dp() -> iotpki_core::asn1::der::asn1::ObjectIdentifier {
    // id-ce-cRLDistributionPoints (RFC 5280 4.2.1.13)
    iotpki_core::asn1::der::asn1::ObjectIdentifier::new_unwrap("2.5.29.31")
}

/// Fetch what is published at `base` (the server, its plain-HTTP listener, or a
/// relay): the trust bundle, this device's voucher, the CRLs of its
/// certificates; apply each. One result per thing found (404s are skipped).
pub async fn fetch_and_apply(dir: &Path, base: &str) -> Result<Vec<(String, Result<Applied, AgentError>)>, AgentError> {
    let id = state::load(dir)?;
    let base = base.trim_end_matches('/');
    let anchor = pem::decode_one("CERTIFICATE", &id.anchor_pem).map_err(|e| AgentError::State(e.to_string()))?;
    let anchors = crate::flow::trusted_roots(dir, &anchor)?;
    // The voucher before the bundle: a hand-over it brings sets the previous
    // owner's bundle aside, and the new owner's first bundle is then judged by
    // the owner the voucher names.
    let mut paths =
        vec![format!("/.well-known/iotpki/voucher/{}", id.device_serial), "/.well-known/iotpki/bundle".to_string()];
    paths.extend(crl_paths(dir)?);
    let mut out = Vec::new();
    for p in paths {
        match fetch(&format!("{base}{p}"), &anchors).await {
            Ok(None) => {}
            Ok(Some(body)) => {
                let r = apply(dir, &body, false);
                out.push((p, r));
            }
            Err(e) => out.push((p, Err(e))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_hosts_are_read_from_urls() {
        let h = |u: &str| url_host(u).map(|(h, a)| format!("{h} {a}"));
        assert_eq!(h("https://EST.example.com:8443").as_deref(), Some("est.example.com est.example.com:8443"));
        assert_eq!(h("https://est.example.com/x").as_deref(), Some("est.example.com est.example.com"));
        assert_eq!(h("https://[::1]:443").as_deref(), Some("::1 [::1]:443"));
        assert_eq!(h("http://127.0.0.1:80").as_deref(), Some("127.0.0.1 127.0.0.1:80"));
        assert_eq!(h("ftp://x"), None);
        assert_eq!(h("https://:443"), None);
    }

    #[test]
    fn kinds_are_told_apart() {
        assert_eq!(kind(&[0xd8, 0x62, 0x84]), "bundle");
        assert_eq!(kind(&[0x82, 0x58]), "voucher");
        assert_eq!(kind(&[0x30, 0x82]), "crl");
        assert_eq!(kind(b"-----BEGIN X509 CRL-----\n"), "crl-pem");
        assert_eq!(kind(b"hello"), "unknown");
        assert_eq!(kind(&[]), "unknown");
    }
}
