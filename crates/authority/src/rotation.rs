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
use iotpki_core::profile::{Issuer, Profile};
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
    for ca in cfg.ca.iter_mut().filter(|c| c.role == CaRole::Issuing) {
        let old_der = read_one(dir, &ca.cert)?;
        let old = x509_cert::Certificate::from_der(&old_der).map_err(|e| bad(format!("CA {}: {e}", ca.name)))?;
        let tbs = &old.tbs_certificate;
        let not_after = iotpki_core::time::unix(&tbs.validity.not_after);
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
        let rel = PathBuf::from(format!("ca/{}-{generation}.crt", ca.name));
        writes.push((rel.clone(), pem::encode("CERTIFICATE", &made.der).into_bytes()));
        swapped.push((old_der, made.der.clone()));
        ca.older_certs.push(ca.cert.clone());
        ca.cert = rel;
        recertified.push(ca.name.clone());
    }

    // The server's TLS chain: the leaf, then its issuer's new certificate.
    let chain_path = keyfile::resolve(dir, &cfg.server.cert);
    let chain_text = std::fs::read_to_string(&chain_path).map_err(|e| AuthorityError::io(&chain_path, e))?;
    let chain =
        pem::decode_all("CERTIFICATE", &chain_text).map_err(|e| bad(format!("{}: {e}", chain_path.display())))?;
    let new_chain: String = chain
        .iter()
        .map(|c| swapped.iter().find(|(o, _)| o == c).map(|(_, n)| n).unwrap_or(c))
        .map(|c| pem::encode("CERTIFICATE", c))
        .collect();

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
    keyfile::replace_public(&chain_path, new_chain.as_bytes())?;
    keyfile::replace_public(&dir.join(CONFIG_FILE), cfg.to_toml()?.as_bytes())?;
    Ok(Rotated { root: root_name, root_cert: dir.join(root_rel), recertified })
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
