//! Our [`Signer`] as a rustls client key, so that the TLS 1.3
//! CertificateVerify is signed by whatever holds the device key (a key file
//! today; a TPM or a PKCS#11 token behind the same trait).

use std::sync::Arc;

use iotpki_core::keys::{KeyType, Signer};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::CertificateDer;
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};

fn scheme_of(kt: KeyType) -> Option<SignatureScheme> {
    match kt {
        KeyType::EcdsaP256 => Some(SignatureScheme::ECDSA_NISTP256_SHA256),
        KeyType::EcdsaP384 => Some(SignatureScheme::ECDSA_NISTP384_SHA384),
        KeyType::Ed25519 => Some(SignatureScheme::ED25519),
        // TLS 1.3 only (draft-ietf-tls-mldsa), which is all a device speaks.
        KeyType::MlDsa44 => Some(SignatureScheme::ML_DSA_44),
        KeyType::MlDsa65 => Some(SignatureScheme::ML_DSA_65),
        KeyType::MlDsa87 => Some(SignatureScheme::ML_DSA_87),
        KeyType::Rsa(_) => None,
    }
}

struct TlsKey(Arc<dyn Signer>);

impl std::fmt::Debug for TlsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsKey({})", self.0.key_type())
    }
}

struct TlsSigner {
    key: Arc<dyn Signer>,
    scheme: SignatureScheme,
}

impl std::fmt::Debug for TlsSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsSigner({:?})", self.scheme)
    }
}

impl SigningKey for TlsKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        let scheme = scheme_of(self.0.key_type())?;
        offered
            .contains(&scheme)
            .then(|| Box::new(TlsSigner { key: self.0.clone(), scheme }) as Box<dyn rustls::sign::Signer>)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        match self.0.key_type() {
            KeyType::Ed25519 => SignatureAlgorithm::ED25519,
            KeyType::Rsa(_) => SignatureAlgorithm::RSA,
            // rustls names no SignatureAlgorithm for ML-DSA (it is used for TLS 1.2 only).
            KeyType::MlDsa44 | KeyType::MlDsa65 | KeyType::MlDsa87 => SignatureAlgorithm::Unknown(0),
            _ => SignatureAlgorithm::ECDSA,
        }
    }
}

impl rustls::sign::Signer for TlsSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.key.sign(message).map_err(|e| rustls::Error::General(e.to_string()))
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

/// Always offers the one device certificate (with its chain).
#[derive(Debug)]
pub(crate) struct DeviceCert(Arc<CertifiedKey>);

impl DeviceCert {
    pub(crate) fn new(chain: Vec<CertificateDer<'static>>, key: Arc<dyn Signer>) -> Self {
        Self(Arc::new(CertifiedKey::new(chain, Arc::new(TlsKey(key)))))
    }
}

impl ResolvesClientCert for DeviceCert {
    fn resolve(&self, _hints: &[&[u8]], schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        // Offer the certificate only if the server accepts our signature scheme.
        self.0.key.choose_scheme(schemes).map(|_| self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
