//! Matter device attestation, authority side (docs/matter.md).
//!
//! `iotpki matter paa` makes the Product Attestation Authority: a
//! self-signed P-256 root (Matter core specification 6.2.2.5), its key an
//! encrypted key file that stays locked like the root's. `iotpki matter pai
//! --vendor-id FFF1` makes a Product Attestation Intermediate under it for one
//! vendor id (6.2.2.4), optionally bound to one product id. Both are recorded
//! in the store (audited) and written to `[matter]` in the config, last and
//! atomically, like `iotpki ca rotate`. A batch created with `--profile
//! matter-dac --vendor-id FFF1 --product-id 8000` then gives its stations'
//! births Device Attestation Certificates (6.2.2.3) signed by that PAI, online
//! only (a delegated CA cannot sit under a PAI, whose path length is 0).
//!
//! Matter CAs are key files: an authority whose CA keys live in an HSM is
//! refused (`[matter]` with `[hsm]` is not a valid config).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use iotpki_core::keys::{self, KeyType, Signer, SoftKey};
use iotpki_core::matter::{self as spec, ProductId, VendorId};
use iotpki_core::pem;
use iotpki_core::profile::{self, Issuer, Profile};
use iotpki_store::{AuditEvent, Issuance};
use spki::der::Decode;

use crate::config::{Config, MatterCaConfig, MatterConfig, CONFIG_FILE};
use crate::init::{make_for, YEAR};
use crate::open::CaKey;
use crate::{keyfile, open_store, AuthorityError, Clock, Passphrase};

/// The PAA's name in the config and the store.
pub const PAA_NAME: &str = "matter-paa";

/// A PAI's name in the config and the store (`ca` of the DACs it signs).
pub fn pai_name(vid: VendorId) -> String {
    format!("matter-pai-{vid}")
}

fn bad(m: impl Into<String>) -> AuthorityError {
    AuthorityError::Config(m.into())
}

fn spki_of(k: &dyn Signer) -> Result<spki::SubjectPublicKeyInfoOwned, AuthorityError> {
    spki::SubjectPublicKeyInfoOwned::from_der(k.public_key_der()).map_err(|e| bad(format!("public key: {e}")))
}

fn read_cert(dir: &Path, rel: &Path) -> Result<Vec<u8>, AuthorityError> {
    let p = keyfile::resolve(dir, rel);
    let text = std::fs::read_to_string(&p).map_err(|e| AuthorityError::io(&p, e))?;
    pem::decode_one("CERTIFICATE", &text).map_err(|e| bad(format!("{}: {e}", p.display())))
}

fn refuse_hsm(cfg: &Config) -> Result<(), AuthorityError> {
    if cfg.hsm.is_some() {
        return Err(bad(
            "this authority's CA keys are in an HSM; Matter CAs (PAA, PAI) are made as key files only, which would \
             hold a root's key outside the HSM: not supported",
        ));
    }
    Ok(())
}

/// Record `records` (made by [`make_for`]) with audit action `action`.
fn record(
    dir: &Path,
    cfg: &Config,
    records: Vec<(iotpki_store::CertRecord, String)>,
    now: i64,
    action: &str,
    actor: &str,
) -> Result<(), AuthorityError> {
    let store = open_store(dir, cfg)?;
    for (rec, target) in records {
        store.record_issuance(Issuance {
            audit: AuditEvent {
                at: now,
                actor: actor.into(),
                action: action.into(),
                target,
                detail: format!("{} {}", rec.profile, rec.subject),
            },
            cert: rec,
            preconditions: vec![],
        })?;
    }
    Ok(())
}

/// Make the authority's Matter PAA (admin): P-256, valid 25 years, pathLen 1.
/// Returns its certificate file (what Matter commissioners must trust).
pub fn create_paa(dir: &Path, pass: &Passphrase, clock: &dyn Clock, actor: &str) -> Result<PathBuf, AuthorityError> {
    let mut cfg = Config::load(dir)?;
    refuse_hsm(&cfg)?;
    if cfg.matter.is_some() {
        return Err(bad("this authority has a Matter PAA already (iotpki matter show)"));
    }
    let now = clock.now();
    let key = SoftKey::generate(KeyType::EcdsaP256)?;
    let subject = spec::paa_subject(&cfg.organization)?;
    let spki = spki_of(&key)?;
    let kid = keys::key_identifier(&spki);
    let end = now + 25 * YEAR;
    let issuer = Issuer { subject: &subject, key_id: &kid, not_after: end, signer: &key };
    let mut records = Vec::new();
    let made =
        make_for(Profile::MatterPaa, subject.clone(), spki, now, end, vec![], &issuer, PAA_NAME, None, &mut records)?;
    let cert = PathBuf::from(format!("ca/{PAA_NAME}.crt"));
    let key_rel = PathBuf::from(format!("ca/{PAA_NAME}.key"));
    keyfile::write_encrypted(&dir.join(&key_rel), &key, pass)?;
    keyfile::write_public(&dir.join(&cert), pem::encode("CERTIFICATE", &made.der).as_bytes())?;
    // Recorded before the config names it: the store knows every certificate.
    record(dir, &cfg, records, now, "matter.paa", actor)?;
    cfg.matter = Some(MatterConfig {
        paa: MatterCaConfig {
            name: PAA_NAME.into(),
            cert: cert.clone(),
            key: key_rel,
            vendor_id: None,
            product_id: None,
        },
        pai: vec![],
    });
    keyfile::replace_public(&dir.join(CONFIG_FILE), cfg.to_toml()?.as_bytes())?;
    Ok(dir.join(cert))
}

/// Make a PAI for `vid` (optionally bound to `pid`) under the PAA (admin):
/// P-256, pathLen 0, valid 20 years (within the PAA). One PAI per vendor id.
/// The PAA's key is unlocked with `pass` for this signature only. A running
/// server signs with it once restarted. Returns its certificate file.
pub fn create_pai(
    dir: &Path,
    pass: &Passphrase,
    clock: &dyn Clock,
    vid: VendorId,
    pid: Option<ProductId>,
    actor: &str,
) -> Result<PathBuf, AuthorityError> {
    let mut cfg = Config::load(dir)?;
    refuse_hsm(&cfg)?;
    let m = cfg
        .matter
        .as_ref()
        .ok_or_else(|| bad("this authority has no Matter PAA yet: run `iotpki matter paa` first"))?;
    let name = pai_name(vid);
    if m.pai.iter().any(|p| p.name == name) {
        return Err(bad(format!("a PAI for vendor id {vid} exists already ({name})")));
    }
    let paa_key = keyfile::read_encrypted(&keyfile::resolve(dir, &m.paa.key), pass)?;
    let paa = profile::cert_info(&read_cert(dir, &m.paa.cert)?)?;
    if keys::spki_fingerprint(paa_key.public_key_der()) != paa.spki_sha256 {
        return Err(bad("the PAA key does not match its certificate"));
    }
    let paa_kid = paa.ski.clone().ok_or_else(|| bad("the PAA certificate has no subjectKeyIdentifier"))?;
    let paa_subject = paa.cert.tbs_certificate.subject.clone();
    let issuer = Issuer { subject: &paa_subject, key_id: &paa_kid, not_after: paa.not_after, signer: &paa_key };
    let now = clock.now();
    let key = SoftKey::generate(KeyType::EcdsaP256)?;
    let subject = spec::pai_subject(&cfg.organization, vid, pid)?;
    let mut records = Vec::new();
    let made = make_for(
        Profile::MatterPai,
        subject,
        spki_of(&key)?,
        now,
        now + 20 * YEAR,
        vec![],
        &issuer,
        PAA_NAME,
        None,
        &mut records,
    )?;
    let cert = PathBuf::from(format!("ca/{name}.crt"));
    let key_rel = PathBuf::from(format!("ca/{name}.key"));
    keyfile::write_encrypted(&dir.join(&key_rel), &key, pass)?;
    keyfile::write_public(&dir.join(&cert), pem::encode("CERTIFICATE", &made.der).as_bytes())?;
    record(dir, &cfg, records, now, "matter.pai", actor)?;
    if let Some(m) = cfg.matter.as_mut() {
        m.pai.push(MatterCaConfig {
            name,
            cert: cert.clone(),
            key: key_rel,
            vendor_id: Some(vid.to_string()),
            product_id: pid.map(|p| p.to_string()),
        });
    }
    keyfile::replace_public(&dir.join(CONFIG_FILE), cfg.to_toml()?.as_bytes())?;
    Ok(dir.join(cert))
}

/// The Matter certificates of the authority at `dir`: the PAA's certificate
/// file, then each PAI's with its vendor and product ids. Empty without `[matter]`.
pub fn certificates(cfg: &Config, dir: &Path) -> Vec<(String, PathBuf, Option<String>, Option<String>)> {
    let Some(m) = &cfg.matter else { return vec![] };
    std::iter::once(&m.paa)
        .chain(m.pai.iter())
        .map(|c| (c.name.clone(), keyfile::resolve(dir, &c.cert), c.vendor_id.clone(), c.product_id.clone()))
        .collect()
}

/// A loaded PAI: its key and the ids it may sign.
pub(crate) struct Pai {
    pub(crate) ca: Arc<CaKey>,
    pub(crate) product_id: Option<ProductId>,
}

/// The loaded PAIs, by vendor id.
pub(crate) type Pais = std::collections::HashMap<VendorId, Pai>;

/// The PAIs of `cfg`, keys unlocked with `pass`, by vendor id; and the PAA's certificate.
pub(crate) fn load(dir: &Path, cfg: &Config, pass: &Passphrase) -> Result<(Pais, Option<Vec<u8>>), AuthorityError> {
    let mut out = std::collections::HashMap::new();
    let Some(m) = &cfg.matter else { return Ok((out, None)) };
    let paa = read_cert(dir, &m.paa.cert)?;
    for p in &m.pai {
        let vid = VendorId::parse(p.vendor_id.as_deref().unwrap_or_default())?;
        let product_id = p.product_id.as_deref().map(ProductId::parse).transpose()?;
        let cert_der = read_cert(dir, &p.cert)?;
        let key = keyfile::read_encrypted(&keyfile::resolve(dir, &p.key), pass)?;
        let info = profile::cert_info(&cert_der)?;
        if keys::spki_fingerprint(key.public_key_der()) != info.spki_sha256 {
            return Err(bad(format!("PAI {}: key does not match certificate", p.name)));
        }
        let key_id = info.ski.clone().ok_or_else(|| bad(format!("PAI {}: no SKI", p.name)))?;
        let ca = Arc::new(CaKey {
            name: p.name.clone(),
            subject: info.cert.tbs_certificate.subject.clone(),
            cert: info.cert.clone(),
            not_after: info.not_after,
            key_id,
            cert_der,
            signer: Box::new(key),
            // DACs carry no revocation pointers (docs/matter.md).
            public_http_url: None,
            crl_shards: None,
        });
        out.insert(vid, Pai { ca, product_id });
    }
    Ok((out, Some(paa)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HsmConfig;
    use crate::init::{init, InitOptions};
    use iotpki_core::clock::SystemClock;

    fn pass() -> Passphrase {
        Passphrase::new("matter unit test passphrase".into()).unwrap()
    }

    #[test]
    fn paa_then_one_pai_per_vendor_recorded_audited_and_loaded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        init(&dir, &InitOptions::default(), &pass(), &SystemClock).unwrap();
        let vid = VendorId::parse("FFF1").unwrap();
        let e = create_pai(&dir, &pass(), &SystemClock, vid, None, "test").unwrap_err();
        assert!(e.to_string().contains("no Matter PAA yet"), "{e}");
        create_paa(&dir, &pass(), &SystemClock, "test").unwrap();
        assert!(create_paa(&dir, &pass(), &SystemClock, "test").unwrap_err().to_string().contains("already"));
        let wrong = Passphrase::new("not the passphrase at all".into()).unwrap();
        assert!(create_pai(&dir, &wrong, &SystemClock, vid, None, "test").is_err(), "the PAA key is locked");
        create_pai(&dir, &pass(), &SystemClock, vid, Some(ProductId(0x8000)), "test").unwrap();
        assert!(create_pai(&dir, &pass(), &SystemClock, vid, None, "test").unwrap_err().to_string().contains("exists"));
        let cfg = Config::load(&dir).unwrap();
        let store = open_store(&dir, &cfg).unwrap();
        let audit = store.verify_audit().unwrap().entries;
        let last: Vec<String> =
            store.audit_entries(audit - 1, 2).unwrap().into_iter().map(|e| e.event.action).collect();
        assert_eq!(last, vec!["matter.paa", "matter.pai"]);
        let (pais, paa) = load(&dir, &cfg, &pass()).unwrap();
        let pai = pais.get(&vid).unwrap();
        assert_eq!(pai.product_id, Some(ProductId(0x8000)));
        let paa = paa.unwrap();
        assert!(store.certificate(&profile::cert_info(&paa).unwrap().serial).unwrap().is_some(), "the PAA is recorded");
        assert!(store.certificate(&profile::cert_info(&pai.ca.cert_der).unwrap().serial).unwrap().is_some());
        assert_eq!(spec::check(&pai.ca.cert_der, spec::Kind::Pai), vec![]);
        assert_eq!(spec::check(&paa, spec::Kind::Paa), vec![]);
    }

    #[test]
    fn an_authority_with_its_ca_keys_in_an_hsm_makes_no_matter_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        init(&dir, &InitOptions::default(), &pass(), &SystemClock).unwrap();
        let mut cfg = Config::load(&dir).unwrap();
        cfg.hsm = Some(HsmConfig { module: "/no/such/module.so".into(), token: "pkcs11:token=t".into() });
        keyfile::replace_public(&dir.join(CONFIG_FILE), cfg.to_toml().unwrap().as_bytes()).unwrap();
        let e = create_paa(&dir, &pass(), &SystemClock, "test").unwrap_err();
        assert!(e.to_string().contains("HSM"), "{e}");
        assert!(Config::load(&dir).unwrap().matter.is_none(), "nothing written");
        // A config naming both is refused when it is read.
        cfg.matter = Some(MatterConfig {
            paa: MatterCaConfig {
                name: PAA_NAME.into(),
                cert: "ca/matter-paa.crt".into(),
                key: "ca/matter-paa.key".into(),
                vendor_id: None,
                product_id: None,
            },
            pai: vec![],
        });
        keyfile::replace_public(&dir.join(CONFIG_FILE), cfg.to_toml().unwrap().as_bytes()).unwrap();
        assert!(Config::load(&dir).unwrap_err().to_string().contains("HSM"));
    }
}
