//! Against a throwaway SoftHSM2 token directory (softhsm2 must be installed:
//! `scripts/test` installs it).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use super::*;

pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

struct Fixture {
    _dir: tempfile::TempDir,
}

/// One token directory for this test process, with the tokens every test
/// uses created before the module is first loaded (SoftHSM2 reads its
/// config, and finds its tokens, at C_Initialize).
fn softhsm() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(&conf, format!("directories.tokendir = {}\nlog.level = ERROR\n", tokens.display())).unwrap();
        for label in ["unit", "unit-pin", "unit-threads", "unit-relogin"] {
            let out = Command::new("softhsm2-util")
                .env("SOFTHSM2_CONF", &conf)
                .args(["--init-token", "--free", "--label", label, "--pin", "1234", "--so-pin", "5678"])
                .output()
                .expect("softhsm2-util (apt-get install softhsm2)");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        // Set before any C_Initialize in this process, and only here.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        Fixture { _dir: dir }
    })
}

fn token(label: &str) -> Token {
    softhsm();
    Token::open(Path::new(MODULE), &Pkcs11Uri::parse(&format!("pkcs11:token={label}")).unwrap()).unwrap()
}

fn pin() -> Pin {
    Pin::new("1234").unwrap()
}

fn verify(key: &dyn Signer, msg: &[u8], sig: &[u8]) -> Result<(), iotpki_core::Error> {
    let spki = SubjectPublicKeyInfoOwned::from_der(key.public_key_der()).unwrap();
    iotpki_core::keys::verify(&spki, &key.key_type().signature_algorithm().unwrap(), msg, sig)
}

#[test]
fn each_key_type_signs_verifiably_and_reopens() {
    let t = token("unit");
    for kt in KeyType::SIGNING {
        assert!(t.supports(kt).unwrap(), "SoftHSM2 offers {kt}");
        let k = HsmKey::generate(&t, &pin(), kt, &format!("unit-{kt}")).unwrap();
        assert_eq!(k.key_type(), kt);
        // Many signatures: an r or s with leading zero bytes turns up for ECDSA.
        for i in 0..200u32 {
            let msg = format!("message {i}");
            let sig = k.sign(msg.as_bytes()).unwrap();
            verify(&k, msg.as_bytes(), &sig).unwrap();
            assert!(verify(&k, b"another message", &sig).is_err());
        }
        let p = k.protection().unwrap();
        assert!(p.is_protected(), "{kt}: {p}");
        assert!(p.to_string().starts_with("value refused, sensitive yes"), "{p}");
        // Found again by its URI (as a config records it), by id alone and by label alone.
        let uri = k.uri().clone();
        let again = HsmKey::open(&t, &pin(), &uri).unwrap();
        assert_eq!(again.public_key_der(), k.public_key_der());
        let by_id = Pkcs11Uri { object: None, ..uri.clone() };
        assert_eq!(HsmKey::open(&t, &pin(), &by_id).unwrap().public_key_der(), k.public_key_der());
        let by_label = Pkcs11Uri { id: None, ..uri.clone() };
        assert_eq!(HsmKey::open(&t, &pin(), &by_label).unwrap().public_key_der(), k.public_key_der());
        // Deleted: opening and signing both say the key is gone.
        again.destroy().unwrap();
        let e = HsmKey::open(&t, &pin(), &uri).unwrap_err();
        assert!(matches!(e, HsmError::KeyMissing { .. }), "{e}");
        assert!(e.to_string().contains("restore the token"), "{e}");
        let e = k.sign(b"after deletion").unwrap_err().to_string();
        assert!(e.contains("is not in token \"unit\""), "{e}");
    }
}

#[test]
fn signs_from_many_threads() {
    let t = token("unit-threads");
    let k = Arc::new(HsmKey::generate(&t, &pin(), KeyType::EcdsaP384, "threads").unwrap());
    let hs: Vec<_> = (0..4)
        .map(|i| {
            let k = k.clone();
            std::thread::spawn(move || {
                for j in 0..25 {
                    let m = format!("{i}/{j}");
                    verify(k.as_ref(), m.as_bytes(), &k.sign(m.as_bytes()).unwrap()).unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

#[test]
fn refusals_say_what_to_do() {
    softhsm();
    // Wrong PIN (a token no other test logs in to: a logged-in token accepts any later login).
    let t = token("unit-pin");
    let e = t.check_pin(&Pin::new("9999").unwrap()).unwrap_err();
    assert!(matches!(e, HsmError::WrongPin { .. }), "{e}");
    assert!(e.to_string().contains("refused the PIN"), "{e}");
    t.check_pin(&pin()).unwrap();

    // No such token: the message lists those present.
    let e = Token::open(Path::new(MODULE), &Pkcs11Uri::parse("pkcs11:token=nope").unwrap()).unwrap_err().to_string();
    assert!(e.contains("no token labelled \"nope\"") && e.contains("\"unit\""), "{e}");

    // No module, and a file that is no PKCS#11 module.
    let e = Token::open(Path::new("/nonexistent/p11.so"), &Pkcs11Uri::parse("pkcs11:token=unit").unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/p11.so") && e.contains("no such file") && e.contains("--pkcs11-module"), "{e}");
    let not_module = PathBuf::from("/etc/hostname");
    let e = Token::open(&not_module, &Pkcs11Uri::parse("pkcs11:token=unit").unwrap()).unwrap_err().to_string();
    assert!(e.contains("not a loadable PKCS#11 library"), "{e}");

    // A URI without a token or a key.
    assert!(Token::open(Path::new(MODULE), &Pkcs11Uri::default()).unwrap_err().to_string().contains("token=LABEL"));
    let e = HsmKey::open(&token("unit"), &pin(), &Pkcs11Uri::parse("pkcs11:token=unit").unwrap()).unwrap_err();
    assert!(e.to_string().contains("names no key"), "{e}");

    // Key types the token cannot hold.
    let e = HsmKey::generate(&token("unit"), &pin(), KeyType::Rsa(2048), "rsa").unwrap_err().to_string();
    assert!(e.contains("RSA keys are not supported"), "{e}");

    // PINs: empty refused, file missing named.
    assert!(Pin::new("\n").is_err());
    let e = Pin::from_file_or_env(Some(Path::new("/nonexistent/pin"))).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/pin"), "{e}");
}

#[test]
fn raw_ecdsa_signature_to_der() {
    // r = 00 80 00.., s = 01 00..: r loses its leading zero and gains the sign
    // byte back; s is positive as it stands.
    let mut raw = vec![0u8; 64];
    raw[1] = 0x80;
    raw[32] = 0x01;
    let der = ecdsa_raw_to_der(&raw, 32).unwrap();
    let mut want = vec![0x30, 0x44, 0x02, 0x20, 0x00, 0x80];
    want.extend([0u8; 30]);
    want.extend([0x02, 0x20, 0x01]);
    want.extend([0u8; 31]);
    assert_eq!(der, want);
    assert!(ecdsa_raw_to_der(&raw[..63], 32).is_err());
}

#[test]
fn an_exportable_key_is_reported_as_such() {
    // A key made without our template (sensitive false, extractable): the
    // protection check must see it, and C_GetAttributeValue(CKA_VALUE) gives it out.
    let t = token("unit");
    let k = HsmKey::generate(&t, &pin(), KeyType::EcdsaP256, "weak").unwrap();
    let session = t.session(&pin()).unwrap();
    let params = curve_oid(KeyType::EcdsaP256).unwrap().to_der().unwrap();
    let id = vec![0xee; 4];
    session
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::Token(true), Attribute::EcParams(params), Attribute::Id(id.clone())],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
                Attribute::Sign(true),
                Attribute::Id(id.clone()),
            ],
        )
        .unwrap();
    drop(session);
    let weak = HsmKey::open(&t, &pin(), &Pkcs11Uri { id: Some(id), ..Default::default() }).unwrap();
    let p = weak.protection().unwrap();
    assert!(p.value_readable && !p.sensitive && p.extractable, "{p}");
    assert!(!p.is_protected());
    assert!(p.to_string().contains("value READABLE"), "{p}");
    assert!(k.protection().unwrap().is_protected());
    weak.destroy().unwrap();
    k.destroy().unwrap();
}

#[test]
fn a_lost_login_is_recovered_on_the_next_signature() {
    let t = token("unit-relogin");
    let k = HsmKey::generate(&t, &pin(), KeyType::EcdsaP256, "relogin").unwrap();
    verify(&k, b"before", &k.sign(b"before").unwrap()).unwrap();
    // Logging out ends the login of every session of this process on the token
    // (as a token reset would): the key's own session can no longer sign.
    let other = t.session(&pin()).unwrap();
    other.logout().unwrap();
    let live = k.lock().unwrap();
    let e = k.sign_with(&live, b"x").unwrap_err();
    assert!(session_lost(&e), "{e}");
    drop(live);
    // Signing logs in again on a new session and finds the key again.
    verify(&k, b"after", &k.sign(b"after").unwrap()).unwrap();
    verify(&k, b"again", &k.sign(b"again").unwrap()).unwrap();
    drop(other);
    k.destroy().unwrap();
}
