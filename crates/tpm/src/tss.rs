//! The TPM through the TPM Software Stack (tss-esapi, which links libtss2):
//! built with the `tss` feature.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use aws_lc_rs::digest;
use const_oid::db::rfc5912;
use der::asn1::{BitString, UintRef};
use der::Encode;
use iotpki_core::keys::{KeyType, Signer};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::structures::{
    Digest, EccPoint, EccScheme, HashScheme, HashcheckTicket, KeyDerivationFunctionScheme, Private, Public,
    PublicBuilder, PublicEccParametersBuilder, Signature, SignatureScheme, SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::{Context, TctiNameConf};

use crate::{KeyAttributes, TpmError};

/// First bytes of a key blob, before its TPM2B_PUBLIC and TPM2B_PRIVATE.
const BLOB_MAGIC: &[u8] = b"iotpki-tpm-key-v1\n";

fn cmd(what: &'static str) -> impl Fn(tss_esapi::Error) -> TpmError {
    move |e| TpmError::Command { what, detail: e.to_string() }
}

/// A connection to a TPM (one ESAPI context, used by one thread at a time).
pub struct Tpm {
    ctx: Mutex<Context>,
    tcti: String,
}

impl fmt::Debug for Tpm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tpm({})", self.tcti)
    }
}

/// The primary key of the storage hierarchy all our keys are made under: an
/// ECC P-256 restricted decryption key with AES-128-CFB, as the TCG's storage
/// root key templates have it. The template is fixed, so the TPM derives the
/// same primary from the owner seed every time.
fn primary_template() -> Result<Public, TpmError> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()
        .map_err(cmd("building the primary template"))?;
    let params = PublicEccParametersBuilder::new()
        .with_symmetric(SymmetricDefinitionObject::AES_128_CFB)
        .with_ecc_scheme(EccScheme::Null)
        .with_curve(EccCurve::NistP256)
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .with_is_signing_key(false)
        .with_is_decryption_key(true)
        .with_restricted(true)
        .build()
        .map_err(cmd("building the primary template"))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_ecc_parameters(params)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(cmd("building the primary template"))
}

/// The device key's template: an unrestricted ECDSA-SHA256 P-256 signing key.
fn key_template() -> Result<Public, TpmError> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_restricted(false)
        .build()
        .map_err(cmd("building the key template"))?;
    let params = PublicEccParametersBuilder::new_unrestricted_signing_key(
        EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
        EccCurve::NistP256,
    )
    .build()
    .map_err(cmd("building the key template"))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_ecc_parameters(params)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(cmd("building the key template"))
}

impl Tpm {
    /// Connect to the TPM the TCTI string names.
    pub fn open(tcti: &str) -> Result<Arc<Self>, TpmError> {
        let conf = TctiNameConf::from_str(tcti)
            .map_err(|e| TpmError::BadTcti { tcti: tcti.to_string(), detail: e.to_string() })?;
        // The TSS says little more than "response code not recognized" when
        // nothing is there: look first, to say what is missing.
        if let Some(detail) = absent(tcti) {
            return Err(TpmError::Unreachable { tcti: tcti.to_string(), detail });
        }
        let mut ctx =
            Context::new(conf).map_err(|e| TpmError::Unreachable { tcti: tcti.to_string(), detail: e.to_string() })?;
        // A first command proves that a TPM answers (some TCTIs connect lazily).
        ctx.get_random(8).map_err(|e| TpmError::Unreachable { tcti: tcti.to_string(), detail: e.to_string() })?;
        Ok(Arc::new(Self { ctx: Mutex::new(ctx), tcti: tcti.to_string() }))
    }

    /// The TCTI string this connection was opened with.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    fn lock(&self) -> MutexGuard<'_, Context> {
        // A panic while holding the lock leaves the context usable: flushes are per object.
        self.ctx.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `f` with the primary loaded, flushing it afterwards whatever happened.
    fn with_primary<T>(
        ctx: &mut Context,
        f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let primary = ctx
            .execute_with_nullauth_session(|c| {
                c.create_primary(Hierarchy::Owner, primary_template()?, None, None, None, None).map_err(|e| {
                    TpmError::Command {
                        what: "creating the storage primary key (the owner hierarchy's authorisation must be empty)",
                        detail: e.to_string(),
                    }
                })
            })?
            .key_handle;
        let r = f(ctx, primary);
        if let Err(e) = ctx.flush_context(primary.into()) {
            if r.is_ok() {
                return Err(cmd("flushing the primary key")(e));
            }
        }
        r
    }

    /// Make a new signing key in the TPM and load it.
    pub fn create_key(self: &Arc<Self>) -> Result<TpmKey, TpmError> {
        let mut ctx = self.lock();
        let created = Self::with_primary(&mut ctx, |ctx, primary| {
            ctx.execute_with_nullauth_session(|c| {
                c.create(primary, key_template()?, None, None, None, None).map_err(cmd("creating the key"))
            })
        })?;
        let blob = encode_blob(&created.out_public, &created.out_private)?;
        drop(ctx);
        self.load_key(&blob)
    }

    /// The endorsement key's public key, as a DER subjectPublicKeyInfo: the
    /// EK the TPM derives from its endorsement seed with the TCG default ECC
    /// P-256 template (EK Credential Profile, template L-2), the one a
    /// manufacturer registers for the device (`batch add-ek`).
    pub fn ek_public(&self) -> Result<Vec<u8>, TpmError> {
        let mut ctx = self.lock();
        Self::with_ek(&mut ctx, |ctx, ek| {
            let (public, _, _) = ctx.read_public(ek).map_err(cmd("reading the endorsement key"))?;
            spki_of(&public)
        })
    }

    /// Run `f` with the endorsement key loaded, flushing it afterwards.
    fn with_ek<T>(
        ctx: &mut Context,
        f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let template = tss_esapi::abstraction::ek::create_ek_public_from_default_template(
            tss_esapi::interface_types::algorithm::AsymmetricAlgorithm::Ecc,
            None,
        )
        .map_err(cmd("building the endorsement key template"))?;
        let ek = ctx
            .execute_with_nullauth_session(|c| {
                c.create_primary(Hierarchy::Endorsement, template, None, None, None, None)
            })
            .map_err(|e| TpmError::Command {
                what: "creating the endorsement key (the endorsement hierarchy's authorisation must be empty)",
                detail: e.to_string(),
            })?
            .key_handle;
        let r = f(ctx, ek);
        if let Err(e) = ctx.flush_context(ek.into()) {
            if r.is_ok() {
                return Err(cmd("flushing the endorsement key")(e));
            }
        }
        r
    }

    /// Load a key from its blob ([`TpmKey::blob`]).
    pub fn load_key(self: &Arc<Self>, blob: &[u8]) -> Result<TpmKey, TpmError> {
        let (public, private) = decode_blob(blob)?;
        let spki = spki_of(&public)?;
        let mut ctx = self.lock();
        let handle = Self::with_primary(&mut ctx, |ctx, primary| {
            ctx.execute_with_nullauth_session(|c| c.load(primary, private, public)).map_err(|e| {
                TpmError::BadBlob(format!(
                    "this TPM refused to load it ({e}): it is damaged, or was made by another TPM or after the \
                     owner hierarchy was cleared"
                ))
            })
        })?;
        Ok(TpmKey { tpm: self.clone(), handle, spki, blob: blob.to_vec() })
    }
}

/// Why nothing can be at `tcti`, when that can be seen without the TSS: a
/// device file missing or not openable, nothing listening at a simulator's
/// address. `None`: go ahead (or a TCTI we do not look into, such as tabrmd).
fn absent(tcti: &str) -> Option<String> {
    let (name, conf) = tcti.split_once(':').unwrap_or((tcti, ""));
    match name {
        "device" => {
            let path = if conf.is_empty() { "/dev/tpm0" } else { conf };
            match std::fs::OpenOptions::new().read(true).write(true).open(path) {
                Ok(_) => None,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Some(format!("{path} does not exist: this machine has no TPM, or its driver is not loaded"))
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Some(format!(
                    "cannot open {path}: permission denied (run as a member of the group that owns it, usually tss)"
                )),
                // Busy (/dev/tpm0 has one user at a time) and the like: let the TSS say.
                Err(_) => None,
            }
        }
        "swtpm" | "mssim" => {
            let (mut host, mut port) = ("localhost".to_string(), 2321u16);
            for kv in conf.split(',').filter(|kv| !kv.is_empty()) {
                match kv.split_once('=') {
                    Some(("host", h)) => host = h.to_string(),
                    Some(("port", p)) => port = p.parse().ok()?,
                    _ => return None,
                }
            }
            let addrs = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port));
            let addrs: Vec<_> = match addrs {
                Ok(a) => a.collect(),
                Err(e) => return Some(format!("cannot resolve {host}: {e}")),
            };
            let mut last = None;
            for a in &addrs {
                match std::net::TcpStream::connect_timeout(a, std::time::Duration::from_secs(10)) {
                    Ok(_) => return None,
                    Err(e) => last = Some(e),
                }
            }
            last.map(|e| format!("nothing answers at {host}:{port} ({e})"))
        }
        _ => None,
    }
}

/// Errors inside `execute_with_nullauth_session` closures become ours.
impl From<tss_esapi::Error> for TpmError {
    fn from(e: tss_esapi::Error) -> Self {
        TpmError::Command { what: "a command", detail: e.to_string() }
    }
}

fn tpm2b(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), TpmError> {
    let n = u16::try_from(bytes.len()).map_err(|_| TpmError::Unexpected("a TPM2B larger than 64 KiB".into()))?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

fn take_tpm2b<'a>(rest: &mut &'a [u8], what: &str) -> Result<&'a [u8], TpmError> {
    let short = || TpmError::BadBlob(format!("it ends inside its {what} (truncated or damaged)"));
    let (len, tail) = rest.split_first_chunk::<2>().ok_or_else(short)?;
    let n = u16::from_be_bytes(*len) as usize;
    if tail.len() < n {
        return Err(short());
    }
    let (v, tail) = tail.split_at(n);
    *rest = tail;
    Ok(v)
}

/// `magic || TPM2B_PUBLIC || TPM2B_PRIVATE` (the two as tpm2-tools writes them).
fn encode_blob(public: &Public, private: &Private) -> Result<Vec<u8>, TpmError> {
    let mut out = BLOB_MAGIC.to_vec();
    tpm2b(&public.marshall().map_err(cmd("marshalling the public area"))?, &mut out)?;
    tpm2b(private.value(), &mut out)?;
    Ok(out)
}

fn decode_blob(blob: &[u8]) -> Result<(Public, Private), TpmError> {
    let mut rest = blob
        .strip_prefix(BLOB_MAGIC)
        .ok_or_else(|| TpmError::BadBlob("it does not begin as an iotpki TPM key blob does (damaged?)".into()))?;
    let public = take_tpm2b(&mut rest, "public area")?;
    let private = take_tpm2b(&mut rest, "private area")?;
    if !rest.is_empty() {
        return Err(TpmError::BadBlob(format!("{} bytes follow the key (damaged?)", rest.len())));
    }
    let public = Public::unmarshall(public)
        .map_err(|e| TpmError::BadBlob(format!("its public area does not parse ({e}): damaged")))?;
    let private = Private::try_from(private.to_vec())
        .map_err(|e| TpmError::BadBlob(format!("its private area does not parse ({e}): damaged")))?;
    Ok((public, private))
}

/// The public area's point as a DER subjectPublicKeyInfo (P-256 only).
fn spki_of(public: &Public) -> Result<Vec<u8>, TpmError> {
    let Public::Ecc { parameters, unique, .. } = public else {
        return Err(TpmError::BadBlob("the key is not an ECC key".into()));
    };
    if parameters.ecc_curve() != EccCurve::NistP256 {
        return Err(TpmError::BadBlob(format!("the key is on {:?}, not P-256", parameters.ecc_curve())));
    }
    let (x, y) = (unique.x().value(), unique.y().value());
    if x.len() > 32 || y.len() > 32 {
        return Err(TpmError::BadBlob("the public point is longer than P-256's".into()));
    }
    // TPM2B_ECC_PARAMETERs may drop leading zeros: pad each coordinate to 32 bytes.
    let mut point = vec![0x04];
    point.extend(std::iter::repeat_n(0, 32 - x.len()));
    point.extend_from_slice(x);
    point.extend(std::iter::repeat_n(0, 32 - y.len()));
    point.extend_from_slice(y);
    let spki = SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: rfc5912::ID_EC_PUBLIC_KEY,
            parameters: Some(der::Any::from(der::asn1::AnyRef::from(&rfc5912::SECP_256_R_1))),
        },
        subject_public_key: BitString::from_bytes(&point).map_err(|e| TpmError::Unexpected(e.to_string()))?,
    };
    spki.to_der().map_err(|e| TpmError::Unexpected(format!("public key: {e}")))
}

/// A P-256 signing key loaded in the TPM (flushed when dropped).
pub struct TpmKey {
    tpm: Arc<Tpm>,
    handle: KeyHandle,
    spki: Vec<u8>,
    blob: Vec<u8>,
}

impl fmt::Debug for TpmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TpmKey({}, {})", self.tpm.tcti, iotpki_core::keys::spki_fingerprint(&self.spki))
    }
}

impl TpmKey {
    /// The key as the caller keeps it: its public area and its TPM-wrapped
    /// private area (`magic || TPM2B_PUBLIC || TPM2B_PRIVATE`). Only this
    /// TPM can load it.
    pub fn blob(&self) -> &[u8] {
        &self.blob
    }

    /// The key's public area, a marshalled TPMT_PUBLIC (what its Name is the hash of).
    pub fn public_area(&self) -> Result<Vec<u8>, TpmError> {
        let (public, _) = decode_blob(&self.blob)?;
        public.marshall().map_err(cmd("marshalling the public area"))
    }

    /// TPM2_ActivateCredential: recover the secret of a credential made for
    /// this key's Name and this TPM's endorsement key
    /// (`iotpki_core::tpm::make_credential`). Only this TPM, with this key
    /// loaded, can: that proves to whoever made the credential that the key
    /// is in the TPM whose EK they know.
    pub fn activate_credential(&self, credential_blob: &[u8], encrypted_secret: &[u8]) -> Result<Vec<u8>, TpmError> {
        use tss_esapi::constants::SessionType;
        use tss_esapi::handles::SessionHandle;
        use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
        use tss_esapi::structures::{EncryptedSecret, IdObject, SymmetricDefinition};
        let blob = IdObject::try_from(credential_blob.to_vec())
            .map_err(|e| TpmError::Unexpected(format!("credential blob: {e}")))?;
        let secret = EncryptedSecret::try_from(encrypted_secret.to_vec())
            .map_err(|e| TpmError::Unexpected(format!("encrypted secret: {e}")))?;
        let mut ctx = self.tpm.lock();
        Tpm::with_ek(&mut ctx, |ctx, ek| {
            // The EK is used through its policy: PolicySecret(TPM_RH_ENDORSEMENT).
            let session = ctx
                .start_auth_session(
                    None,
                    None,
                    None,
                    SessionType::Policy,
                    SymmetricDefinition::AES_128_CFB,
                    HashingAlgorithm::Sha256,
                )
                .map_err(cmd("starting a policy session"))?
                .ok_or_else(|| TpmError::Unexpected("no policy session".into()))?;
            ctx.execute_with_temporary_object(SessionHandle::from(session).into(), |ctx, _| {
                let policy = PolicySession::try_from(session)?;
                ctx.execute_with_nullauth_session(|c| {
                    c.policy_secret(
                        policy,
                        tss_esapi::handles::AuthHandle::Endorsement,
                        Default::default(),
                        Default::default(),
                        Default::default(),
                        None,
                    )
                })?;
                ctx.execute_with_sessions((Some(AuthSession::Password), Some(session), None), |c| {
                    c.activate_credential(self.handle, ek, blob, secret)
                })
            })
            .map(|d| d.value().to_vec())
            .map_err(|e| TpmError::Command {
                what: "activating the credential (it was not made for this key and this TPM's endorsement key)",
                detail: e.to_string(),
            })
        })
    }

    /// The key's object attributes as the TPM reports them (TPM2_ReadPublic).
    pub fn attributes(&self) -> Result<KeyAttributes, TpmError> {
        let (public, _, _) = self.tpm.lock().read_public(self.handle).map_err(cmd("reading the key's public area"))?;
        let a = public.object_attributes();
        Ok(KeyAttributes {
            fixed_tpm: a.fixed_tpm(),
            fixed_parent: a.fixed_parent(),
            sensitive_data_origin: a.sensitive_data_origin(),
            user_with_auth: a.user_with_auth(),
            sign: a.sign_encrypt(),
            decrypt: a.decrypt(),
            restricted: a.restricted(),
        })
    }

    fn sign_digest(&self, message: &[u8]) -> Result<Vec<u8>, TpmError> {
        let d = digest::digest(&digest::SHA256, message);
        let digest = Digest::try_from(d.as_ref()).map_err(cmd("taking the digest"))?;
        // An unrestricted key signs any digest: the ticket is the null one (TPM 2.0 Part 3, TPM2_Sign).
        let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        })
        .map_err(cmd("making the null ticket"))?;
        let scheme = SignatureScheme::EcDsa { hash_scheme: HashScheme::new(HashingAlgorithm::Sha256) };
        let sig = self
            .tpm
            .lock()
            .execute_with_nullauth_session(|c| c.sign(self.handle, digest, scheme, ticket))
            .map_err(cmd("signing"))?;
        let Signature::EcDsa(sig) = sig else {
            return Err(TpmError::Unexpected("TPM2_Sign answered with a signature that is not ECDSA".into()));
        };
        ecdsa_der(sig.signature_r().value(), sig.signature_s().value())
    }
}

impl Drop for TpmKey {
    fn drop(&mut self) {
        let _ = self.tpm.lock().flush_context(self.handle.into());
    }
}

/// `r` and `s` (big-endian, as TPMS_SIGNATURE_ECC carries them) as a DER ECDSA-Sig-Value.
fn ecdsa_der(r: &[u8], s: &[u8]) -> Result<Vec<u8>, TpmError> {
    #[derive(der::Sequence)]
    struct EcdsaSig<'a> {
        r: UintRef<'a>,
        s: UintRef<'a>,
    }
    let bad = |e: der::Error| TpmError::Unexpected(format!("ECDSA signature: {e}"));
    let sig = EcdsaSig { r: UintRef::new(r).map_err(bad)?, s: UintRef::new(s).map_err(bad)? };
    sig.to_der().map_err(bad)
}

impl Signer for TpmKey {
    fn key_type(&self) -> KeyType {
        KeyType::EcdsaP256
    }

    fn public_key_der(&self) -> &[u8] {
        &self.spki
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, iotpki_core::Error> {
        self.sign_digest(message).map_err(|e| iotpki_core::Error::Signing(e.to_string()))
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
