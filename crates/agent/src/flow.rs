//! The device's enrollment flows: enroll (with a one-time token), renew
//! (mutual TLS with the current certificate), status.

use std::path::{Path, PathBuf};
use std::time::Duration;

use iotpki_core::keys::{KeyType, Signer};
use iotpki_core::name::{self, DeviceSerial, NameBuilder};
use iotpki_core::{csr, pem, profile};
use rustls::pki_types::{CertificateDer, UnixTime};
use spki::der::{Decode, Encode};

use crate::clock::now;
#[cfg(feature = "coaps")]
use crate::coaps_client::{self, CoapsClient};
use crate::est_client::{ClientIdentity, EstClient};
use crate::keystore::{Keystore, KeystoreConfig};
use crate::state::{self, Identity};
use crate::AgentError;

/// What `enroll` needs.
#[derive(Clone, Debug)]
pub struct EnrollOptions {
    /// The device's state directory.
    pub state_dir: PathBuf,
    /// The EST server, `https://host:port` or `coaps://host:port` (EST over secure CoAP).
    pub server: String,
    /// The device serial number.
    pub serial: String,
    /// The one-time enrollment token.
    pub token: String,
    /// The trust anchor (root CA) PEM, obtained out of band.
    pub anchor_pem: String,
    /// The EST label, if not the server's default.
    pub label: Option<String>,
    /// The key type to generate.
    pub key_type: KeyType,
    /// Where the key is made (`None`: a key file in the state directory).
    pub keystore: Option<KeystoreConfig>,
    /// The keystore's PIN file (else `$IOTPKI_PIN`), for a token keystore.
    pub pin_file: Option<PathBuf>,
}

/// Check that `cert_der` carries `key`'s public key and chains to `anchor`
/// through `chain`, valid now for TLS client authentication.
pub fn check_issued(cert_der: &[u8], key: &dyn Signer, chain: &[Vec<u8>], anchor: &[u8]) -> Result<(), AgentError> {
    let info = profile::cert_info(cert_der).map_err(|e| AgentError::BadAnswer(e.to_string()))?;
    if info.spki_sha256 != iotpki_core::keys::spki_fingerprint(key.public_key_der()) {
        return Err(AgentError::Untrusted("the certificate is not for this device's key".into()));
    }
    let anchor_der = CertificateDer::from(anchor);
    let ta = webpki::anchor_from_trusted_cert(&anchor_der)
        .map_err(|e| AgentError::Untrusted(format!("trust anchor: {e}")))?;
    let inter: Vec<CertificateDer<'_>> = chain.iter().map(|c| CertificateDer::from(c.as_slice())).collect();
    let leaf = CertificateDer::from(cert_der);
    let ee = webpki::EndEntityCert::try_from(&leaf).map_err(|e| AgentError::BadAnswer(format!("certificate: {e}")))?;
    let t = UnixTime::since_unix_epoch(Duration::from_secs(now().max(0) as u64));
    match ee.verify_for_usage(
        crate::est_client::SIGNATURE_ALGORITHMS.all,
        &[ta],
        &inter,
        t,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    ) {
        Ok(_) => Ok(()),
        // rustls-webpki rejects every directoryName name constraint (it does not
        // implement them); a station's delegated CA carries one. Such chains are
        // validated by our own validator, which enforces them (iotpki_core::chain).
        Err(webpki::Error::NameConstraintViolation) => {
            iotpki_core::chain::verify(cert_der, chain, anchor, now(), const_oid_client_auth())
                .map_err(|e| AgentError::Untrusted(format!("does not chain to the trust anchor: {e}")))
        }
        Err(e) => Err(AgentError::Untrusted(format!("does not chain to the trust anchor: {e}"))),
    }
}

fn const_oid_client_auth() -> iotpki_core::asn1::der::asn1::ObjectIdentifier {
    // id-kp-clientAuth (RFC 5280 4.2.1.12)
    iotpki_core::asn1::der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2")
}

/// The issuing CAs from a /cacerts answer: everything but the anchor itself.
/// The anchor must be among them or the server is not the one we trust.
fn issuing_chain(cacerts: Vec<Vec<u8>>, anchor: &[u8]) -> Result<Vec<Vec<u8>>, AgentError> {
    if !cacerts.iter().any(|c| c == anchor) {
        return Err(AgentError::Untrusted("the server's CA certificates do not include our trust anchor".into()));
    }
    Ok(cacerts.into_iter().filter(|c| c != anchor).collect())
}

/// An EST server over HTTPS or over secure CoAP (`coaps://`), as the URL says:
/// what the flows here and the load generator renew and commission through.
pub enum Est {
    /// EST over TLS 1.3.
    Https(EstClient),
    /// EST over secure CoAP (DTLS 1.3).
    #[cfg(feature = "coaps")]
    Coaps(CoapsClient),
}

/// Whether `url` is a `coaps://` URL.
pub fn is_coaps(url: &str) -> bool {
    url.starts_with("coaps://")
}

/// What a build without the `coaps` feature says of a `coaps://` server.
#[cfg(not(feature = "coaps"))]
pub const NO_COAPS: &str =
    "this build has no EST over secure CoAP (built without the `coaps` feature): use an https:// server";

impl Est {
    /// A client of `server`; `intermediates` complete the server's path
    /// over coaps (DTLS carries one certificate). Over coaps a client
    /// certificate is needed (`identity`).
    pub fn new(
        server: &str,
        label: Option<&str>,
        anchors: &[Vec<u8>],
        intermediates: &[Vec<u8>],
        identity: Option<ClientIdentity>,
    ) -> Result<Self, AgentError> {
        if is_coaps(server) {
            #[cfg(not(feature = "coaps"))]
            return {
                let _ = intermediates;
                Err(AgentError::Usage(NO_COAPS.into()))
            };
            #[cfg(feature = "coaps")]
            let identity = identity.ok_or_else(|| {
                AgentError::Usage("EST over secure CoAP needs a client certificate for the DTLS handshake".into())
            })?;
            #[cfg(feature = "coaps")]
            return Ok(Self::Coaps(CoapsClient::new(server, label, anchors, intermediates, identity)?));
        } else {
            Ok(Self::Https(EstClient::new(server, label, anchors, identity)?))
        }
    }

    /// The same client, its calls on one connection ([`EstClient::one_connection`])
    /// or one DTLS session ([`CoapsClient::one_session`]): a flow's calls make one
    /// handshake, and the connection stays open while the client lives.
    pub fn one_connection(self) -> Self {
        match self {
            Self::Https(c) => Self::Https(c.one_connection()),
            #[cfg(feature = "coaps")]
            Self::Coaps(c) => Self::Coaps(c.one_session()),
        }
    }

    /// The CA certificates (DER).
    pub async fn cacerts(&self) -> Result<Vec<Vec<u8>>, AgentError> {
        match self {
            Self::Https(c) => c.cacerts().await,
            #[cfg(feature = "coaps")]
            Self::Coaps(c) => c.cacerts().await,
        }
    }

    /// A first enrollment authenticated by the client certificate (a birth certificate).
    pub async fn simple_enroll_mtls(&self, csr_der: &[u8]) -> Result<Vec<u8>, AgentError> {
        match self {
            Self::Https(c) => c.simple_enroll_mtls(csr_der).await,
            #[cfg(feature = "coaps")]
            Self::Coaps(c) => c.simple_enroll(csr_der).await,
        }
    }

    /// Renewal with the client certificate: the new certificate (DER).
    pub async fn simple_reenroll(&self, csr_der: &[u8]) -> Result<Vec<u8>, AgentError> {
        match self {
            Self::Https(c) => c.simple_reenroll(csr_der).await,
            #[cfg(feature = "coaps")]
            Self::Coaps(c) => c.simple_reenroll(csr_der).await,
        }
    }
}

/// [`enroll`] over secure CoAP: the key is made first, the DTLS handshake
/// is authenticated by a self-signed certificate of it, and the request
/// carries `SERIAL:TOKEN` in its challengePassword (docs/coaps.md).
#[cfg(feature = "coaps")]
async fn enroll_coaps(
    opts: &EnrollOptions,
    serial: &DeviceSerial,
    anchor: &[u8],
    keystore: &Keystore,
) -> Result<(String, std::sync::Arc<dyn Signer>, Vec<u8>, Vec<Vec<u8>>), AgentError> {
    let (key_file, key) = match keystore.pending()? {
        Some((name, key)) if key.key_type() == opts.key_type => (name, key),
        _ => keystore.new_key(opts.key_type, serial.as_str())?,
    };
    let self_signed = coaps_client::self_signed(key.as_ref(), serial)?;
    let client = CoapsClient::new(
        &opts.server,
        opts.label.as_deref(),
        &[anchor.to_vec()],
        &[],
        ClientIdentity { chain: vec![self_signed], key: key.clone() },
    )?
    // /crts and /sen on one DTLS session: one handshake per device.
    .one_session();
    let chain = issuing_chain(client.cacerts().await?, anchor)?;
    let subject = NameBuilder::default().common_name(serial.as_str())?.serial_number(serial)?.build();
    let challenge = zeroize::Zeroizing::new(format!("{serial}:{}", opts.token));
    // The request carries the token: wiped when dropped, like the token.
    let csr_der = zeroize::Zeroizing::new(csr::build_with_challenge(&subject, key.as_ref(), vec![], Some(&challenge))?);
    let cert = client.simple_enroll(&csr_der).await?;
    Ok((key_file, key, cert, chain))
}

fn pem_all(certs: &[Vec<u8>]) -> String {
    certs.iter().map(|c| pem::encode("CERTIFICATE", c)).collect()
}

/// First enrollment: generate the key on the device, enroll with the token,
/// check the answer, store the identity atomically.
pub async fn enroll(opts: &EnrollOptions) -> Result<Identity, AgentError> {
    enroll_in(opts, None).await
}

/// [`enroll`] with the keys in `keystore` (an [`crate::keystore::ExternalKeys`]
/// holder, say) instead of the one `opts.keystore` names: the same checks, in
/// the same order, with the same refusals.
pub async fn enroll_with_keystore(opts: &EnrollOptions, keystore: &Keystore) -> Result<Identity, AgentError> {
    enroll_in(opts, Some(keystore)).await
}

async fn enroll_in(opts: &EnrollOptions, given: Option<&Keystore>) -> Result<Identity, AgentError> {
    let dir = &opts.state_dir;
    if state::identity_path(dir).exists() {
        return Err(AgentError::State(format!(
            "{} already holds an identity; use `iotpki agent renew` (or another --state directory)",
            dir.display()
        )));
    }
    let serial = DeviceSerial::parse(&opts.serial).map_err(|e| AgentError::Usage(e.to_string()))?;
    let anchor =
        pem::decode_one("CERTIFICATE", &opts.anchor_pem).map_err(|e| AgentError::Usage(format!("--ca-cert: {e}")))?;
    let opened;
    let keystore = match given {
        Some(k) => k,
        None => {
            opened = Keystore::open(dir, opts.keystore.as_ref(), opts.pin_file.as_deref())?;
            &opened
        }
    };
    keystore.check_key_type(opts.key_type)?;
    let (key_file, key, cert, chain) = if is_coaps(&opts.server) {
        #[cfg(not(feature = "coaps"))]
        return Err(AgentError::Usage(NO_COAPS.into()));
        #[cfg(feature = "coaps")]
        enroll_coaps(opts, &serial, &anchor, keystore).await?
    } else {
        // cacerts and the enrollment on one connection: one TLS handshake per device.
        let client =
            EstClient::new(&opts.server, opts.label.as_deref(), std::slice::from_ref(&anchor), None)?.one_connection();
        let chain = issuing_chain(client.cacerts().await?, &anchor)?;

        // The key exists (on disk, or in the token and noted on disk) before the request
        // leaves: if the answer is lost (network, power cut), running enroll again with
        // the same token gets the same certificate.
        let (key_file, key) = match keystore.pending()? {
            Some((name, key)) if key.key_type() == opts.key_type => (name, key),
            _ => keystore.new_key(opts.key_type, serial.as_str())?,
        };
        let subject = NameBuilder::default().common_name(serial.as_str())?.serial_number(&serial)?.build();
        let csr_der = csr::build(&subject, key.as_ref(), vec![])?;
        let cert = client.simple_enroll(&csr_der, serial.as_str(), &opts.token).await?;
        (key_file, key, cert, chain)
    };
    check_issued(&cert, key.as_ref(), &chain, &anchor)?;
    let issued = profile::cert_info(&cert)?;
    if name::serial_numbers(&issued.cert.tbs_certificate.subject) != vec![serial.to_string()] {
        return Err(AgentError::Untrusted("the certificate does not carry this device's serial".into()));
    }
    let id = Identity {
        device_serial: serial.to_string(),
        server: opts.server.clone(),
        label: opts.label.clone(),
        key_file,
        cert_pem: pem::encode("CERTIFICATE", &cert),
        chain_pem: pem_all(&chain),
        anchor_pem: pem::encode("CERTIFICATE", &anchor),
        updated_at: now(),
        renewals: 0,
        birth: None,
        owner: None,
        keystore: keystore.config(),
    };
    state::store(dir, &id)?;
    keystore.retire(&id.key_file, None);
    Ok(id)
}

/// On the factory line, step 1 on the device: make the key pair in the
/// device's keystore (state directory `dir`: key files, a token or a TPM)
/// and return a PKCS#10 request carrying its serial, signed by that key. The
/// private key never leaves the keystore.
pub fn begin_birth(dir: &Path, serial: &str, key_type: KeyType, keystore: &Keystore) -> Result<Vec<u8>, AgentError> {
    if state::identity_path(dir).exists() {
        return Err(AgentError::State(format!("{} already holds an identity", dir.display())));
    }
    let serial = DeviceSerial::parse(serial).map_err(|e| AgentError::Usage(e.to_string()))?;
    let key = match keystore.pending()? {
        Some((_, key)) if key.key_type() == key_type => key,
        _ => keystore.new_key(key_type, serial.as_str())?.1,
    };
    let subject = NameBuilder::default().common_name(serial.as_str())?.serial_number(&serial)?.build();
    Ok(csr::build(&subject, key.as_ref(), vec![])?)
}

/// On the factory line, step 2 on the device: take the birth certificate, its
/// chain and the trust anchor the station writes in, check that the
/// certificate is for the key [`begin_birth`] made in `keystore` and for this
/// serial, and chains to the anchor, and store the identity atomically.
#[allow(clippy::too_many_arguments)]
pub fn finish_birth(
    dir: &Path,
    serial: &str,
    cert: &[u8],
    chain: &[Vec<u8>],
    anchor: &[u8],
    server: &str,
    label: Option<&str>,
    keystore: &Keystore,
) -> Result<Identity, AgentError> {
    let (key_file, key) =
        keystore.pending()?.ok_or_else(|| AgentError::State(format!("no key pending in {}", dir.display())))?;
    check_issued(cert, key.as_ref(), chain, anchor)?;
    let issued = profile::cert_info(cert)?;
    if name::serial_numbers(&issued.cert.tbs_certificate.subject) != vec![serial.to_string()] {
        return Err(AgentError::Untrusted("the certificate does not carry this device's serial".into()));
    }
    let birth = state::BirthCredential {
        key_file: key_file.clone(),
        cert_pem: pem::encode("CERTIFICATE", cert),
        chain_pem: pem_all(chain),
        anchor_pem: pem::encode("CERTIFICATE", anchor),
    };
    let id = Identity {
        device_serial: serial.to_string(),
        server: server.to_string(),
        label: label.map(str::to_string),
        key_file,
        cert_pem: birth.cert_pem.clone(),
        chain_pem: birth.chain_pem.clone(),
        anchor_pem: birth.anchor_pem.clone(),
        updated_at: now(),
        renewals: 0,
        birth: Some(birth),
        owner: None,
        keystore: keystore.config(),
    };
    state::store(dir, &id)?;
    keystore.retire(&id.key_file, None);
    Ok(id)
}

/// Renewal: a new key (in the same keystore), a request with the current
/// subject, sent over mutual TLS with the current certificate (the TLS 1.3
/// CertificateVerify signed by the current key, wherever it lives); the new
/// identity replaces the old one atomically, then the old key is forgotten.
/// `pin_file`: the token PIN for a PKCS#11 keystore (else the recorded file, else `$IOTPKI_PIN`).
pub async fn renew(
    state_dir: &Path,
    server_override: Option<&str>,
    pin_file: Option<&Path>,
) -> Result<Identity, AgentError> {
    let old = state::load(state_dir)?;
    let keystore = Keystore::open(state_dir, old.keystore.as_ref(), pin_file)?;
    renew_from(state_dir, old, server_override, &keystore, None).await
}

/// [`renew`] into a key of another type: how a device moves from P-256 to
/// ML-DSA (after a root rotation across algorithms, or at any renewal). The
/// server's label must allow the type; the old key authenticates the request.
pub async fn renew_into(
    state_dir: &Path,
    server_override: Option<&str>,
    pin_file: Option<&Path>,
    key_type: KeyType,
) -> Result<Identity, AgentError> {
    let old = state::load(state_dir)?;
    let keystore = Keystore::open(state_dir, old.keystore.as_ref(), pin_file)?;
    keystore.check_key_type(key_type)?;
    renew_from(state_dir, old, server_override, &keystore, Some(key_type)).await
}

/// [`renew`] with the keys in `keystore`, which must be the keystore the identity records.
pub async fn renew_with_keystore(
    state_dir: &Path,
    server_override: Option<&str>,
    keystore: &Keystore,
) -> Result<Identity, AgentError> {
    let old = state::load(state_dir)?;
    keystore.check_holds(&old)?;
    renew_from(state_dir, old, server_override, keystore, None).await
}

async fn renew_from(
    state_dir: &Path,
    old: Identity,
    server_override: Option<&str>,
    keystore: &Keystore,
    key_type: Option<KeyType>,
) -> Result<Identity, AgentError> {
    let old_key = keystore.load(&old.key_file)?;
    let new_type = key_type.unwrap_or(old_key.key_type());
    let cert = pem::decode_one("CERTIFICATE", &old.cert_pem).map_err(|e| AgentError::State(e.to_string()))?;
    let chain = pem::decode_all("CERTIFICATE", &old.chain_pem).map_err(|e| AgentError::State(e.to_string()))?;
    let anchor = pem::decode_one("CERTIFICATE", &old.anchor_pem).map_err(|e| AgentError::State(e.to_string()))?;
    let current = profile::cert_info(&cert)?;
    if current.spki_sha256 != iotpki_core::keys::spki_fingerprint(old_key.public_key_der()) {
        return Err(AgentError::State("the stored key does not match the stored certificate".into()));
    }
    let server = server_override.unwrap_or(&old.server).to_string();
    crate::trust::check_server(state_dir, &server)?;
    let owner = check_still_owned(state_dir, &old, &anchor)?;

    let mut tls_chain = vec![cert.clone()];
    tls_chain.extend(chain.iter().cloned());
    // The roots this device trusts: its anchor and its trust bundle's, less
    // those a bundle retired (a bundle naming a new root is how a root rotation
    // reaches the device, and one that drops a root retires it).
    let trusted = trusted_roots(state_dir, &anchor)?;
    let client = Est::new(
        &server,
        old.label.as_deref(),
        &trusted,
        &chain,
        Some(ClientIdentity { chain: tls_chain, key: old_key.clone() }),
    )?
    .one_connection();
    // A renewal whose answer was lost (its certificate was issued, and the
    // current one superseded) left its key: the retry uses it, and the server
    // answers with the certificate it issued then.
    let (key_file, new_key) = match keystore.pending_renewal(&old)? {
        Some((name, key)) if key.key_type() == new_type => (name, key),
        _ => keystore.new_key(new_type, &old.device_serial)?,
    };
    let attempt = async {
        let csr_der = csr::build(&current.cert.tbs_certificate.subject, new_key.as_ref(), vec![])?;
        let new_cert = client.simple_reenroll(&csr_der).await?;
        // Issued through the current chain, or (its issuing CA succeeded by one
        // with a key of its own: `ca rotate --new-issuing-keys`) through the CAs
        // the server lists now, to a root this device trusts.
        let rechained = match check_issued(&new_cert, new_key.as_ref(), &chain, &anchor) {
            Ok(()) => None,
            Err(e @ AgentError::Untrusted(_)) => {
                Some(rechain(&new_cert, new_key.as_ref(), &client.cacerts().await?, &trusted).ok_or(e)?)
            }
            Err(e) => return Err(e),
        };
        let issued = profile::cert_info(&new_cert)?;
        if issued.cert.tbs_certificate.subject != current.cert.tbs_certificate.subject {
            return Err(AgentError::Untrusted("the renewed certificate names another subject".into()));
        }
        Ok((new_cert, rechained))
    };
    let (new_cert, rechained) = match attempt.await {
        Ok(c) => c,
        // No answer, or "not now" (rate limited, busy, timed out): the server may
        // have issued it on an earlier try; the key is kept for the retry.
        Err(e @ (AgentError::Connect(_) | AgentError::BadAnswer(_))) => return Err(e),
        Err(e @ AgentError::Refused { status: 408 | 429 | 500..=599, .. }) => return Err(e),
        Err(e) => {
            keystore.discard(&key_file);
            return Err(e);
        }
    };
    // Follow the server's current root if this device trusts it (after a root
    // rotation): the new certificate must chain to it through the CAs it lists.
    // A device that trusts no root but its anchor has none to follow: it asks
    // nothing more (a renewal is then one request, one connection or DTLS session).
    let other_root = trusted.iter().any(|t| *t != anchor);
    let cacerts = if other_root && rechained.is_none() { client.cacerts().await } else { Ok(Vec::new()) };
    let (anchor_pem, chain_pem) = match (rechained, cacerts) {
        (Some((root, via)), _) => (pem::encode("CERTIFICATE", &root), pem_all(&via)),
        (None, cacerts) => match cacerts {
            Ok(cacerts) => match newer_root(&cacerts, &trusted, &anchor) {
                Some(root) => {
                    let via: Vec<Vec<u8>> = cacerts.iter().filter(|c| **c != root).cloned().collect();
                    match check_issued(&new_cert, new_key.as_ref(), &via, &root) {
                        Ok(()) => (pem::encode("CERTIFICATE", &root), pem_all(&via)),
                        Err(_) => (old.anchor_pem.clone(), old.chain_pem.clone()),
                    }
                }
                None => (old.anchor_pem.clone(), old.chain_pem.clone()),
            },
            Err(_) => (old.anchor_pem.clone(), old.chain_pem.clone()),
        },
    };
    // The key replaced is forgotten, unless it is the birth key (kept for re-commissioning).
    let old_key_file = Some(old.key_file.clone()).filter(|k| old.birth.as_ref().is_none_or(|b| b.key_file != *k));
    let id = Identity {
        key_file,
        cert_pem: pem::encode("CERTIFICATE", &new_cert),
        anchor_pem,
        chain_pem,
        server,
        updated_at: now(),
        renewals: old.renewals + 1,
        owner,
        ..old
    };
    state::store(state_dir, &id)?;
    keystore.retire(&id.key_file, old_key_file.as_deref());
    Ok(id)
}

/// Refuse to renew an identity whose owner handed the device on: the
/// installed voucher names another owner than the one it was commissioned
/// with (its `owner`). Its server is the previous owner's: it is not asked.
/// An identity that recorded no owner (made before identities did) is
/// renewed; it records the voucher's owner when that is its anchor's key.
/// Answers the owner to record in the renewed identity.
fn check_still_owned(state_dir: &Path, old: &Identity, anchor: &[u8]) -> Result<Option<String>, AgentError> {
    let Some(owner) = crate::trust::voucher_owner(state_dir)? else { return Ok(old.owner.clone()) };
    let named = iotpki_core::keys::spki_fingerprint(&owner);
    let Some(ours) = &old.owner else {
        let cert = x509_cert::Certificate::from_der(anchor).map_err(|e| AgentError::State(e.to_string()))?;
        let spki =
            cert.tbs_certificate.subject_public_key_info.to_der().map_err(|e| AgentError::State(e.to_string()))?;
        return Ok((spki == owner).then_some(named));
    };
    if named == *ours {
        return Ok(old.owner.clone());
    }
    Err(AgentError::Untrusted(format!(
        "the ownership voucher hands this device to key {named}, another owner than the one this identity is from \
         ({ours}): it is not renewed there; commission with the new owner (iotpki agent commission --server URL \
         --ca-cert ROOT)"
    )))
}

/// The chain `cert` (for `key`) checks out on through the CAs `cacerts`
/// lists (the server's `cacerts` answer), to one of the `trusted` roots, if
/// one does: (that root, those CAs).
fn rechain(cert: &[u8], key: &dyn Signer, cacerts: &[Vec<u8>], trusted: &[Vec<u8>]) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
    let via: Vec<Vec<u8>> = cacerts.iter().filter(|c| !trusted.contains(c)).cloned().collect();
    trusted.iter().find(|t| check_issued(cert, key, &via, t).is_ok()).map(|t| (t.clone(), via))
}

/// The roots the device in `dir` trusts: `anchor` (its identity's, or the
/// owner's given for a commissioning) and its trust bundle's anchors, less
/// every root a bundle update dropped (retired: a leaked root, or the old
/// one at the end of a rotation), even when it is `anchor`.
pub fn trusted_roots(dir: &Path, anchor: &[u8]) -> Result<Vec<Vec<u8>>, AgentError> {
    let retired = crate::trust::retired_roots(dir)?;
    let mut out = Vec::new();
    let bundle = crate::trust::installed_bundle(dir)?;
    let anchors = bundle.as_ref().map(|b| b.content().anchors.as_slice()).unwrap_or_default();
    for a in std::iter::once(anchor).chain(anchors.iter().map(Vec::as_slice)) {
        if !retired.iter().any(|r| r.as_slice() == a) && !out.iter().any(|o: &Vec<u8>| o.as_slice() == a) {
            out.push(a.to_vec());
        }
    }
    Ok(out)
}

/// A self-signed certificate in `cacerts` that is trusted and is not `current`.
fn newer_root(cacerts: &[Vec<u8>], trusted: &[Vec<u8>], current: &[u8]) -> Option<Vec<u8>> {
    cacerts
        .iter()
        .find(|c| c.as_slice() != current && trusted.contains(c))
        .filter(|c| {
            profile::cert_info(c).is_ok_and(|i| i.cert.tbs_certificate.subject == i.cert.tbs_certificate.issuer)
        })
        .cloned()
}

/// What `agent status` shows.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Status {
    /// Device serial.
    pub device_serial: String,
    /// Subject of the current certificate.
    pub subject: String,
    /// Its issuer.
    pub issuer: String,
    /// Its serial, hex.
    pub cert_serial: String,
    /// notBefore, RFC 3339.
    pub not_before: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// Days until notAfter (negative when expired).
    pub days_left: i64,
    /// The key type.
    pub key_type: String,
    /// Where the key lives: `file`, or the token's PKCS#11 URI.
    pub keystore: String,
    /// The EST server.
    pub server: String,
    /// Renewals so far.
    pub renewals: u32,
}

/// Read the identity and summarise it.
pub fn status(state_dir: &Path) -> Result<Status, AgentError> {
    let id = state::load(state_dir)?;
    let cert = pem::decode_one("CERTIFICATE", &id.cert_pem).map_err(|e| AgentError::State(e.to_string()))?;
    let info = profile::cert_info(&cert)?;
    let spki = info.cert.tbs_certificate.subject_public_key_info.clone();
    let key_type = KeyType::of_spki(&spki)?;
    // A key file is checked against the certificate here; a token key needs the
    // PIN to be found, so it is checked when it is used (renew).
    if id.keystore.is_none() {
        let key = state::load_key(state_dir, &id)?;
        if info.spki_sha256 != iotpki_core::keys::spki_fingerprint(key.public_key_der()) {
            return Err(AgentError::State("the stored key does not match the stored certificate".into()));
        }
    }
    let tbs = &info.cert.tbs_certificate;
    Ok(Status {
        device_serial: id.device_serial,
        subject: tbs.subject.to_string(),
        issuer: tbs.issuer.to_string(),
        cert_serial: info.serial,
        not_before: iotpki_core::time::rfc3339(info.not_before),
        not_after: iotpki_core::time::rfc3339(info.not_after),
        days_left: (info.not_after - now()).div_euclid(86_400),
        key_type: key_type.to_string(),
        keystore: match &id.keystore {
            None => "file".into(),
            Some(KeystoreConfig::Pkcs11 { token, .. }) => token.clone(),
            Some(KeystoreConfig::Tpm { tcti }) => format!("tpm {tcti}"),
            Some(KeystoreConfig::External {}) => "external".into(),
        },
        server: id.server,
        renewals: id.renewals,
    })
}

/// Commissioning: with the birth certificate as the TLS client certificate,
/// ask the owner's server (`server`, default the one in the state) for an
/// operational certificate for a fresh key. `anchor_pem` is the owner's trust
/// anchor (default: the one in the state). Also the way back after the
/// operational certificate expired or was revoked (re-commissioning).
pub async fn commission(
    state_dir: &Path,
    server: Option<&str>,
    anchor_pem: Option<&str>,
    label: Option<&str>,
) -> Result<Identity, AgentError> {
    let old = state::load(state_dir)?;
    let birth = no_birth(&old)?;
    // The birth key is in the keystore the device was born with (key files, a token, a TPM).
    let keystore = Keystore::open(state_dir, old.keystore.as_ref(), None)?;
    commission_from(state_dir, old, birth, server, anchor_pem, label, &keystore).await
}

fn no_birth(old: &Identity) -> Result<state::BirthCredential, AgentError> {
    old.birth.clone().ok_or_else(|| {
        AgentError::State(
            "this device has no birth certificate (it was not born on a factory line): enroll with a token instead"
                .into(),
        )
    })
}

/// [`commission`] with the keys in `keystore`, which must be the keystore the identity records.
pub async fn commission_with_keystore(
    state_dir: &Path,
    server: Option<&str>,
    anchor_pem: Option<&str>,
    label: Option<&str>,
    keystore: &Keystore,
) -> Result<Identity, AgentError> {
    let old = state::load(state_dir)?;
    let birth = no_birth(&old)?;
    keystore.check_holds(&old)?;
    commission_from(state_dir, old, birth, server, anchor_pem, label, keystore).await
}

async fn commission_from(
    state_dir: &Path,
    old: Identity,
    birth: state::BirthCredential,
    server: Option<&str>,
    anchor_pem: Option<&str>,
    label: Option<&str>,
    keystore: &Keystore,
) -> Result<Identity, AgentError> {
    let birth_key = keystore.load(&birth.key_file)?;
    let birth_cert = pem::decode_one("CERTIFICATE", &birth.cert_pem).map_err(|e| AgentError::State(e.to_string()))?;
    let birth_chain = pem::decode_all("CERTIFICATE", &birth.chain_pem).map_err(|e| AgentError::State(e.to_string()))?;
    let anchor = match anchor_pem {
        Some(p) => pem::decode_one("CERTIFICATE", p).map_err(|e| AgentError::Usage(format!("--ca-cert: {e}")))?,
        None => pem::decode_one("CERTIFICATE", &old.anchor_pem).map_err(|e| AgentError::State(e.to_string()))?,
    };
    // With an ownership voucher installed, only the owner it names is trusted.
    let voucher_owner = crate::trust::voucher_owner(state_dir)?;
    if let Some(owner) = &voucher_owner {
        let cert =
            x509_cert::Certificate::from_der(&anchor).map_err(|e| AgentError::Usage(format!("--ca-cert: {e}")))?;
        let spki =
            cert.tbs_certificate.subject_public_key_info.to_der().map_err(|e| AgentError::Usage(e.to_string()))?;
        // Keys are compared in their one canonical form (the voucher's is checked to be).
        iotpki_core::keys::canonical_spki(&spki).map_err(|e| AgentError::Usage(format!("--ca-cert: {e}")))?;
        if spki != *owner {
            return Err(AgentError::Untrusted(format!(
                "the ownership voucher hands this device to key {}, not to the anchor given ({})",
                iotpki_core::keys::spki_fingerprint(owner),
                iotpki_core::keys::spki_fingerprint(&spki)
            )));
        }
    }
    let server = server.unwrap_or(&old.server).to_string();
    crate::trust::check_server(state_dir, &server)?;
    let label = label.map(str::to_string).or_else(|| {
        if old.birth.as_ref().map(|b| &b.cert_pem) == Some(&old.cert_pem) {
            None
        } else {
            old.label.clone()
        }
    });
    let serial = DeviceSerial::parse(&old.device_serial).map_err(|e| AgentError::State(e.to_string()))?;

    let mut tls_chain = vec![birth_cert];
    tls_chain.extend(birth_chain);
    let client = Est::new(
        &server,
        label.as_deref(),
        &trusted_roots(state_dir, &anchor)?,
        &[],
        Some(ClientIdentity { chain: tls_chain, key: birth_key.clone() }),
    )?
    .one_connection();
    let chain = issuing_chain(client.cacerts().await?, &anchor)?;
    let (key_file, new_key) = keystore.new_key(birth_key.key_type(), serial.as_str())?;
    let attempt = async {
        let subject = NameBuilder::default().common_name(serial.as_str())?.serial_number(&serial)?.build();
        let csr_der = csr::build(&subject, new_key.as_ref(), vec![])?;
        let cert = client.simple_enroll_mtls(&csr_der).await?;
        check_issued(&cert, new_key.as_ref(), &chain, &anchor)?;
        let issued = profile::cert_info(&cert)?;
        if name::serial_numbers(&issued.cert.tbs_certificate.subject) != vec![serial.to_string()] {
            return Err(AgentError::Untrusted("the certificate does not carry this device's serial".into()));
        }
        Ok(cert)
    };
    let cert = match attempt.await {
        Ok(c) => c,
        Err(e) => {
            keystore.discard(&key_file);
            return Err(e);
        }
    };
    // The operational key replaced (re-commissioning) is forgotten; the birth key is kept.
    let old_key_file = Some(old.key_file.clone()).filter(|k| *k != birth.key_file);
    let id = Identity {
        device_serial: serial.to_string(),
        server,
        label,
        key_file,
        cert_pem: pem::encode("CERTIFICATE", &cert),
        chain_pem: pem_all(&chain),
        anchor_pem: pem::encode("CERTIFICATE", &anchor),
        updated_at: now(),
        renewals: 0,
        birth: Some(birth),
        owner: voucher_owner.as_deref().map(iotpki_core::keys::spki_fingerprint),
        keystore: keystore.config(),
    };
    state::store(state_dir, &id)?;
    keystore.retire(&id.key_file, old_key_file.as_deref());
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotpki_core::keys::SoftKey;
    use iotpki_core::profile::{issue, CertParams, Issuer, Profile};
    use x509_cert::name::Name;

    /// A certificate and its key.
    struct Made {
        key: SoftKey,
        name: Name,
        kid: Vec<u8>,
        der: Vec<u8>,
    }

    fn spki_of(k: &dyn Signer) -> spki::SubjectPublicKeyInfoOwned {
        spki::SubjectPublicKeyInfoOwned::from_der(k.public_key_der()).unwrap()
    }

    /// `profile` for `key`, named `cn`, signed by `by` (itself when `None`).
    fn make(profile: Profile, cn: &str, key: SoftKey, by: Option<&Made>) -> Made {
        let name = NameBuilder::default().common_name(cn).unwrap().build();
        let kid = iotpki_core::keys::key_identifier(&spki_of(&key));
        let p = CertParams {
            profile,
            serial: iotpki_core::serial::system_random_serial(1_000).unwrap().0,
            subject: name.clone(),
            spki: spki_of(&key),
            not_before: 1_000,
            not_after: 9_000_000_000,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: None,
        };
        let der = match by {
            Some(b) => {
                issue(&p, &Issuer { subject: &b.name, key_id: &b.kid, not_after: 9_000_000_000, signer: &b.key })
            }
            None => issue(&p, &Issuer { subject: &name, key_id: &kid, not_after: 9_000_000_000, signer: &key }),
        }
        .unwrap()
        .der;
        Made { key, name, kid, der }
    }

    fn key() -> SoftKey {
        SoftKey::generate(KeyType::EcdsaP256).unwrap()
    }

    /// A renewal answered through CAs the device's current chain does not
    /// hold (its issuing CA was succeeded): the device follows the server's
    /// `cacerts` only to a root it already trusts, and only for its own key.
    #[test]
    fn a_renewal_is_rechained_only_to_a_trusted_root_and_only_for_the_devices_key() {
        let root = make(Profile::Root, "Root", key(), None);
        let successor = make(Profile::IssuingCa, "Operational 2", key(), Some(&root));
        let device = key();
        let cert = make(Profile::Device, "D-1", device, Some(&successor));
        let trusted = vec![root.der.clone()];
        // The server lists its root and the successor: the path is the successor alone.
        let (to, via) = rechain(&cert.der, &cert.key, &[root.der.clone(), successor.der.clone()], &trusted).unwrap();
        assert_eq!((to, via), (root.der.clone(), vec![successor.der.clone()]));
        // Not for this device's key: nothing to follow.
        assert_eq!(rechain(&cert.der, &key(), std::slice::from_ref(&successor.der), &trusted), None);
        // The server (or whoever answered) lists CAs up to a root the device does
        // not trust, with that root among them: it is no anchor for being listed.
        let rogue_root = make(Profile::Root, "Root", key(), None);
        let rogue_ca = make(Profile::IssuingCa, "Operational 2", key(), Some(&rogue_root));
        let forged = make(Profile::Device, "D-1", cert.key, Some(&rogue_ca));
        let listed = [rogue_root.der.clone(), rogue_ca.der.clone(), successor.der.clone()];
        assert_eq!(rechain(&forged.der, &forged.key, &listed, &trusted), None);
        // Nor does a CA of the same name as ours, listed without its path, lend it one.
        assert_eq!(rechain(&forged.der, &forged.key, std::slice::from_ref(&successor.der), &trusted), None);
        // Trusting the other root (a bundle naming it) is what makes it followable.
        let both = vec![root.der.clone(), rogue_root.der.clone()];
        let (to, _) = rechain(&forged.der, &forged.key, &listed, &both).unwrap();
        assert_eq!(to, rogue_root.der);
    }
}
