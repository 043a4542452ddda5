//! P-256 in the device's ring build for TLS and certificate paths: the
//! secp256r1 key exchange group and ECDSA P-256 signature verification for
//! rustls and webpki, on [`iotpki_core::ec_p256`] (RustCrypto's arithmetic)
//! instead of ring's, whose 151 KB precomputed table the device would otherwise
//! link (issue #16). They accept and refuse what ring's did: uncompressed points
//! on the curve, DER signatures with minimal INTEGERs in [1, n).

use iotpki_core::ec_p256;
use ring::digest;
use rustls::crypto::{ActiveKeyExchange, SharedSecret, SupportedKxGroup};
use rustls::pki_types::{alg_id, AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm};
use rustls::{Error, NamedGroup, PeerMisbehaved};

/// ECDH on secp256r1, for a [`rustls::crypto::CryptoProvider`]'s `kx_groups`.
pub static SECP256R1: &dyn SupportedKxGroup = &Secp256r1;

#[derive(Debug)]
struct Secp256r1;

impl SupportedKxGroup for Secp256r1 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let key = ec_p256::Ephemeral::generate().map_err(|_| rustls::crypto::GetRandomFailed)?;
        Ok(Box::new(Active(key)))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::secp256r1
    }
}

struct Active(ec_p256::Ephemeral);

impl ActiveKeyExchange for Active {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, Error> {
        let secret = self.0.agree(peer_pub_key).ok_or(Error::from(PeerMisbehaved::InvalidKeyShare))?;
        Ok(SharedSecret::from(&secret[..]))
    }

    fn pub_key(&self) -> &[u8] {
        self.0.public_key()
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::secp256r1
    }
}

/// ECDSA with a P-256 key, the message hashed with `digest`.
#[derive(Debug)]
struct EcdsaP256 {
    signature_alg_id: AlgorithmIdentifier,
    digest: &'static digest::Algorithm,
}

impl SignatureVerificationAlgorithm for EcdsaP256 {
    fn verify_signature(&self, public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), InvalidSignature> {
        let hash = digest::digest(self.digest, message);
        ec_p256::verify_digest(public_key, hash.as_ref(), signature).then_some(()).ok_or(InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_P256
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.signature_alg_id
    }
}

/// webpki's `ring::ECDSA_P256_SHA256`, on [`ec_p256`].
pub static ECDSA_P256_SHA256: &dyn SignatureVerificationAlgorithm =
    &EcdsaP256 { signature_alg_id: alg_id::ECDSA_SHA256, digest: &digest::SHA256 };

/// webpki's `ring::ECDSA_P256_SHA384`, on [`ec_p256`].
pub static ECDSA_P256_SHA384: &dyn SignatureVerificationAlgorithm =
    &EcdsaP256 { signature_alg_id: alg_id::ECDSA_SHA384, digest: &digest::SHA384 };

#[cfg(test)]
mod tests {
    //! Against webpki's and rustls' ring P-256 (still in a test build).
    use super::*;
    use iotpki_core::keys::{KeyType, Signer as _, SoftKey};

    #[test]
    fn verifies_what_webpki_ring_verifies() {
        let key = SoftKey::generate(KeyType::EcdsaP256).expect("key");
        let spki = key.public_key_der();
        // The point: the last 65 octets of the subjectPublicKeyInfo.
        let point = &spki[spki.len() - 65..];
        let m = b"to be signed";
        let sig = key.sign(m).expect("sign");
        for (ours, theirs) in
            [(ECDSA_P256_SHA256, webpki::ring::ECDSA_P256_SHA256), (ECDSA_P256_SHA384, webpki::ring::ECDSA_P256_SHA384)]
        {
            assert_eq!(ours.public_key_alg_id(), theirs.public_key_alg_id());
            assert_eq!(ours.signature_alg_id(), theirs.signature_alg_id());
            for s in [sig.clone(), [&sig[..], &[0]].concat(), sig[..sig.len() - 1].to_vec()] {
                for msg in [&m[..], b"another"] {
                    assert_eq!(
                        ours.verify_signature(point, msg, &s).is_ok(),
                        theirs.verify_signature(point, msg, &s).is_ok()
                    );
                }
            }
        }
        assert!(ECDSA_P256_SHA256.verify_signature(point, m, &sig).is_ok());
        assert!(ECDSA_P256_SHA384.verify_signature(point, m, &sig).is_err());
    }

    #[test]
    fn key_exchange_agrees_with_rustls_ring() {
        let ours = SECP256R1.start().expect("start");
        let theirs = rustls::crypto::ring::kx_group::SECP256R1.start().expect("start");
        assert_eq!(ours.group(), theirs.group());
        let their_pub = theirs.pub_key().to_vec();
        let our_pub = ours.pub_key().to_vec();
        let a = ours.complete(&their_pub).expect("ours");
        let b = theirs.complete(&our_pub).expect("theirs");
        assert_eq!(a.secret_bytes(), b.secret_bytes());
        let mut bad = their_pub;
        bad[64] ^= 1;
        assert!(matches!(
            SECP256R1.start().expect("start").complete(&bad),
            Err(Error::PeerMisbehaved(PeerMisbehaved::InvalidKeyShare))
        ));
    }
}
