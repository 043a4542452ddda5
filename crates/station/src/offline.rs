//! A station issuing offline for one batch, with its delegated CA.
//!
//! `STATION_DIR/offline/BATCH/` holds the delegated CA's key (`key-N.pem`,
//! made there), `delegation.json` (its certificate, the chain above it and
//! the batch's terms: window, quota left, allowlist, namespace), and
//! `record.jsonl`, the production record: one signed, hash-chained entry per
//! birth, appended and fsync'd *before* the certificate goes to the device.
//! The station enforces the terms itself; the authority re-checks everything
//! at `factory sync` and flags what a dishonest station issued beyond them.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use iotpki_core::keys::{Signer, SoftKey};
use iotpki_core::name::{self, DeviceSerial};
use iotpki_core::profile::{self, CertParams, Issuer, Profile};
use iotpki_core::record::{self, Entry};
use iotpki_core::{csr, pem, serial};
use spki::der::{Decode, Encode};

use iotpki_agent::clock::now;
use iotpki_agent::state;
use iotpki_agent::AgentError;
use iotpki_core::wire::Delegation;

/// The directory of a batch's offline material.
pub fn batch_dir(station_dir: &Path, batch: &str) -> PathBuf {
    station_dir.join("offline").join(batch)
}

/// The production record of a batch.
pub fn record_path(station_dir: &Path, batch: &str) -> PathBuf {
    batch_dir(station_dir, batch).join("record.jsonl")
}

/// Make the delegated CA's key in the station's directory.
pub fn new_delegate_key(
    station_dir: &Path,
    batch: &str,
    kt: iotpki_core::keys::KeyType,
) -> Result<SoftKey, AgentError> {
    let dir = batch_dir(station_dir, batch);
    if dir.join("delegation.json").exists() {
        return Err(AgentError::State(format!(
            "{} already holds a delegation for batch {batch}",
            station_dir.display()
        )));
    }
    let key = SoftKey::generate(kt)?;
    state::write_new_key(&dir, &key)?;
    Ok(key)
}

/// Store the delegation next to its key (atomically).
pub fn store_delegation(station_dir: &Path, d: &Delegation) -> Result<(), AgentError> {
    let dir = batch_dir(station_dir, &d.batch);
    let json = serde_json::to_vec_pretty(d).map_err(|e| AgentError::State(e.to_string()))?;
    Ok(iotpki_fs::write_atomic(&dir.join("delegation.json"), &json, iotpki_fs::PUBLIC)?)
}

struct Progress {
    last: Option<Entry>,
    /// Each serial born here, with its birth certificate (DER).
    born: HashMap<String, Vec<u8>>,
}

/// The offline issuer of one batch.
pub struct Offline {
    d: Delegation,
    station_key: SoftKey,
    ca_key: SoftKey,
    ca_cert: Vec<u8>,
    chain: Vec<Vec<u8>>,
    record: PathBuf,
    progress: Mutex<Progress>,
}

fn refused(reason: String) -> AgentError {
    AgentError::Refused { status: 403, reason: format!("offline: {reason}") }
}

impl Offline {
    /// Open the offline material of `batch`; the record is read and its chain
    /// and signatures checked against `station_key` (a damaged record is refused).
    pub fn open(station_dir: &Path, batch: &str, station_key: SoftKey) -> Result<Self, AgentError> {
        let dir = batch_dir(station_dir, batch);
        let p = dir.join("delegation.json");
        let text = std::fs::read_to_string(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                AgentError::State(format!("no delegation for batch {batch} (iotpki station delegate)"))
            } else {
                AgentError::io(&p, e)
            }
        })?;
        let d: Delegation =
            serde_json::from_str(&text).map_err(|e| AgentError::State(format!("{}: {e}", p.display())))?;
        let ca_key_file = state::newest_numbered(&dir, "key-", ".pem")
            .ok_or_else(|| AgentError::State(format!("no delegated CA key in {}", dir.display())))?;
        let ca_key = iotpki_fs::keyfile::read_key(&dir.join(ca_key_file), None)?;
        let ca_cert = pem::decode_one("CERTIFICATE", &d.cert_pem).map_err(|e| AgentError::State(e.to_string()))?;
        let mut chain = vec![ca_cert.clone()];
        chain.extend(pem::decode_all("CERTIFICATE", &d.chain_pem).map_err(|e| AgentError::State(e.to_string()))?);
        let record = dir.join("record.jsonl");
        let entries = match std::fs::read_to_string(&record) {
            Ok(t) => record::parse(&t)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(AgentError::io(&record, e)),
        };
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(station_key.public_key_der())
            .map_err(|e| AgentError::State(e.to_string()))?;
        record::verify(&entries, 1, record::GENESIS, &spki)
            .map_err(|e| AgentError::State(format!("{}: {e}", record.display())))?;
        let born = entries.iter().map(|e| Ok((e.serial.clone(), e.cert_der()?))).collect::<Result<_, AgentError>>()?;
        let progress = Mutex::new(Progress { last: entries.last().cloned(), born });
        Ok(Self { d, station_key, ca_key, ca_cert, chain, record, progress })
    }

    /// Sign the delegated CA's CRL: number `number`, valid until `next_update`,
    /// listing `revoked` (what the authority revoked under it; it checks the
    /// upload lists exactly those).
    pub fn sign_crl(
        &self,
        number: u64,
        next_update: i64,
        revoked: &[iotpki_core::crl::Revoked],
    ) -> Result<Vec<u8>, AgentError> {
        let ca = profile::cert_info(&self.ca_cert)?;
        let key_id = ca.ski.clone().unwrap_or_default();
        let subject = ca.cert.tbs_certificate.subject.clone();
        let issuer = Issuer { subject: &subject, key_id: &key_id, not_after: ca.not_after, signer: &self.ca_key };
        let t = now();
        Ok(iotpki_core::crl::build(&issuer, number, (t - 60).max(ca.not_before), next_update, revoked)?)
    }

    /// Up to `n` serials of the allowlist not born here yet, in order.
    pub fn unborn(&self, n: usize) -> Vec<String> {
        // Progress is only changed whole under its lock: a poisoned lock is still sound.
        let p = self.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.d.allowlist.iter().filter(|s| !p.born.contains_key(*s)).take(n).cloned().collect()
    }

    /// Whether the birth certificate `born`, recorded here, may be sent again
    /// to a request for `spki`: for that very key, by the delegated CA this
    /// station holds now (not one an earlier delegation certified), not
    /// expired at `t`. Nothing is issued or recorded for it: the record holds
    /// births, and a certificate is public; what it gives is only the answer
    /// a device that proves its key already had coming. A revocation made
    /// since the last sync is not known here (the authority's CRL lists it).
    fn replayable(&self, born: &[u8], spki: &spki::SubjectPublicKeyInfoOwned, t: i64) -> Result<bool, AgentError> {
        let cert = profile::cert_info(born)?;
        let ca = profile::cert_info(&self.ca_cert)?;
        let tbs = &cert.cert.tbs_certificate;
        let same_key = &tbs.subject_public_key_info == spki;
        let tbs_der = tbs.to_der().map_err(|e| AgentError::State(format!("recorded birth: {e}")))?;
        let by_this_ca = tbs.issuer == ca.cert.tbs_certificate.subject
            && cert.cert.signature.as_bytes().is_some_and(|sig| {
                iotpki_core::keys::verify(
                    &ca.cert.tbs_certificate.subject_public_key_info,
                    &cert.cert.signature_algorithm,
                    &tbs_der,
                    sig,
                )
                .is_ok()
            });
        Ok(same_key && by_this_ca && t < cert.not_after)
    }

    /// Issue a birth certificate for `csr_der` within the delegation's terms,
    /// record it (fsync'd), and return it with the chain the device holds. A
    /// serial born here already is answered with its birth certificate again
    /// when the request is for the same key (`replayable`), and refused
    /// otherwise.
    pub fn issue(&self, csr_der: &[u8], batch: &str) -> Result<(Vec<u8>, Vec<Vec<u8>>), AgentError> {
        if batch != self.d.batch {
            return Err(AgentError::Usage(format!(
                "this offline station issues for batch {}, not {batch}",
                self.d.batch
            )));
        }
        let req = csr::parse_and_verify(csr_der)?;
        let serials = name::serial_numbers(&req.subject);
        let [sn] = serials.as_slice() else {
            return Err(refused("the device's request must carry exactly one serialNumber".into()));
        };
        let sn = DeviceSerial::parse(sn).map_err(|e| refused(e.to_string()))?;
        let t = now();
        if t < self.d.valid_from || t >= self.d.valid_until {
            return Err(refused(format!("batch {batch} does not issue now")));
        }
        let mut p = self.progress.lock().map_err(|_| AgentError::State("offline issuer poisoned".into()))?;
        if !self.d.allowlist.iter().any(|s| s == sn.as_str()) {
            return Err(refused(format!("serial {sn} is not on the allowlist of batch {batch}")));
        }
        if let Some(born) = p.born.get(sn.as_str()) {
            // A birth whose answer was lost (the station restarted, the line
            // cut before INSTALL): the device kept its key and asks again.
            return match self.replayable(born, &req.spki, t)? {
                true => Ok((born.clone(), self.chain.clone())),
                false => Err(refused(format!("serial {sn} already has a birth certificate"))),
            };
        }
        if p.born.len() as u64 >= self.d.quota {
            return Err(refused(format!("batch {batch} has used up this station's quota of {}", self.d.quota)));
        }
        let ca = profile::cert_info(&self.ca_cert)?;
        let subject = name::batch_device_subject(&self.d.organization, batch, &sn)?;
        // Defence in depth: the allowlist signed into the delegation, not only the JSON beside it.
        if !name::permitted_by(&ca.cert, &subject)? {
            return Err(refused(format!(
                "serial {sn} is outside the names the delegated CA for batch {batch} was certified for"
            )));
        }
        let ca_subject = ca.cert.tbs_certificate.subject.clone();
        let key_id = ca.ski.clone().unwrap_or_default();
        let issuer = Issuer { subject: &ca_subject, key_id: &key_id, not_after: ca.not_after, signer: &self.ca_key };
        let params = CertParams {
            profile: Profile::Device,
            serial: serial::system_random_serial(t)?.0,
            subject,
            spki: req.spki.clone(),
            not_before: t - 60,
            not_after: ca.not_after,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: None,
        };
        let urls = self.d.crl_url.as_ref().map(|u| profile::RevocationUrls { crl: u.clone(), ocsp: None });
        let issued = profile::issue_with(&params, &issuer, urls.as_ref())?;
        // Recorded (and fsync'd) before the device ever sees it.
        let entry = Entry::next(p.last.as_ref(), t, batch, sn.as_str(), &issued.der, &self.station_key)?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.record)
            .map_err(|e| AgentError::io(&self.record, e))?;
        f.write_all((entry.to_line() + "\n").as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| AgentError::io(&self.record, e))?;
        p.born.insert(sn.to_string(), issued.der.clone());
        p.last = Some(entry);
        Ok((issued.der, self.chain.clone()))
    }
}
