//! The device's P-256 (core::ec_p256, on RustCrypto's arithmetic in the ring
//! build) against ring's own, on what faces files and the network: a PKCS#8 key
//! file must be accepted or refused exactly as ring does it (the same public
//! key, the same `KeyRejected` name), an ECDSA signature and an ECDH peer point
//! accepted exactly when ring accepts them; nothing panics.
#![no_main]
use iotpki_core::ec_p256;
use libfuzzer_sys::fuzz_target;
use ring::{agreement as ag, digest, rand::SystemRandom, signature as rs};

/// One fixed P-256 key (PKCS#8 v1 as ring writes it), for the signature cases.
fn key() -> &'static (Vec<u8>, Vec<u8>) {
    static KEY: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let doc = ec_p256::KeyPair::generate_pkcs8().unwrap();
        let public = ec_p256::KeyPair::from_pkcs8(&doc).unwrap().public_key().to_vec();
        (doc.to_vec(), public)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let rng = SystemRandom::new();
    match mode % 4 {
        0 => {
            let ours = ec_p256::KeyPair::from_pkcs8(rest).map(|k| k.public_key().to_vec()).map_err(|e| e.to_string());
            let theirs = rs::EcdsaKeyPair::from_pkcs8(&rs::ECDSA_P256_SHA256_ASN1_SIGNING, rest, &rng)
                .map(|k| rs::KeyPair::public_key(&k).as_ref().to_vec())
                .map_err(|e| e.to_string());
            assert_eq!(ours, theirs);
        }
        1 | 2 => {
            // A signature over a fixed message, by the fixed key or by a point from the input.
            let (_, public) = key();
            let (point, sig) = if mode % 4 == 1 { (&public[..], rest) } else { rest.split_at(rest.len().min(65)) };
            let m = b"message";
            let ours = ec_p256::verify_digest(point, digest::digest(&digest::SHA256, m).as_ref(), sig);
            let theirs = rs::UnparsedPublicKey::new(&rs::ECDSA_P256_SHA256_ASN1, point).verify(m, sig).is_ok();
            assert_eq!(ours, theirs);
        }
        _ => {
            // An ECDH peer point: accepted exactly when ring accepts it.
            let ours = ec_p256::Ephemeral::generate().unwrap().agree(rest).is_some();
            let mine = ag::EphemeralPrivateKey::generate(&ag::ECDH_P256, &rng).unwrap();
            let theirs = ag::agree_ephemeral(mine, &ag::UnparsedPublicKey::new(&ag::ECDH_P256, rest), |_| ()).is_ok();
            assert_eq!(ours, theirs);
        }
    }
});
