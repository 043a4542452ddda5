//! Seed inputs for the `bundle`, `voucher`, `crl` and `tpm_public` fuzz targets (run by `scripts/fuzz seeds`):
//! `cargo run -p iotpki-core --example fuzz_seeds -- fuzz/seeds`.
//!
//! Writes `bundle/draft.cbor` (no signatures), `bundle/signed.cbor` (2 of 3: P-384
//! and Ed25519, plus a P-256 key that is not named) and `voucher/chain.cbor`
//! (manufacturer P-256 -> P-384 -> Ed25519 owner).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use iotpki_core::bundle::{Bundle, BundleContent, UnsignedBundle};
use iotpki_core::keys::{key_identifier, KeyType, Signer, SoftKey};
use iotpki_core::name::{DeviceSerial, NameBuilder};
use iotpki_core::profile::{issue, CertParams, Issuer, Profile};
use iotpki_core::voucher::Voucher;

const NOW: i64 = 1_750_000_000;

fn root(cn: &str) -> Vec<u8> {
    let k = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let spki = iotpki_core::asn1::spki::SubjectPublicKeyInfoOwned::try_from(k.public_key_der()).unwrap();
    let n = NameBuilder::default().organization("Seed").unwrap().common_name(cn).unwrap().build();
    let kid = key_identifier(&spki);
    let issuer = Issuer { subject: &n, key_id: &kid, not_after: NOW + 86_400 * 365, signer: &k };
    let p = CertParams {
        profile: Profile::Root,
        serial: iotpki_core::serial::system_random_serial(NOW).unwrap().0,
        subject: n.clone(),
        spki,
        not_before: NOW,
        not_after: NOW + 86_400 * 365,
        dns_names: vec![],
        ip_addrs: vec![],
        permitted_subtree: None,
    };
    issue(&p, &issuer).unwrap().der
}

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/seeds".into()));
    let keys: Vec<SoftKey> = [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Ed25519, KeyType::EcdsaP256]
        .into_iter()
        .map(|kt| SoftKey::generate(kt).unwrap())
        .collect();

    let content = BundleContent {
        version: 3,
        issued_at: NOW,
        expires_at: NOW + 86_400 * 30,
        anchors: vec![root("Seed Root A"), root("Seed Root B")],
        servers: vec!["est.example.com".into(), "192.0.2.1".into()],
        threshold: 2,
        signers: keys[..3].iter().map(|k| k.public_key_der().to_vec()).collect(),
    };
    let draft = UnsignedBundle::new(content).unwrap().encode();
    let mut signed = Bundle::decode(&draft).unwrap();
    for k in &keys[1..] {
        signed.add_signature(k).unwrap();
    }
    std::fs::create_dir_all(out.join("bundle")).unwrap();
    std::fs::write(out.join("bundle/draft.cbor"), &draft).unwrap();
    std::fs::write(out.join("bundle/signed.cbor"), signed.encode()).unwrap();

    let serial = DeviceSerial::parse("SEED-1").unwrap();
    let birth = root("SEED-1 birth");
    let mut v = Voucher::first(&keys[0], &serial, &birth, keys[1].public_key_der(), NOW, NOW + 86_400).unwrap();
    v.extend(&keys[1], keys[2].public_key_der(), NOW + 60, NOW + 86_400).unwrap();
    std::fs::create_dir_all(out.join("voucher")).unwrap();
    std::fs::write(out.join("voucher/chain.cbor"), v.encode()).unwrap();

    // A CA and two CRLs it signed, current at the crl target's fixed time (1_800_000_000).
    let ca_key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let spki = iotpki_core::asn1::spki::SubjectPublicKeyInfoOwned::try_from(ca_key.public_key_der()).unwrap();
    let n = NameBuilder::default().organization("Seed").unwrap().common_name("Seed CRL CA").unwrap().build();
    let kid = key_identifier(&spki);
    let issuer = Issuer { subject: &n, key_id: &kid, not_after: 2_100_000_000, signer: &ca_key };
    let p = CertParams {
        profile: Profile::Root,
        serial: iotpki_core::serial::system_random_serial(NOW).unwrap().0,
        subject: n.clone(),
        spki,
        not_before: NOW,
        not_after: 2_100_000_000,
        dns_names: vec![],
        ip_addrs: vec![],
        permitted_subtree: None,
    };
    std::fs::create_dir_all(out.join("crl")).unwrap();
    std::fs::write(out.join("crl/issuer.der"), issue(&p, &issuer).unwrap().der).unwrap();
    let revoked = [
        iotpki_core::crl::Revoked { serial: "01aa".into(), at: 1_799_000_000, reason: 1 },
        iotpki_core::crl::Revoked { serial: "01bb".into(), at: 1_799_000_001, reason: 0 },
    ];
    let crl = iotpki_core::crl::build(&issuer, 7, 1_799_990_000, 1_800_086_400, &revoked).unwrap();
    std::fs::write(out.join("crl/current.der"), crl).unwrap();
    let empty = iotpki_core::crl::build(&issuer, 8, 1_799_990_000, 1_800_086_400, &[]).unwrap();
    std::fs::write(out.join("crl/empty.der"), empty).unwrap();
    // A shard of a partitioned CRL (critical issuingDistributionPoint), and a shard path.
    let url = format!("http://pki.example{}", iotpki_core::crl::shard_path("operational", 64, 7));
    let shard = iotpki_core::crl::build_scoped(&issuer, 9, 1_799_990_000, 1_800_086_400, &revoked, Some(&url)).unwrap();
    std::fs::write(out.join("crl/shard.der"), shard).unwrap();
    std::fs::write(out.join("crl/path.txt"), "operational/64/7.crl").unwrap();

    // TPM public areas (TPMT_PUBLIC) of P-256 keys: a device key as the TPM
    // keystore makes it, and a restricted decryption key (an EK's shape).
    std::fs::create_dir_all(out.join("tpm_public")).unwrap();
    let device = 0x0000_0002 | 0x0000_0010 | 0x0000_0020 | 0x0000_0040 | 0x0004_0000;
    let ek = 0x0000_0002 | 0x0000_0010 | 0x0000_0020 | 0x0000_0080 | 0x0001_0000 | 0x0002_0000;
    std::fs::write(out.join("tpm_public/device-key.bin"), tpm_public(device, &keys[0], false)).unwrap();
    std::fs::write(out.join("tpm_public/ek.bin"), tpm_public(ek, &keys[3], true)).unwrap();
    println!("bundle, voucher, CRL and TPM public area seeds written to {}", out.display());
}

/// A marshalled TPMT_PUBLIC for the P-256 key `k`: ECDSA/SHA-256 signing, or
/// (`ek`) restricted decryption with AES-128-CFB and the TCG EK policy digest.
fn tpm_public(attributes: u32, k: &SoftKey, ek: bool) -> Vec<u8> {
    let spki = iotpki_core::asn1::spki::SubjectPublicKeyInfoOwned::try_from(k.public_key_der()).unwrap();
    let point = spki.subject_public_key.raw_bytes().to_vec();
    let mut v = vec![0x00, 0x23, 0x00, 0x0b];
    v.extend_from_slice(&attributes.to_be_bytes());
    if ek {
        v.extend_from_slice(&32u16.to_be_bytes());
        v.extend_from_slice(&[0x83; 32]);
        v.extend_from_slice(&[0x00, 0x06, 0x00, 0x80, 0x00, 0x43]); // AES-128-CFB
        v.extend_from_slice(&[0x00, 0x10]); // scheme: null
    } else {
        v.extend_from_slice(&[0, 0]); // no policy
        v.extend_from_slice(&[0x00, 0x10]); // symmetric: null
        v.extend_from_slice(&[0x00, 0x18, 0x00, 0x0b]); // ECDSA with SHA-256
    }
    v.extend_from_slice(&[0x00, 0x03, 0x00, 0x10]); // P-256, no KDF
    for c in [&point[1..33], &point[33..65]] {
        v.extend_from_slice(&32u16.to_be_bytes());
        v.extend_from_slice(c);
    }
    v
}
