//! Root rotation: `iotpki ca rotate` and `iotpki ca retire`.
//!
//! `rotate` makes a new root key and certificate and certifies every issuing
//! CA again under it, with the same key, subject and key identifier. So every
//! certificate already issued chains to the new root as well as to the old
//! one (through either certificate of its issuer), and no device has to be
//! re-issued anything to stay valid. The old root becomes `retiring`: still
//! trusted by the authority (client certificates whose chains end there), and
//! the server's TLS chain switches to the new certificates.
//!
//! The devices are told by trust bundle: first one that names both roots
//! (published before the rotation, so that no device loses contact when the
//! server switches), then, after they have renewed (and so learned the new
//! chain), one that names only the new root; `retire` then drops the old root.
//!
//! The new root may be of another key type than the old ([`rotate_to`]): a fleet
//! moves from a P-256 root to an ML-DSA one by the same steps. The issuing CAs
//! keep their keys (now certified by an ML-DSA signature), and devices may
//! renew into ML-DSA keys of their own (`iotpki agent renew --key-type`).
//!
//! The config is written last and atomically: a failure before leaves the
//! authority as it was.

use std::path::{Path, PathBuf};

use der::Decode;
use iotpki_core::keys::{self, KeyType, Signer, SoftKey};
use iotpki_core::name::NameBuilder;
use iotpki_core::pem;
use iotpki_core::profile::{self, Issuer, Profile};
use iotpki_store::{AuditEvent, Issuance};
use spki::der;
use x509_cert::ext::pkix::BasicConstraints;

use crate::config::{CaRole, Config, CONFIG_FILE};
use crate::init::{make_for, Revocation, YEAR};
use crate::{keyfile, open_store, AuthorityError, Passphrase};
use iotpki_core::clock::Clock;

/// What `rotate` made.
#[derive(Clone, Debug)]
pub struct Rotated {
    /// The new root's name in the config.
    pub root: String,
    /// Its certificate file.
    pub root_cert: PathBuf,
    /// The issuing CAs certified again.
    pub recertified: Vec<String>,
    /// With [`RotateOptions::new_issuing_keys`]: each issuing CA and the
    /// successor that issues in its place from now on, with a key of the new type.
    pub successors: Vec<(String, String)>,
}

/// How [`rotate_with`] rotates.
#[derive(Clone, Debug, Default)]
pub struct RotateOptions {
    /// The new root's key type (by default the authority's configured one).
    pub key_type: Option<KeyType>,
    /// Give every issuing CA a successor with a new key of the new root's
    /// type (and the server a new TLS key and certificate from its CA's
    /// successor), instead of only certifying the same keys again: what a
    /// move to ML-DSA needs, since a P-256 issuing key would still sign every
    /// certificate. The old issuing CAs stay, certified again under the new
    /// root: they sign the CRLs and OCSP answers of what they issued, and
    /// their certificates renew and commission into their successors.
    pub new_issuing_keys: bool,
}

fn bad(m: impl Into<String>) -> AuthorityError {
    AuthorityError::Config(m.into())
}

/// The profile an issuing CA certificate was made with (by its path length).
fn profile_of(cert: &x509_cert::Certificate) -> Profile {
    let bc = cert
        .tbs_certificate
        .extensions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.extn_id == <BasicConstraints as der::oid::AssociatedOid>::OID)
        .and_then(|e| BasicConstraints::from_der(e.extn_value.as_bytes()).ok());
    match bc.and_then(|b| b.path_len_constraint) {
        Some(1) => Profile::DelegatingCa,
        _ => Profile::IssuingCa,
    }
}

fn read_one(dir: &Path, rel: &Path) -> Result<Vec<u8>, AuthorityError> {
    let p = keyfile::resolve(dir, rel);
    let text = std::fs::read_to_string(&p).map_err(|e| AuthorityError::io(&p, e))?;
    pem::decode_one("CERTIFICATE", &text).map_err(|e| bad(format!("{}: {e}", p.display())))
}

/// Make a new root and certify every issuing CA again under it (see the module doc).
pub fn rotate(dir: &Path, pass: &Passphrase, clock: &dyn Clock, actor: &str) -> Result<Rotated, AuthorityError> {
    rotate_to(dir, pass, clock, actor, None)
}

/// [`rotate`], with a new root of key type `key_type` (by default the
/// authority's configured key type, that of its first root).
pub fn rotate_to(
    dir: &Path,
    pass: &Passphrase,
    clock: &dyn Clock,
    actor: &str,
    key_type: Option<KeyType>,
) -> Result<Rotated, AuthorityError> {
    rotate_with(dir, pass, clock, actor, &RotateOptions { key_type, new_issuing_keys: false })
}

/// [`rotate`], as `opts` says.
pub fn rotate_with(
    dir: &Path,
    pass: &Passphrase,
    clock: &dyn Clock,
    actor: &str,
    opts: &RotateOptions,
) -> Result<Rotated, AuthorityError> {
    let key_type = opts.key_type;
    let mut cfg = Config::load(dir)?;
    if cfg.ca.iter().any(|c| c.role == CaRole::Retiring) {
        return Err(bad("a previous root is still retiring: run `iotpki ca retire` first (once devices have moved)"));
    }
    if cfg.hsm.is_some() {
        return Err(bad("rotating a root held in a PKCS#11 token is not supported yet; rotate with key files"));
    }
    let store = open_store(dir, &cfg)?;
    let now = clock.now();
    let generation = cfg.ca.iter().filter(|c| c.name.starts_with("root")).count() + 1;
    let root_name = format!("root-{generation}");
    let kt = match key_type {
        Some(kt) => kt,
        None => KeyType::from_name(&cfg.key_type)?,
    };
    let org = cfg.organization.clone();
    if opts.new_issuing_keys && kt.is_ml_dsa() && cfg.server.coaps_listen.is_some() {
        return Err(bad(format!(
            "the server would get a {kt} TLS key, and DTLS has no ML-DSA signatures: `serve` would refuse its \
             coaps listener (server.coaps_listen). Remove it first, or rotate without --new-issuing-keys"
        )));
    }

    // The new root.
    let key = SoftKey::generate(kt)?;
    let subject =
        NameBuilder::default().organization(&org)?.common_name(&format!("{org} Root CA {generation}"))?.build();
    let spki =
        spki::SubjectPublicKeyInfoOwned::from_der(key.public_key_der()).map_err(|e| bad(format!("public key: {e}")))?;
    let kid = keys::key_identifier(&spki);
    let end = now + 25 * YEAR;
    let issuer = Issuer { subject: &subject, key_id: &kid, not_after: end, signer: &key };
    let mut records = Vec::new();
    let root =
        make_for(Profile::Root, subject.clone(), spki, now, end, vec![], &issuer, &root_name, None, &mut records)?;
    // The CA certificates under the new root name its ARL (published below).
    let revocation = cfg.server.public_http_url.clone();
    let revocation = revocation.as_deref().map(|base| Revocation { base, shards: None });

    // Every issuing CA again, same key and subject, under the new root.
    let mut writes: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let mut recertified = Vec::new();
    let mut swapped = Vec::new();
    let mut successors: Vec<(String, Vec<u8>, Successor)> = Vec::new();
    for ca in cfg.ca.iter_mut().filter(|c| c.role == CaRole::Issuing) {
        let old_der = read_one(dir, &ca.cert)?;
        let old = x509_cert::Certificate::from_der(&old_der).map_err(|e| bad(format!("CA {}: {e}", ca.name)))?;
        let tbs = &old.tbs_certificate;
        let mut not_after = iotpki_core::time::unix(&tbs.validity.not_after);
        if opts.new_issuing_keys || ca.successor.is_some() {
            // A successor issues in its place: under the new root, the old key is
            // trusted only as long as a good certificate it issued lives (at least a
            // day, for its CRLs), not for the rest of its own 20 years.
            let needed = store.latest_not_after(&ca.name)?.unwrap_or(now).max(now + 86_400);
            not_after = not_after.min(needed);
        }
        let made = make_for(
            profile_of(&old),
            tbs.subject.clone(),
            tbs.subject_public_key_info.clone(),
            now,
            not_after,
            vec![],
            &issuer,
            &root_name,
            revocation,
            &mut records,
        )?;
        // (With new issuing keys, `NAME-GENERATION` is the successor's name, and its file's.)
        let rel = match opts.new_issuing_keys {
            false => PathBuf::from(format!("ca/{}-{generation}.crt", ca.name)),
            true => PathBuf::from(format!("ca/{}-under-{root_name}.crt", ca.name)),
        };
        writes.push((rel.clone(), pem::encode("CERTIFICATE", &made.der).into_bytes()));
        swapped.push((old_der.clone(), made.der.clone()));
        ca.older_certs.push(ca.cert.clone());
        ca.cert = rel;
        recertified.push(ca.name.clone());
        if opts.new_issuing_keys && ca.successor.is_none() {
            let next =
                successor(ca, &old, &org, generation, kt, now, end, &issuer, &root_name, revocation, &mut records)?;
            ca.successor = Some(next.config.name.clone());
            successors.push((ca.name.clone(), old_der, next));
        }
    }
    for (old_name, _, next) in &successors {
        if cfg.ca.iter().any(|c| c.name == next.config.name) {
            return Err(bad(format!(
                "CA {old_name}: its successor would be named {}, which the config has already",
                next.config.name
            )));
        }
        for l in cfg.label.iter_mut().filter(|l| &l.ca == old_name) {
            l.ca = next.config.name.clone();
        }
    }

    // The server's TLS chain: the leaf, then its issuer's new certificate.
    let chain_path = keyfile::resolve(dir, &cfg.server.cert);
    let chain_text = std::fs::read_to_string(&chain_path).map_err(|e| AuthorityError::io(&chain_path, e))?;
    let chain =
        pem::decode_all("CERTIFICATE", &chain_text).map_err(|e| bad(format!("{}: {e}", chain_path.display())))?;
    let mut new_chain: String = chain
        .iter()
        .map(|c| swapped.iter().find(|(o, _)| o == c).map(|(_, n)| n).unwrap_or(c))
        .map(|c| pem::encode("CERTIFICATE", c))
        .collect();
    // With new issuing keys, the server gets a new key of the new type and a
    // certificate from its CA's successor (same subject and names), in new
    // files that the config names last: a failure before changes nothing.
    let mut server_key = None;
    if let (Some(leaf), Some(ca_der)) = (chain.first(), chain.get(1)) {
        if let Some((_, _, next)) = successors.iter().find(|(_, o, _)| o == ca_der) {
            let leaf = x509_cert::Certificate::from_der(leaf).map_err(|e| bad(format!("server certificate: {e}")))?;
            let key = SoftKey::generate(kt)?;
            let spki = spki::SubjectPublicKeyInfoOwned::from_der(key.public_key_der())
                .map_err(|e| bad(format!("public key: {e}")))?;
            let next_issuer = Issuer {
                subject: &next.made.name,
                key_id: &next.made.kid,
                not_after: next.made.not_after,
                signer: &next.key,
            };
            let urls =
                cfg.server.public_http_url.as_deref().map(|base| Revocation { base, shards: next.config.crl_shards });
            let made = make_for(
                Profile::Server,
                leaf.tbs_certificate.subject.clone(),
                spki,
                now,
                (now + YEAR).min(next.made.not_after),
                crate::servers::san_names(&leaf)?,
                &next_issuer,
                &next.config.name,
                urls,
                &mut records,
            )?;
            new_chain =
                format!("{}{}", pem::encode("CERTIFICATE", &made.der), pem::encode("CERTIFICATE", &next.made.der));
            server_key = Some(key);
        }
    }

    for c in cfg.ca.iter_mut() {
        if c.role == CaRole::Root {
            c.role = CaRole::Retiring;
        }
    }
    let root_rel = PathBuf::from(format!("ca/{root_name}.crt"));
    let key_rel = PathBuf::from(format!("ca/{root_name}.key"));
    keyfile::write_encrypted(&dir.join(&key_rel), &key, pass)?;
    keyfile::write_public(&dir.join(&root_rel), pem::encode("CERTIFICATE", &root.der).as_bytes())?;
    for (rel, bytes) in &writes {
        keyfile::write_public(&dir.join(rel), bytes)?;
    }
    for (_, _, next) in &successors {
        if let Some(key_rel) = &next.config.key {
            keyfile::write_encrypted(&dir.join(key_rel), &next.key, pass)?;
        }
        keyfile::write_public(&dir.join(&next.config.cert), pem::encode("CERTIFICATE", &next.made.der).as_bytes())?;
    }
    cfg.ca.insert(
        0,
        crate::config::CaConfig {
            name: root_name.clone(),
            cert: root_rel.clone(),
            key: Some(key_rel),
            key_uri: None,
            role: CaRole::Root,
            older_certs: vec![],
            crl_shards: None,
            successor: None,
        },
    );
    // Recorded before anything uses them: the store knows every certificate.
    for (rec, target) in records {
        store.record_issuance(Issuance {
            audit: AuditEvent {
                at: now,
                actor: actor.into(),
                action: "ca.rotate".into(),
                target,
                detail: format!("{} {}", rec.profile, rec.subject),
            },
            cert: rec,
            preconditions: vec![],
        })?;
    }
    // The new root's first ARL, before anything can point at it.
    crate::revocation::publish_arl(
        store.as_ref(),
        &root_name,
        &issuer,
        now,
        crate::revocation::ARL_VALIDITY_SECS,
        actor,
    )?;
    // A manufacturing CA this authority trusts as a manufacturer (its own line's,
    // for commissioning) is trusted in its successor's key too.
    let trusted: Vec<String> = store.manufacturers()?.into_iter().map(|m| m.spki_sha256).collect();
    for (old_name, old_der, next) in &successors {
        if trusted.contains(&profile::cert_info(old_der)?.spki_sha256) {
            let pem_text = pem::encode("CERTIFICATE", &next.made.der);
            crate::commission::add_manufacturer(store.as_ref(), clock, None, &pem_text, actor).map_err(|e| {
                bad(format!("trusting {}, successor of {old_name}, as a manufacturer: {e}", next.config.name))
            })?;
        }
    }
    match server_key {
        Some(key) => {
            let (cert_rel, key_rel) = (
                PathBuf::from(format!("tls/server-{generation}.crt")),
                PathBuf::from(format!("tls/server-{generation}.key")),
            );
            keyfile::write_encrypted(&dir.join(&key_rel), &key, pass)?;
            keyfile::write_public(&dir.join(&cert_rel), new_chain.as_bytes())?;
            cfg.server.cert = cert_rel;
            cfg.server.key = key_rel;
        }
        None => keyfile::replace_public(&chain_path, new_chain.as_bytes())?,
    }
    cfg.ca.extend(successors.iter().map(|(_, _, n)| n.config.clone()));
    keyfile::replace_public(&dir.join(CONFIG_FILE), cfg.to_toml()?.as_bytes())?;
    let successors = successors.into_iter().map(|(o, _, n)| (o, n.config.name)).collect();
    Ok(Rotated { root: root_name, root_cert: dir.join(root_rel), recertified, successors })
}

/// An issuing CA's successor: its key, certificate and config entry.
struct Successor {
    key: SoftKey,
    made: crate::init::Made,
    config: crate::config::CaConfig,
}

/// The successor of issuing CA `ca` (whose certificate is `old`): a new key
/// of type `kt`, the same profile, CRL shards and organization, a common name
/// ending in the rotation's `generation`, certified by `issuer` (the new root).
#[allow(clippy::too_many_arguments)]
fn successor(
    ca: &crate::config::CaConfig,
    old: &x509_cert::Certificate,
    org: &str,
    generation: usize,
    kt: KeyType,
    now: i64,
    root_end: i64,
    issuer: &Issuer<'_>,
    root_name: &str,
    revocation: Option<Revocation<'_>>,
    records: &mut Vec<(iotpki_store::CertRecord, String)>,
) -> Result<Successor, AuthorityError> {
    let cn = iotpki_core::name::attribute(&old.tbs_certificate.subject, crate::commission::COMMON_NAME)
        .unwrap_or_else(|| ca.name.clone());
    let base_cn = strip_generation(&cn, ' ');
    let name = format!("{}-{generation}", strip_generation(&ca.name, '-'));
    let key = SoftKey::generate(kt)?;
    let spki =
        spki::SubjectPublicKeyInfoOwned::from_der(key.public_key_der()).map_err(|e| bad(format!("public key: {e}")))?;
    let subject = NameBuilder::default().organization(org)?.common_name(&format!("{base_cn} {generation}"))?.build();
    let made = make_for(
        profile_of(old),
        subject,
        spki,
        now,
        (now + 20 * YEAR).min(root_end),
        vec![],
        issuer,
        root_name,
        revocation,
        records,
    )?;
    let config = crate::config::CaConfig {
        name: name.clone(),
        cert: PathBuf::from(format!("ca/{name}.crt")),
        key: Some(PathBuf::from(format!("ca/{name}.key"))),
        key_uri: None,
        role: CaRole::Issuing,
        older_certs: vec![],
        crl_shards: ca.crl_shards,
        successor: None,
    };
    Ok(Successor { key, made, config })
}

/// `s` without a trailing `SEP` and number (a generation an earlier rotation added).
fn strip_generation(s: &str, sep: char) -> &str {
    match s.rsplit_once(sep) {
        Some((base, n)) if !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => s,
    }
}

/// Stop trusting the retiring root and the issuing CAs' certificates under it.
pub fn retire(dir: &Path, clock: &dyn Clock, actor: &str) -> Result<Vec<String>, AuthorityError> {
    let mut cfg = Config::load(dir)?;
    let retired: Vec<String> = cfg.ca.iter().filter(|c| c.role == CaRole::Retiring).map(|c| c.name.clone()).collect();
    if retired.is_empty() {
        return Err(bad("no root is retiring (`iotpki ca rotate` makes the current one retire)"));
    }
    let store = open_store(dir, &cfg)?;
    cfg.ca.retain(|c| c.role != CaRole::Retiring);
    for c in cfg.ca.iter_mut() {
        c.older_certs.clear();
    }
    store.append_audit(AuditEvent {
        at: clock.now(),
        actor: actor.into(),
        action: "ca.retire".into(),
        target: retired.join(","),
        detail: "no longer trusted".into(),
    })?;
    keyfile::replace_public(&dir.join(CONFIG_FILE), cfg.to_toml()?.as_bytes())?;
    Ok(retired)
}
