//! Keys in a PKCS#11 token (an HSM, a smart card, SoftHSM2) behind the
//! [`Signer`] trait, through the `cryptoki` crate.
//!
//! - [`Pkcs11Uri`]: RFC 7512 URIs naming a token and a key in it.
//! - [`Token`]: a loaded module and one of its tokens, found by label.
//! - [`HsmKey`]: a key pair generated inside the token (private key
//!   `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE`, not `CKA_EXTRACTABLE`) with
//!   its own logged-in session behind a mutex (PKCS#11 sessions must not be
//!   used from two threads at once). ECDSA signs a digest computed here
//!   (`CKM_ECDSA`), and the raw `r || s` answer is re-encoded as DER;
//!   Ed25519 uses `CKM_EDDSA` where the token offers it.
//!
//! A module is loaded and `C_Initialize`d once per process and never
//! finalised: every token and key of that module shares it.

#![forbid(unsafe_code)]

mod uri;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use aws_lc_rs::digest;
use const_oid::db::{rfc5912, rfc8410};
use const_oid::ObjectIdentifier;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use der::asn1::{BitString, OctetStringRef, UintRef};
use der::{Decode, Encode};
use iotpki_core::keys::{KeyType, Signer};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

pub use uri::Pkcs11Uri;

/// The environment variable a PIN is read from when no PIN file is given.
pub const PIN_ENV: &str = "IOTPKI_PIN";

/// What went wrong with a token, said so that the operator knows what to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum HsmError {
    /// The PKCS#11 module could not be loaded or initialised.
    Module {
        /// The module path.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// No token with this label is present.
    TokenNotFound {
        /// The label looked for.
        label: String,
        /// The labels of the tokens that are present.
        present: Vec<String>,
        /// The module searched.
        module: PathBuf,
    },
    /// The token refused the PIN.
    WrongPin {
        /// The token label.
        token: String,
    },
    /// The token is locked after too many wrong PINs.
    PinLocked {
        /// The token label.
        token: String,
    },
    /// The key object is not (or no longer) in the token.
    KeyMissing {
        /// The token label.
        token: String,
        /// The key's URI.
        key: String,
    },
    /// The token cannot do what was asked (a mechanism it does not offer).
    Unsupported(String),
    /// A malformed PKCS#11 URI.
    Uri(String),
    /// The PIN could not be read.
    Pin(String),
    /// Another PKCS#11 failure.
    Pkcs11 {
        /// What we were doing.
        what: String,
        /// The module's answer.
        error: CkError,
    },
}

impl fmt::Display for HsmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Module { path, detail } => write!(
                f,
                "cannot use the PKCS#11 module {}: {detail}; give the vendor's module with --pkcs11-module \
                 (SoftHSM2: apt-get install softhsm2, /usr/lib/softhsm/libsofthsm2.so)",
                path.display()
            ),
            Self::TokenNotFound { label, present, module } => {
                write!(f, "no token labelled {label:?} in PKCS#11 module {}; ", module.display())?;
                if present.is_empty() {
                    f.write_str("the module shows no initialised token (SoftHSM2: softhsm2-util --init-token --free --label LABEL; check SOFTHSM2_CONF)")
                } else {
                    write!(
                        f,
                        "tokens present: {}",
                        present.iter().map(|l| format!("{l:?}")).collect::<Vec<_>>().join(", ")
                    )
                }
            }
            Self::WrongPin { token } => write!(
                f,
                "token {token:?} refused the PIN: check --pin-file / ${PIN_ENV} (repeated wrong PINs lock the token)"
            ),
            Self::PinLocked { token } => {
                write!(
                    f,
                    "token {token:?} is locked after too many wrong PINs: its security officer must reset the PIN"
                )
            }
            Self::KeyMissing { token, key } => write!(
                f,
                "key {key} is not in token {token:?}: it was deleted or the token was replaced; \
                 restore the token from its backup (a new key cannot match the existing certificates)"
            ),
            Self::Unsupported(m) => f.write_str(m),
            Self::Uri(m) => write!(f, "PKCS#11 URI {m}"),
            Self::Pin(m) => f.write_str(m),
            Self::Pkcs11 { what, error } => write!(f, "PKCS#11: {what}: {error}"),
        }
    }
}

impl std::error::Error for HsmError {}

fn ck(what: impl Into<String>) -> impl FnOnce(CkError) -> HsmError {
    let what = what.into();
    move |error| HsmError::Pkcs11 { what, error }
}

/// A token's user PIN. Never printed.
#[derive(Clone)]
pub struct Pin(String);

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(..)")
    }
}

impl Pin {
    /// Wrap a PIN; refuses an empty one.
    pub fn new(s: &str) -> Result<Self, HsmError> {
        let s = s.trim_end_matches(['\r', '\n']);
        if s.is_empty() {
            return Err(HsmError::Pin("the token PIN is empty".into()));
        }
        Ok(Self(s.to_string()))
    }

    /// From the first line of `path`, or else from `$IOTPKI_PIN`.
    pub fn from_file_or_env(path: Option<&Path>) -> Result<Self, HsmError> {
        if let Some(p) = path {
            let text = std::fs::read_to_string(p)
                .map_err(|e| HsmError::Pin(format!("cannot read the PIN file {}: {e}", p.display())))?;
            return Self::new(text.lines().next().unwrap_or_default())
                .map_err(|_| HsmError::Pin(format!("the PIN file {} is empty", p.display())));
        }
        match std::env::var(PIN_ENV) {
            Ok(v) => Self::new(&v),
            Err(_) => Err(HsmError::Pin(format!("no token PIN: set ${PIN_ENV} or pass --pin-file FILE"))),
        }
    }
}

static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();

/// Load and initialise the module at `path`, once per process.
fn module(path: &Path) -> Result<Pkcs11, HsmError> {
    let err = |detail: String| HsmError::Module { path: path.to_path_buf(), detail };
    if !path.is_file() {
        return Err(err("no such file".into()));
    }
    let key = path.canonicalize().map_err(|e| err(e.to_string()))?;
    let mut map = MODULES.get_or_init(Default::default).lock().map_err(|_| err("module table poisoned".into()))?;
    if let Some(m) = map.get(&key) {
        return Ok(m.clone());
    }
    let m = Pkcs11::new(&key).map_err(|e| err(format!("not a loadable PKCS#11 library ({e})")))?;
    match m.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(err(format!(
                "C_Initialize failed ({e}); for SoftHSM2, SOFTHSM2_CONF must name a readable softhsm2.conf"
            )))
        }
    }
    map.insert(key, m.clone());
    Ok(m)
}

/// A token of a loaded module, found by its label.
#[derive(Clone)]
pub struct Token {
    ctx: Pkcs11,
    slot: Slot,
    label: String,
    module: PathBuf,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token").field("label", &self.label).field("module", &self.module).finish()
    }
}

impl Token {
    /// Load `module` and find the token `uri` names (`token=` is required;
    /// `serial=`, `manufacturer=` and `model=` narrow the choice).
    pub fn open(module_path: &Path, uri: &Pkcs11Uri) -> Result<Self, HsmError> {
        let label = uri.token_label()?.to_string();
        let ctx = module(module_path)?;
        let mut present = Vec::new();
        for slot in ctx.get_slots_with_token().map_err(ck("listing slots"))? {
            let info = ctx.get_token_info(slot).map_err(ck("reading token information"))?;
            if !info.token_initialized() {
                continue;
            }
            let l = info.label().trim_end().to_string();
            let same = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have.trim_end());
            if l == label
                && same(&uri.serial, info.serial_number())
                && same(&uri.manufacturer, info.manufacturer_id())
                && same(&uri.model, info.model())
            {
                return Ok(Self { ctx, slot, label, module: module_path.to_path_buf() });
            }
            present.push(l);
        }
        Err(HsmError::TokenNotFound { label, present, module: module_path.to_path_buf() })
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The module's path.
    pub fn module_path(&self) -> &Path {
        &self.module
    }

    /// A read-write session logged in as the user. PKCS#11 login state is
    /// per process and token: once one session is logged in, later logins
    /// answer "already logged in" whatever PIN they carry (so a wrong PIN is
    /// only detected by the first login of a process).
    fn session(&self, pin: &Pin) -> Result<Session, HsmError> {
        let s = self.ctx.open_rw_session(self.slot).map_err(ck(format!("opening a session on {:?}", self.label)))?;
        match s.login(UserType::User, Some(&AuthPin::from(pin.0.clone()))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(s),
            Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange | RvError::PinInvalid, _)) => {
                Err(HsmError::WrongPin { token: self.label.clone() })
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(HsmError::PinLocked { token: self.label.clone() }),
            Err(e) => Err(HsmError::Pkcs11 { what: format!("logging in to {:?}", self.label), error: e }),
        }
    }

    /// Check that `pin` opens the token.
    pub fn check_pin(&self, pin: &Pin) -> Result<(), HsmError> {
        self.session(pin).map(drop)
    }

    /// Whether the token offers mechanism `m` (asked one by one: the whole
    /// list would include vendor mechanisms cryptoki complains about).
    fn offers(&self, m: MechanismType) -> Result<bool, HsmError> {
        match self.ctx.get_mechanism_info(self.slot, m) {
            Ok(_) => Ok(true),
            Err(CkError::Pkcs11(RvError::MechanismInvalid, _)) => Ok(false),
            Err(e) => Err(HsmError::Pkcs11 { what: format!("asking {:?} for mechanism {m}", self.label), error: e }),
        }
    }

    /// Whether the token can generate and sign with keys of type `kt`.
    pub fn supports(&self, kt: KeyType) -> Result<bool, HsmError> {
        let (generate, sign) = match kt {
            KeyType::EcdsaP256 | KeyType::EcdsaP384 => (MechanismType::ECC_KEY_PAIR_GEN, MechanismType::ECDSA),
            KeyType::Ed25519 => (MechanismType::ECC_EDWARDS_KEY_PAIR_GEN, MechanismType::EDDSA),
            // PKCS#11 3.2's CKM_ML_DSA is not in the cryptoki crate we build on.
            KeyType::Rsa(_) | KeyType::MlDsa44 | KeyType::MlDsa65 | KeyType::MlDsa87 => return Ok(false),
        };
        Ok(self.offers(generate)? && self.offers(sign)?)
    }
}

fn curve_oid(kt: KeyType) -> Result<ObjectIdentifier, HsmError> {
    match kt {
        KeyType::EcdsaP256 => Ok(rfc5912::SECP_256_R_1),
        KeyType::EcdsaP384 => Ok(rfc5912::SECP_384_R_1),
        KeyType::Ed25519 => Ok(rfc8410::ID_ED_25519),
        KeyType::Rsa(_) => Err(HsmError::Unsupported("RSA keys are not supported; use p256, p384 or ed25519".into())),
        KeyType::MlDsa44 | KeyType::MlDsa65 | KeyType::MlDsa87 => Err(HsmError::Unsupported(format!(
            "{kt} keys in a PKCS#11 token are not supported (use p256, p384 or ed25519 there, or an ML-DSA key file)"
        ))),
    }
}

/// The length of the raw public key: an uncompressed point, or the Ed25519 key.
fn point_len(kt: KeyType) -> usize {
    match kt {
        KeyType::EcdsaP256 => 65,
        KeyType::EcdsaP384 => 97,
        _ => 32,
    }
}

/// How a private key is protected, as the token reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Protection {
    /// `C_GetAttributeValue(CKA_VALUE)` returned the key (it must not).
    pub value_readable: bool,
    /// CKA_SENSITIVE.
    pub sensitive: bool,
    /// CKA_ALWAYS_SENSITIVE: sensitive since it was made.
    pub always_sensitive: bool,
    /// CKA_EXTRACTABLE: may be wrapped out of the token.
    pub extractable: bool,
    /// CKA_NEVER_EXTRACTABLE: never was extractable.
    pub never_extractable: bool,
    /// CKA_LOCAL: generated in the token (not imported).
    pub local: bool,
}

impl Protection {
    /// Made in the token, never readable or extractable.
    pub fn is_protected(&self) -> bool {
        !self.value_readable
            && self.sensitive
            && self.always_sensitive
            && !self.extractable
            && self.never_extractable
            && self.local
    }
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yn = |b: bool| if b { "yes" } else { "no" };
        write!(
            f,
            "value {}, sensitive {}, always sensitive {}, extractable {}, never extractable {}, generated in token {}",
            if self.value_readable { "READABLE" } else { "refused" },
            yn(self.sensitive),
            yn(self.always_sensitive),
            yn(self.extractable),
            yn(self.never_extractable),
            yn(self.local)
        )
    }
}

/// A key pair in a token, signing through its own logged-in session.
pub struct HsmKey {
    live: Mutex<Live>,
    key_type: KeyType,
    spki: Vec<u8>,
    uri: Pkcs11Uri,
    token: Token,
    pin: Pin,
}

/// The key's session and object handles; replaced when the session is lost.
struct Live {
    session: Session,
    private: ObjectHandle,
    public: ObjectHandle,
}

/// Find the key pair `uri` names: exactly one private key, and its public half.
fn find_pair(session: &Session, token: &str, uri: &Pkcs11Uri) -> Result<(ObjectHandle, ObjectHandle), HsmError> {
    let missing = || HsmError::KeyMissing { token: token.to_string(), key: uri.to_string() };
    let find = |class: ObjectClass| -> Result<Vec<ObjectHandle>, HsmError> {
        let mut tpl = vec![Attribute::Class(class)];
        if let Some(id) = &uri.id {
            tpl.push(Attribute::Id(id.clone()));
        }
        if let Some(l) = &uri.object {
            tpl.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        session.find_objects(&tpl).map_err(ck(format!("looking for {uri}")))
    };
    let private = match find(ObjectClass::PRIVATE_KEY)?.as_slice() {
        [] => return Err(missing()),
        [one] => *one,
        more => {
            return Err(HsmError::Uri(format!(
                "{uri} matches {} private keys in token {token:?}: add id= to name one",
                more.len()
            )))
        }
    };
    let public = *find(ObjectClass::PUBLIC_KEY)?.first().ok_or_else(missing)?;
    Ok((private, public))
}

/// Errors after which a new session (and login) may succeed. An invalid key
/// handle is one of them: private objects vanish from a session whose login
/// was lost; finding the key again tells that apart from a deleted key.
fn session_lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid,
            _
        )
    )
}

impl fmt::Debug for HsmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HsmKey").field("uri", &self.uri.to_string()).field("key_type", &self.key_type).finish()
    }
}

impl HsmKey {
    /// Generate a key pair of type `kt` in the token, labelled `label`, with a
    /// fresh random CKA_ID. The private key never leaves the token.
    pub fn generate(token: &Token, pin: &Pin, kt: KeyType, label: &str) -> Result<Self, HsmError> {
        if !token.supports(kt)? {
            let how = match kt {
                KeyType::Ed25519 => "CKM_EC_EDWARDS_KEY_PAIR_GEN and CKM_EDDSA",
                KeyType::Rsa(_) => {
                    return Err(HsmError::Unsupported("RSA keys are not supported; use p256, p384 or ed25519".into()))
                }
                _ => "CKM_EC_KEY_PAIR_GEN and CKM_ECDSA",
            };
            return Err(HsmError::Unsupported(format!(
                "token {:?} does not offer {how}, so it cannot hold {kt} keys; choose another --key-type",
                token.label
            )));
        }
        let session = token.session(pin)?;
        let mut id = vec![0u8; 16];
        aws_lc_rs::rand::fill(&mut id).map_err(|_| HsmError::Unsupported("the system RNG failed".into()))?;
        let params = curve_oid(kt)?.to_der().map_err(|e| HsmError::Unsupported(format!("curve OID: {e}")))?;
        let (mech, ck_type) = match kt {
            KeyType::Ed25519 => (Mechanism::EccEdwardsKeyPairGen, CkKeyType::EC_EDWARDS),
            _ => (Mechanism::EccKeyPairGen, CkKeyType::EC),
        };
        let label_b = label.as_bytes().to_vec();
        let public_tpl = vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::Derive(false),
            Attribute::EcParams(params),
            Attribute::Label(label_b.clone()),
            Attribute::Id(id.clone()),
        ];
        let private_tpl = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::KeyType(ck_type),
            Attribute::Label(label_b),
            Attribute::Id(id.clone()),
        ];
        let (public, private) = session
            .generate_key_pair(&mech, &public_tpl, &private_tpl)
            .map_err(ck(format!("generating a {kt} key in {:?}", token.label)))?;
        let uri = Pkcs11Uri {
            token: Some(token.label.clone()),
            object: Some(label.to_string()),
            id: Some(id),
            object_type: Some("private".into()),
            ..Default::default()
        };
        let spki = match read_spki(&session, public, kt) {
            Ok(s) => s,
            Err(e) => {
                let _ = session.destroy_object(private);
                let _ = session.destroy_object(public);
                return Err(e);
            }
        };
        Ok(Self {
            live: Mutex::new(Live { session, private, public }),
            key_type: kt,
            spki,
            uri,
            token: token.clone(),
            pin: pin.clone(),
        })
    }

    /// Open the key `uri` names (by `id=` and/or `object=`) in `token`, and
    /// check that it signs what its public key verifies.
    pub fn open(token: &Token, pin: &Pin, uri: &Pkcs11Uri) -> Result<Self, HsmError> {
        if uri.id.is_none() && uri.object.is_none() {
            return Err(HsmError::Uri(format!("{uri} names no key: add object=LABEL or id=...")));
        }
        let session = token.session(pin)?;
        let mut key_uri = uri.clone();
        key_uri.token = Some(token.label.clone());
        key_uri.module_path = None;
        key_uri.object_type = Some("private".into());
        let (private, public) = find_pair(&session, &token.label, &key_uri)?;
        // The curve from the public half (tokens need not copy CKA_EC_PARAMS to the private one).
        let mut attrs =
            session.get_attributes(private, &[AttributeType::KeyType]).map_err(ck(format!("reading {key_uri}")))?;
        attrs.extend(
            session.get_attributes(public, &[AttributeType::EcParams]).map_err(ck(format!("reading {key_uri}")))?,
        );
        let mut ck_type = None;
        let mut params = None;
        for a in attrs {
            match a {
                Attribute::KeyType(t) => ck_type = Some(t),
                Attribute::EcParams(p) => params = Some(p),
                _ => {}
            }
        }
        let kt = match (ck_type, params) {
            (Some(t), Some(p)) if t == CkKeyType::EC || t == CkKeyType::EC_EDWARDS => {
                let oid = ObjectIdentifier::from_der(&p).map_err(|_| {
                    HsmError::Unsupported(format!("{key_uri}: curve parameters are not a named curve OID"))
                })?;
                match oid {
                    o if o == rfc5912::SECP_256_R_1 => KeyType::EcdsaP256,
                    o if o == rfc5912::SECP_384_R_1 => KeyType::EcdsaP384,
                    o if o == rfc8410::ID_ED_25519 => KeyType::Ed25519,
                    o => return Err(HsmError::Unsupported(format!("{key_uri}: curve {o} is not supported"))),
                }
            }
            (t, _) => {
                return Err(HsmError::Unsupported(format!(
                    "{key_uri} is a {t:?} key; only P-256, P-384 and Ed25519 keys are supported"
                )))
            }
        };
        let spki = read_spki(&session, public, kt)?;
        let key = Self {
            live: Mutex::new(Live { session, private, public }),
            key_type: kt,
            spki,
            uri: key_uri,
            token: token.clone(),
            pin: pin.clone(),
        };
        key.self_test()?;
        Ok(key)
    }

    /// Sign a probe and verify it with the public key: the private key is
    /// there and belongs to the public key we report.
    pub fn self_test(&self) -> Result<(), HsmError> {
        let msg = b"iotpki key self-test";
        let sig = self.sign_inner(msg)?;
        let spki = SubjectPublicKeyInfoOwned::from_der(&self.spki)
            .map_err(|e| HsmError::Unsupported(format!("public key of {}: {e}", self.uri)))?;
        let alg = self.key_type.signature_algorithm().map_err(|e| HsmError::Unsupported(e.to_string()))?;
        iotpki_core::keys::verify(&spki, &alg, msg, &sig).map_err(|_| {
            HsmError::Unsupported(format!(
                "{}: the private key's signature does not verify with the public key object of the same id",
                self.uri
            ))
        })
    }

    /// The key's URI (token, label, id; no module, no PIN).
    pub fn uri(&self) -> &Pkcs11Uri {
        &self.uri
    }

    /// What the token says about the private key's protection.
    pub fn protection(&self) -> Result<Protection, HsmError> {
        let live = self.lock()?;
        let (s, private) = (&live.session, live.private);
        let info = s.get_attribute_info(private, &[AttributeType::Value]).map_err(ck("asking for CKA_VALUE"))?;
        let value_readable = !matches!(
            info.first(),
            Some(AttributeInfo::Sensitive | AttributeInfo::Unavailable | AttributeInfo::TypeInvalid)
        );
        let flags = s
            .get_attributes(
                private,
                &[
                    AttributeType::Sensitive,
                    AttributeType::AlwaysSensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                    AttributeType::Local,
                ],
            )
            .map_err(ck("reading the private key's flags"))?;
        let mut p = Protection { value_readable, ..Default::default() };
        for a in flags {
            match a {
                Attribute::Sensitive(v) => p.sensitive = v,
                Attribute::AlwaysSensitive(v) => p.always_sensitive = v,
                Attribute::Extractable(v) => p.extractable = v,
                Attribute::NeverExtractable(v) => p.never_extractable = v,
                Attribute::Local(v) => p.local = v,
                _ => {}
            }
        }
        Ok(p)
    }

    /// Delete both halves of the key pair from the token.
    pub fn destroy(&self) -> Result<(), HsmError> {
        let live = self.lock()?;
        live.session.destroy_object(live.private).map_err(ck(format!("deleting {}", self.uri)))?;
        live.session.destroy_object(live.public).map_err(ck(format!("deleting the public half of {}", self.uri)))
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Live>, HsmError> {
        self.live.lock().map_err(|_| HsmError::Unsupported("session lock poisoned".into()))
    }

    /// Sign; if the session was lost (token reset, logged out, HSM restarted),
    /// log in on a new session, find the key again, and try once more.
    fn sign_inner(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        let mut live = self.lock()?;
        match self.sign_with(&live, message) {
            Err(e) if session_lost(&e) => {
                tracing::warn!(key = %self.uri, error = %e, "PKCS#11 signing failed; logging in again on a new session");
                let session = self.token.session(&self.pin)?;
                let (private, public) = find_pair(&session, &self.token.label, &self.uri)?;
                *live = Live { session, private, public };
                self.sign_with(&live, message).map_err(|e| self.sign_error(e))
            }
            r => r.map_err(|e| self.sign_error(e)),
        }
    }

    fn sign_error(&self, e: CkError) -> HsmError {
        match e {
            CkError::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _) => {
                HsmError::KeyMissing { token: self.token.label.clone(), key: self.uri.to_string() }
            }
            e => HsmError::Pkcs11 { what: format!("signing with {}", self.uri), error: e },
        }
    }

    fn sign_with(&self, live: &Live, message: &[u8]) -> Result<Vec<u8>, CkError> {
        match self.key_type {
            KeyType::EcdsaP256 | KeyType::EcdsaP384 => {
                let (alg, n) =
                    if self.key_type == KeyType::EcdsaP256 { (&digest::SHA256, 32) } else { (&digest::SHA384, 48) };
                let d = digest::digest(alg, message);
                let raw = live.session.sign(&Mechanism::Ecdsa, live.private, d.as_ref())?;
                // A token answering with the wrong length is a device error, not a lost session.
                ecdsa_raw_to_der(&raw, n)
                    .map_err(|_| CkError::Pkcs11(RvError::DeviceError, cryptoki::context::Function::Sign))
            }
            KeyType::Ed25519 => {
                let mech = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
                live.session.sign(&mech, live.private, message)
            }
            KeyType::Rsa(_) | KeyType::MlDsa44 | KeyType::MlDsa65 | KeyType::MlDsa87 => Err(CkError::NotSupported),
        }
    }
}

impl Signer for HsmKey {
    fn key_type(&self) -> KeyType {
        self.key_type
    }

    fn public_key_der(&self) -> &[u8] {
        &self.spki
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, iotpki_core::Error> {
        self.sign_inner(message).map_err(|e| iotpki_core::Error::Signing(e.to_string()))
    }
}

/// The public key object's point as a DER subjectPublicKeyInfo.
fn read_spki(session: &Session, public: ObjectHandle, kt: KeyType) -> Result<Vec<u8>, HsmError> {
    let attrs = session.get_attributes(public, &[AttributeType::EcPoint]).map_err(ck("reading CKA_EC_POINT"))?;
    let point = attrs
        .into_iter()
        .find_map(|a| if let Attribute::EcPoint(p) = a { Some(p) } else { None })
        .ok_or_else(|| HsmError::Unsupported("the public key object has no CKA_EC_POINT".into()))?;
    // PKCS#11 says DER OCTET STRING; some tokens give the raw point.
    let raw = if point.len() == point_len(kt) {
        point
    } else {
        OctetStringRef::from_der(&point).map(|o| o.as_bytes().to_vec()).map_err(|_| {
            HsmError::Unsupported(format!("CKA_EC_POINT of {} bytes is not a {kt} public key", point.len()))
        })?
    };
    if raw.len() != point_len(kt) {
        return Err(HsmError::Unsupported(format!("CKA_EC_POINT of {} bytes is not a {kt} public key", raw.len())));
    }
    let (oid, param) = match kt {
        KeyType::Ed25519 => (rfc8410::ID_ED_25519, None),
        _ => (rfc5912::ID_EC_PUBLIC_KEY, Some(curve_oid(kt)?)),
    };
    let spki = SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid,
            parameters: param.map(|p| der::Any::from(der::asn1::AnyRef::from(&p))),
        },
        subject_public_key: BitString::from_bytes(&raw).map_err(|e| HsmError::Unsupported(e.to_string()))?,
    };
    spki.to_der().map_err(|e| HsmError::Unsupported(format!("public key: {e}")))
}

/// `r || s` (each `n` bytes, as CKM_ECDSA returns them) as a DER ECDSA-Sig-Value.
fn ecdsa_raw_to_der(raw: &[u8], n: usize) -> Result<Vec<u8>, HsmError> {
    #[derive(der::Sequence)]
    struct EcdsaSig<'a> {
        r: UintRef<'a>,
        s: UintRef<'a>,
    }
    if raw.len() != 2 * n {
        return Err(HsmError::Unsupported(format!(
            "the token returned a {}-byte ECDSA signature, expected {}",
            raw.len(),
            2 * n
        )));
    }
    let bad = |e: der::Error| HsmError::Unsupported(format!("ECDSA signature: {e}"));
    let sig = EcdsaSig { r: UintRef::new(&raw[..n]).map_err(bad)?, s: UintRef::new(&raw[n..]).map_err(bad)? };
    sig.to_der().map_err(bad)
}

#[cfg(test)]
mod tests;
