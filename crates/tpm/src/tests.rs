use der::Decode;
use iotpki_core::keys::{verify, KeyType, Signer};
use spki::SubjectPublicKeyInfoOwned;

use super::*;
use crate::swtpm::SwTpm;

fn sim() -> (tempfile::TempDir, SwTpm, Arc<Tpm>) {
    let d = tempfile::tempdir().unwrap();
    let sw = SwTpm::start(&d.path().join("tpm")).unwrap();
    let tpm = Tpm::open(&sw.tcti()).unwrap();
    (d, sw, tpm)
}

fn check_sig(key: &dyn Signer, msg: &[u8], sig: &[u8]) -> Result<(), iotpki_core::Error> {
    let spki = SubjectPublicKeyInfoOwned::from_der(key.public_key_der()).unwrap();
    verify(&spki, &KeyType::EcdsaP256.signature_algorithm().unwrap(), msg, sig)
}

#[test]
fn key_made_in_the_tpm_signs_and_reloads_from_its_blob() {
    let (_d, _sw, tpm) = sim();
    let key = tpm.create_key().unwrap();
    assert_eq!(key.key_type(), KeyType::EcdsaP256);
    let sig = key.sign(b"hello").unwrap();
    check_sig(&key, b"hello", &sig).unwrap();
    assert!(check_sig(&key, b"hellO", &sig).is_err(), "the signature is over the message");

    let a = key.attributes().unwrap();
    assert!(a.fixed_tpm && a.fixed_parent && a.sensitive_data_origin && a.user_with_auth && a.sign);
    assert!(!a.decrypt && !a.restricted);

    // Reloaded from its blob (the primary is recreated from the template): the same key.
    let blob = key.blob().to_vec();
    drop(key);
    let again = tpm.load_key(&blob).unwrap();
    let sig = again.sign(b"again").unwrap();
    check_sig(&again, b"again", &sig).unwrap();
}

#[test]
fn keys_loaded_and_dropped_do_not_exhaust_the_tpm() {
    // A raw swtpm socket has no resource manager and three object slots
    // (TPM2_Create needs one besides the primary's): every transient object
    // must be flushed, or this runs out after a few rounds.
    let (_d, _sw, tpm) = sim();
    let first = tpm.create_key().unwrap();
    for _ in 0..8 {
        let k = tpm.load_key(first.blob()).unwrap();
        k.sign(b"x").unwrap();
    }
    // A renewal's pattern, repeatedly: the current key loaded while the next is made.
    let mut current = first;
    for _ in 0..4 {
        let next = tpm.create_key().unwrap();
        assert_ne!(current.public_key_der(), next.public_key_der());
        current.sign(b"x").unwrap();
        next.sign(b"x").unwrap();
        current = next;
    }
}

#[test]
fn damaged_blob_says_so() {
    let (_d, _sw, tpm) = sim();
    let key = tpm.create_key().unwrap();
    let blob = key.blob().to_vec();

    let e = tpm.load_key(&blob[..blob.len() - 5]).unwrap_err().to_string();
    assert!(e.contains("truncated or damaged"), "{e}");
    let e = tpm.load_key(b"PRIVATE KEY").unwrap_err().to_string();
    assert!(e.contains("does not begin as an iotpki TPM key blob"), "{e}");
    // One bit flipped in the wrapped private area: the TPM's integrity check refuses it.
    let mut bad = blob.clone();
    let n = bad.len();
    bad[n - 3] ^= 0x01;
    let e = tpm.load_key(&bad).unwrap_err().to_string();
    assert!(e.contains("refused to load it") && e.contains("damaged"), "{e}");
}

#[test]
fn blob_of_another_tpm_is_refused() {
    let (_d, _sw, tpm) = sim();
    let (_d2, _sw2, other) = sim();
    let key = other.create_key().unwrap();
    let e = tpm.load_key(key.blob()).unwrap_err().to_string();
    assert!(e.contains("another TPM"), "{e}");
}

#[test]
fn nothing_listening_says_the_tpm_is_not_reachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = Tpm::open(&format!("swtpm:host=127.0.0.1,port={port}")).unwrap_err().to_string();
    assert!(e.contains("not reachable") && e.contains("swtpm"), "{e}");
    assert!(e.contains(&format!("nothing answers at 127.0.0.1:{port}")), "{e}");
    let e = Tpm::open("device:/nonexistent/tpmrm0").unwrap_err().to_string();
    assert!(e.contains("/nonexistent/tpmrm0 does not exist: this machine has no TPM"), "{e}");
    let e = Tpm::open("nonsense:foo").unwrap_err().to_string();
    assert!(e.contains("not usable") || e.contains("not reachable"), "{e}");
}

#[test]
fn a_credential_made_in_software_for_the_key_and_the_ek_is_activated_only_there() {
    let (_d, _sw, tpm) = sim();
    let ek = tpm.ek_public().unwrap();
    assert_eq!(ek, tpm.ek_public().unwrap(), "the EK is derived again, the same");
    let key = tpm.create_key().unwrap();
    let public = iotpki_core::tpm::parse_ecc_public(&key.public_area().unwrap()).unwrap();
    public.check_device_key().unwrap();
    assert_eq!(public.spki_der().unwrap(), key.public_key_der());

    let secret = b"0123456789abcdef0123456789abcdef";
    let c = iotpki_core::tpm::make_credential(&ek, &public.name, secret).unwrap();
    assert_eq!(key.activate_credential(&c.credential_blob, &c.encrypted_secret).unwrap(), secret);

    // For another key of this TPM, or for this key and another TPM's EK: refused.
    let other = tpm.create_key().unwrap();
    let e = other.activate_credential(&c.credential_blob, &c.encrypted_secret).unwrap_err().to_string();
    assert!(e.contains("not made for this key"), "{e}");
    let (_d2, _sw2, tpm2) = sim();
    let c2 = iotpki_core::tpm::make_credential(&tpm2.ek_public().unwrap(), &public.name, secret).unwrap();
    assert!(key.activate_credential(&c2.credential_blob, &c2.encrypted_secret).is_err());
    // Still usable afterwards: nothing left loaded.
    key.sign(b"x").unwrap();
}
