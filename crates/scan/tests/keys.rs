//! The key finder against keys, certificates and containers made by OpenSSL
//! and OpenSSH, whose own idea of each key's SPKI is the expected answer.
//! Keys are generated fresh in a temporary directory and never printed: the
//! assertions compare findings, which hold only hashes.

use std::path::Path;
use std::process::Command;

use base64::Engine;
use iotpki_scan::keys::{find_all, Finder};
use iotpki_scan::{FindingKind, KeyFormat};

/// Runs a bash script in `dir`; its stdout. Panics with its stderr if it fails.
fn sh(dir: &Path, script: &str) -> Vec<u8> {
    let out =
        Command::new("bash").args(["-euo", "pipefail", "-c", script]).current_dir(dir).output().expect("bash runs");
    assert!(out.status.success(), "`{script}` failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn sh_str(dir: &Path, script: &str) -> String {
    String::from_utf8(sh(dir, script)).expect("utf-8").trim().to_string()
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).expect("file written by the script")
}

/// OpenSSL's SPKI SHA-256 for a private key file.
fn openssl_spki(dir: &Path, key: &str) -> String {
    sh_str(dir, &format!("openssl pkey -in {key} -pubout -outform DER | sha256sum | cut -d' ' -f1"))
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// `obj` at offset `at` inside noise.
fn embed(obj: &[u8], at: usize, seed: u64) -> Vec<u8> {
    let mut v = noise(seed, at);
    v.extend_from_slice(obj);
    v.extend_from_slice(&noise(seed ^ 0x5555, 333));
    v
}

#[derive(Debug, PartialEq)]
struct Key {
    offset: u64,
    format: KeyFormat,
    algorithm: String,
    encrypted: bool,
    spki: Option<String>,
    encoding: String,
}

fn keys(found: &[(u64, FindingKind)]) -> Vec<Key> {
    found
        .iter()
        .filter_map(|(o, f)| match f {
            FindingKind::PrivateKey { format, algorithm, encrypted, spki_sha256, encoding, .. } => Some(Key {
                offset: *o,
                format: *format,
                algorithm: algorithm.clone(),
                encrypted: *encrypted,
                spki: spki_sha256.clone(),
                encoding: encoding.clone(),
            }),
            _ => None,
        })
        .collect()
}

fn note_of(found: &[(u64, FindingKind)]) -> Option<String> {
    found.iter().find_map(|(_, f)| match f {
        FindingKind::PrivateKey { note, .. } => note.clone(),
        _ => None,
    })
}

/// Feeds `bytes` in chunks of `size`.
fn chunked(bytes: &[u8], size: usize) -> Vec<(u64, FindingKind)> {
    let mut out = Vec::new();
    let mut f = Finder::new();
    for c in bytes.chunks(size) {
        f.feed(c, &mut out);
    }
    f.finish(&mut out);
    out
}

/// One key found, exactly, with OpenSSL's SPKI, at `at` inside noise.
fn assert_one_key(obj: &[u8], at: usize, format: KeyFormat, algorithm: &str, spki: &str, encoding: &str) {
    let found = find_all(&embed(obj, at, at as u64 + 7));
    assert_eq!(
        keys(&found),
        vec![Key {
            offset: at as u64,
            format,
            algorithm: algorithm.into(),
            encrypted: false,
            spki: Some(spki.into()),
            encoding: encoding.into()
        }],
        "{format:?} {algorithm} {encoding}: {found:?}"
    );
    assert_eq!(found.len(), 1, "nothing else: {found:?}");
}

#[test]
fn every_key_format_in_pem_and_der_matches_openssls_spki() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path();
    let algs: [(&str, &str, &str); 5] = [
        ("ec-p256", "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out k.pem", "ec"),
        ("ec-p384", "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out k.pem", "ec"),
        ("ec-p521", "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-521 -out k.pem", "ec"),
        ("ed25519", "openssl genpkey -algorithm ed25519 -out k.pem", ""),
        ("rsa-2048", "openssl genrsa -out k.pem 2048 2>/dev/null", "rsa"),
    ];
    for (i, (alg, gen, trad)) in algs.iter().enumerate() {
        sh(dir, gen);
        let spki = openssl_spki(dir, "k.pem");
        sh(dir, "openssl pkcs8 -topk8 -nocrypt -in k.pem -out p8.pem && openssl pkcs8 -topk8 -nocrypt -in k.pem -outform DER -out p8.der");
        let at = 1000 + 13 * i;
        assert_one_key(&read(dir, "p8.pem"), at, KeyFormat::Pkcs8, alg, &spki, "PEM");
        assert_one_key(&read(dir, "p8.der"), at + 1, KeyFormat::Pkcs8, alg, &spki, "DER");
        match *trad {
            "ec" => {
                sh(dir, "openssl ec -in k.pem -out t.pem 2>/dev/null && openssl ec -in k.pem -outform DER -out t.der 2>/dev/null");
                sh(dir, "openssl ec -in k.pem -no_public -outform DER -out np.der 2>/dev/null");
                assert_one_key(&read(dir, "t.pem"), at + 2, KeyFormat::Sec1, alg, &spki, "PEM");
                assert_one_key(&read(dir, "t.der"), at + 3, KeyFormat::Sec1, alg, &spki, "DER");
                // Without its public key: derived from the scalar.
                assert_one_key(&read(dir, "np.der"), at + 5, KeyFormat::Sec1, alg, &spki, "DER");
                // Explicit curve parameters: the SPKI still names the curve, as certificates do.
                sh(dir, "openssl ec -in k.pem -param_enc explicit -outform DER -out x.der 2>/dev/null && openssl pkcs8 -topk8 -nocrypt -in x.der -inform DER -outform DER -out x8.der");
                assert_one_key(&read(dir, "x.der"), at + 6, KeyFormat::Sec1, alg, &spki, "DER");
                assert_one_key(&read(dir, "x8.der"), at + 7, KeyFormat::Pkcs8, alg, &spki, "DER");
            }
            "rsa" => {
                sh(dir, "openssl rsa -in k.pem -traditional -out t.pem 2>/dev/null && openssl rsa -in k.pem -traditional -outform DER -out t.der 2>/dev/null");
                assert_one_key(&read(dir, "t.pem"), at + 2, KeyFormat::Pkcs1, alg, &spki, "PEM");
                assert_one_key(&read(dir, "t.der"), at + 3, KeyFormat::Pkcs1, alg, &spki, "DER");
            }
            _ => {}
        }
    }
}

#[test]
fn sec1_without_curve_parameters_assumes_p256_and_says_so() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path();
    sh(dir, "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out k.pem && openssl ec -in k.pem -no_public -outform DER -out np.der 2>/dev/null");
    let spki = openssl_spki(dir, "k.pem");
    let der = read(dir, "np.der");
    // 30 31 | 02 01 01 | 04 20 <32> | a0 0a <oid>: drop the parameters.
    assert_eq!(&der[..7], &[0x30, 0x31, 0x02, 0x01, 0x01, 0x04, 0x20]);
    let mut bare = vec![0x30, 0x25];
    bare.extend_from_slice(&der[2..2 + 3 + 34]);
    let found = find_all(&embed(&bare, 77, 1));
    assert_eq!(keys(&found).len(), 1, "{found:?}");
    assert_eq!(keys(&found)[0].spki.as_deref(), Some(spki.as_str()));
    assert!(note_of(&found).is_some_and(|n| n.contains("P-256 assumed")), "{found:?}");
    // With the public key but no parameters, the public key decides: no note.
    sh(dir, "openssl ec -in k.pem -outform DER -out full.der 2>/dev/null");
    let full = read(dir, "full.der");
    assert_eq!(&full[..7], &[0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20]);
    let mut noparams = vec![0x30, 0x77 - 12];
    noparams.extend_from_slice(&full[2..2 + 3 + 34]);
    noparams.extend_from_slice(&full[2 + 3 + 34 + 12..]);
    let found = find_all(&embed(&noparams, 5, 2));
    assert_eq!(keys(&found)[0].spki.as_deref(), Some(spki.as_str()), "{found:?}");
    assert_eq!(note_of(&found), None);
}

#[test]
fn a_key_split_anywhere_is_found_once() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path();
    sh(dir, "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out k.pem && openssl pkcs8 -topk8 -nocrypt -in k.pem -outform DER -out k.der");
    sh(dir, "openssl req -x509 -key k.pem -subj /CN=split -days 2 -outform DER -out c.der");
    let spki = openssl_spki(dir, "k.pem");
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
    let mut stream = embed(&read(dir, "k.pem"), 501, 3);
    stream.extend_from_slice(&read(dir, "k.der"));
    stream.extend_from_slice(&read(dir, "c.der"));
    stream.extend_from_slice(format!("\ntoken={token}\n").as_bytes());
    stream.extend_from_slice(&noise(4, 100));
    let whole = find_all(&stream);
    let k = keys(&whole);
    assert_eq!(k.len(), 2, "the PEM and the DER: {whole:?}");
    assert!(k.iter().all(|k| k.spki.as_deref() == Some(spki.as_str())));
    assert_eq!(whole.iter().filter(|f| matches!(f.1, FindingKind::Certificate { .. })).count(), 1);
    assert_eq!(whole.iter().filter(|f| matches!(f.1, FindingKind::TokenCandidate { .. })).count(), 1);
    for size in [1, 2, 7, 64, 4096, 1 << 20] {
        assert_eq!(chunked(&stream, size), whole, "chunks of {size}");
    }
    for split in 0..=stream.len() {
        let mut out = Vec::new();
        let mut f = Finder::new();
        f.feed(&stream[..split], &mut out);
        f.feed(&stream[split..], &mut out);
        f.finish(&mut out);
        assert_eq!(out, whole, "split at {split}");
    }
}

#[test]
fn a_stream_longer_than_the_tail_keeps_finding_across_rounds() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path();
    sh(dir, "openssl genpkey -algorithm ed25519 -out k.pem && openssl pkcs8 -topk8 -nocrypt -in k.pem -outform DER -out k.der");
    let der = read(dir, "k.der");
    // Keys every ~300 KiB over 5 MiB, some straddling the rounds' boundaries.
    let mut stream = Vec::new();
    let mut offsets = Vec::new();
    for i in 0..17u64 {
        stream.extend_from_slice(&noise(i + 10, 300 * 1024 + (i as usize * 4099) % 65536));
        offsets.push(stream.len() as u64);
        stream.extend_from_slice(&der);
    }
    let whole = find_all(&stream);
    assert_eq!(whole.iter().map(|f| f.0).collect::<Vec<_>>(), offsets);
    for size in [4096, 65536 - 1, 1 << 20, 3 << 20] {
        assert_eq!(chunked(&stream, size), whole, "chunks of {size}");
    }
}

#[test]
fn pem_with_crlf_indentation_and_escapes_is_found() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path();
    sh(dir, "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out k.pem");
    let spki = openssl_spki(dir, "k.pem");
    let pem = String::from_utf8(read(dir, "k.pem")).expect("ascii");
    let crlf = pem.replace('\n', "\r\n");
    let indented: String = pem.lines().map(|l| format!("    {l}\n")).collect();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let wide = format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n");
    let json = format!("{{\"key\": \"{}\"}}", pem.replace('\n', "\\n"));
    for (what, text) in [("crlf", crlf), ("indented", indented), ("one line", wide), ("json", json)] {
        let found = find_all(&embed(text.as_bytes(), 3, 9));
        assert_eq!(keys(&found).len(), 1, "{what}: {found:?}");
        assert_eq!(keys(&found)[0].spki.as_deref(), Some(spki.as_str()), "{what}");
    }
}

#[test]
fn encrypted_keys_are_reported_encrypted_without_spki() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path();
    sh(dir, "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out k.pem");
    sh(dir, "openssl pkcs8 -topk8 -v2 aes-256-cbc -passout pass:x -in k.pem -out e.pem && openssl pkcs8 -topk8 -v2 aes-256-cbc -passout pass:x -in k.pem -outform DER -out e.der");
    sh(dir, "openssl ec -in k.pem -aes256 -passout pass:x -out legacy.pem 2>/dev/null");
    sh(dir, "openssl genrsa -out r.pem 1024 2>/dev/null && openssl rsa -in r.pem -traditional -aes128 -passout pass:x -out rlegacy.pem 2>/dev/null");
    for (file, format, encoding, alg) in [
        ("e.pem", KeyFormat::EncryptedPkcs8, "PEM", "unknown"),
        ("e.der", KeyFormat::EncryptedPkcs8, "DER", "unknown"),
        ("legacy.pem", KeyFormat::Sec1, "PEM", "ec"),
        ("rlegacy.pem", KeyFormat::Pkcs1, "PEM", "rsa"),
    ] {
        let found = find_all(&embed(&read(dir, file), 11, 12));
        assert_eq!(
            keys(&found),
            vec![Key {
                offset: 11,
                format,
                algorithm: alg.into(),
                encrypted: true,
                spki: None,
                encoding: encoding.into()
            }],
            "{file}: {found:?}"
        );
        assert!(note_of(&found).is_some(), "{file} says why");
    }
}

#[test]
fn pkcs12_opens_with_the_empty_password_and_reports_a_real_one() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path();
    sh(dir, "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out k.pem && openssl req -x509 -key k.pem -subj /CN=p12 -days 2 -out c.pem");
    let spki = openssl_spki(dir, "k.pem");
    sh(dir, "openssl pkcs12 -export -inkey k.pem -in c.pem -passout pass: -out empty.p12");
    sh(dir, "openssl pkcs12 -export -legacy -inkey k.pem -in c.pem -passout pass: -out legacy.p12");
    sh(
        dir,
        "openssl pkcs12 -export -inkey k.pem -in c.pem -keypbe NONE -certpbe NONE -nomac -passout pass: -out plain.p12",
    );
    sh(dir, "openssl pkcs12 -export -inkey k.pem -in c.pem -passout pass:secret -out secret.p12");
    for file in ["empty.p12", "legacy.p12", "plain.p12"] {
        let found = find_all(&embed(&read(dir, file), 21, 5));
        assert_eq!(
            keys(&found),
            vec![Key {
                offset: 21,
                format: KeyFormat::Pkcs12,
                algorithm: "ec-p256".into(),
                encrypted: false,
                spki: Some(spki.clone()),
                encoding: "DER".into()
            }],
            "{file}: {found:?}"
        );
        let certs: Vec<_> = found
            .iter()
            .filter(|f| matches!(&f.1, FindingKind::Certificate { spki_sha256, .. } if *spki_sha256 == spki))
            .collect();
        assert_eq!(certs.len(), 1, "{file}: the certificate inside, once: {found:?}");
        assert_eq!(found.len(), 2, "{file}: nothing twice: {found:?}");
    }
    let found = find_all(&embed(&read(dir, "secret.p12"), 21, 5));
    assert_eq!(
        keys(&found),
        vec![Key {
            offset: 21,
            format: KeyFormat::Pkcs12,
            algorithm: "unknown".into(),
            encrypted: true,
            spki: None,
            encoding: "DER".into()
        }],
        "{found:?}"
    );
    assert_eq!(note_of(&found).as_deref(), Some("PKCS#12 protected by a password: not opened"));
    assert_eq!(found.len(), 1, "{found:?}");
}

#[test]
fn openssh_keys_give_the_public_keys_spki() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path();
    if Command::new("ssh-keygen").arg("-?").output().is_err() {
        panic!("ssh-keygen is missing: install openssh-client to run the OpenSSH tests");
    }
    for (kind, alg, pass) in [
        ("ed25519", "ed25519", ""),
        ("ed25519", "ed25519", "secret"),
        ("ecdsa -b 256", "ec-p256", ""),
        ("ecdsa -b 384", "ec-p384", "secret"),
        ("rsa -b 2048", "rsa-2048", ""),
        ("rsa -b 2048", "rsa-2048", "secret"),
    ] {
        sh(dir, &format!("rm -f s s.pub && ssh-keygen -q -t {kind} -N '{pass}' -C scan -f s"));
        let expected = if alg == "ed25519" {
            // SPKI of Ed25519: a fixed prefix, then the 32-octet key (RFC 8410).
            sh_str(dir, "cut -d' ' -f2 s.pub | base64 -d | tail -c 32 | (printf '\\x30\\x2a\\x30\\x05\\x06\\x03\\x2b\\x65\\x70\\x03\\x21\\x00'; cat) | sha256sum | cut -d' ' -f1")
        } else {
            sh_str(
                dir,
                "ssh-keygen -e -m PKCS8 -f s.pub | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1",
            )
        };
        let found = find_all(&embed(&read(dir, "s"), 40, 6));
        assert_eq!(
            keys(&found),
            vec![Key {
                offset: 40,
                format: KeyFormat::OpenSsh,
                algorithm: alg.into(),
                encrypted: !pass.is_empty(),
                spki: Some(expected),
                encoding: "PEM".into()
            }],
            "{kind} {pass:?}: {found:?}"
        );
    }
}

#[test]
fn certificates_carry_spki_serial_subject_and_issuer() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path();
    sh(dir, "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out k.pem");
    sh(dir, "openssl req -x509 -key k.pem -subj '/O=Acme/CN=dev-1' -set_serial 0x0163f0a1b2c3d4e5f60718293a4b5c6d -days 2 -out c.pem && openssl x509 -in c.pem -outform DER -out c.der");
    // Version 1 (no extensions, no `[0]` version field).
    sh(dir, "openssl req -new -key k.pem -subj '/O=Acme/CN=dev-1' -out r.csr && openssl x509 -req -in r.csr -signkey k.pem -set_serial 0x0163f0a1b2c3d4e5f60718293a4b5c6d -days 2 -outform DER -out v1.der 2>/dev/null");
    sh(dir, "openssl x509 -inform DER -in v1.der -noout -text | grep -q 'Version: 1 '");
    let spki = openssl_spki(dir, "k.pem");
    for file in ["c.pem", "c.der", "v1.der"] {
        let found = find_all(&embed(&read(dir, file), 99, 8));
        assert_eq!(found.len(), 1, "{file}: {found:?}");
        let FindingKind::Certificate { spki_sha256, serial, subject, issuer } = &found[0].1 else {
            panic!("{found:?}")
        };
        assert_eq!((found[0].0, spki_sha256.as_str()), (99, spki.as_str()));
        // As the store keeps serials (iotpki_core::serial::serial_hex).
        assert_eq!(serial, "0163f0a1b2c3d4e5f60718293a4b5c6d");
        assert!(subject.contains("CN=dev-1") && subject.contains("O=Acme"), "{subject}");
        assert_eq!(subject, issuer);
    }
}

#[test]
fn broken_keys_and_pem_lookalikes_are_not_reported() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path();
    sh(dir, "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out k.pem && openssl ec -in k.pem -outform DER -out k.der 2>/dev/null");
    sh(dir, "openssl genrsa -out r.pem 1024 2>/dev/null && openssl rsa -in r.pem -traditional -outform DER -out r.der 2>/dev/null");
    let ec = read(dir, "k.der");
    // The scalar (after 30 77 02 01 01 04 20) at or above the group order.
    let mut high = ec.clone();
    high[7..39].fill(0xff);
    let mut zero = ec.clone();
    zero[7..39].fill(0);
    let truncated = ec[..ec.len() - 1].to_vec();
    // One octet of the RSA key's last fields (qInv) flipped is still consistent
    // (not checked); one of the modulus flipped is not.
    let mut rsa = read(dir, "r.der");
    rsa[20] ^= 0x10;
    // Truncated where the stream ends (inside noise, the next octet would
    // complete it: that is a whole key whose public key differs, reported
    // from its scalar with a note).
    let mut cut = noise(10, 50);
    cut.extend_from_slice(&truncated);
    assert!(find_all(&cut).is_empty());
    let mut half = noise(10, 50);
    half.extend_from_slice(&ec[..30]);
    half.extend_from_slice(&[0u8; 200]);
    assert!(find_all(&half).is_empty());
    for (what, bytes) in [("scalar >= n", high), ("scalar 0", zero), ("modulus flipped", rsa)] {
        let found = find_all(&embed(&bytes, 50, 10));
        assert!(keys(&found).iter().all(|k| k.spki.is_none()), "{what}: {found:?}");
        assert!(keys(&found).is_empty(), "{what}: {found:?}");
    }
    let mut garbage = Vec::new();
    garbage.extend_from_slice(b"-----BEGIN PRIVATE KEY-----\nnot base64 at all!\n-----END PRIVATE KEY-----\n");
    garbage.extend_from_slice(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    garbage.extend_from_slice(b"-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END EC PRIVATE KEY-----\n");
    garbage.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n-----BEGIN -----END \n");
    garbage.extend_from_slice(&b"-----BEGIN ".repeat(20_000));
    garbage.extend_from_slice(&b"-----BEGIN PRIVATE KEY-----\n".repeat(5_000));
    let started = std::time::Instant::now();
    let found = find_all(&garbage);
    assert!(found.is_empty(), "{found:?}");
    assert!(started.elapsed().as_secs() < 20, "BEGIN lines do not make the finder quadratic");
}

#[test]
fn ten_mib_of_noise_holds_nothing() {
    let bytes = noise(42, 10 << 20);
    assert_eq!(find_all(&bytes), vec![]);
    assert_eq!(find_all(&vec![0u8; 10 << 20]), vec![]);
}

#[test]
fn token_candidates_are_hashed_as_text_and_not_taken_from_pem_bodies() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path();
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(noise(77, 32));
    assert_eq!(token.len(), 43);
    let expected = sh_str(dir, &format!("printf '%s' '{token}' | sha256sum | cut -d' ' -f1"));
    let text = format!("IOTPKI_TOKEN={token}\nurl: https://x/enroll/{token}?a\n\"{token}\"");
    let found = find_all(text.as_bytes());
    let hashes: Vec<_> = found
        .iter()
        .map(|(o, f)| match f {
            FindingKind::TokenCandidate { token_sha256 } => (*o, token_sha256.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    let at = |s: &str| text.find(s).map(|i| (i + s.len()) as u64).expect("in text");
    assert_eq!(
        hashes,
        vec![(at("TOKEN="), expected.clone()), (at("enroll/"), expected.clone()), (at("a\n\""), expected.clone())]
    );
    // Too long, too short, or not 32 octets: not a candidate.
    let not = format!("{token}A {} {}", &token[..42], token.replace(&token[42..], "B"));
    assert!(find_all(not.as_bytes()).is_empty(), "{not}");
    // The same 43 characters as a line of a PEM body are not a token.
    let pem = format!("-----BEGIN CERTIFICATE-----\n{token}\n-----END CERTIFICATE-----\n");
    assert!(find_all(pem.as_bytes()).is_empty());
    let two = format!("{token}\n{pem}{token}\n");
    assert_eq!(find_all(two.as_bytes()).len(), 2);
}

#[test]
fn token_candidates_are_capped_per_stream() {
    let mut text = Vec::new();
    for i in 0..100_100u64 {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(noise(i + 1, 32));
        text.extend_from_slice(b64.as_bytes());
        text.push(b'\n');
    }
    assert_eq!(find_all(&text).len(), 100_000);
}

#[test]
fn unknown_algorithms_are_reported_as_such() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path();
    sh(dir, "openssl genpkey -algorithm x25519 -outform DER -out x.der");
    let found = find_all(&embed(&read(dir, "x.der"), 3, 3));
    assert_eq!(keys(&found).len(), 1, "{found:?}");
    assert_eq!((keys(&found)[0].algorithm.as_str(), keys(&found)[0].spki.as_deref()), ("x25519", None));
    // A whole PKCS#8 with an OID nobody uses (1.3.6.1.4.1.99999.1).
    let oid = [0x06, 0x09, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x86, 0x8d, 0x1f, 0x01];
    let mut body = vec![0x02, 0x01, 0x00, 0x30, oid.len() as u8];
    body.extend_from_slice(&oid);
    body.extend_from_slice(&[0x04, 0x22, 0x04, 0x20]);
    body.extend_from_slice(&noise(5, 32));
    let mut der = vec![0x30, body.len() as u8];
    der.extend_from_slice(&body);
    let found = find_all(&embed(&der, 8, 4));
    assert_eq!(keys(&found).len(), 1, "{found:?}");
    assert_eq!(keys(&found)[0].algorithm, "unknown");
    assert!(note_of(&found).is_some_and(|n| n.contains("1.3.6.1.4.1.99999.1")), "{found:?}");
}

#[test]
fn a_hand_made_key_agrees_with_openssl_and_json_escapes_are_read() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path();
    // SEC1 P-256 with d = 1 (its public key is the generator): no secret.
    let g = "046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";
    let der_hex = format!("307702010104200000000000000000000000000000000000000000000000000000000000000001a00a06082a8648ce3d030107a144034200{g}");
    let der = hex::decode(der_hex).expect("hex");
    std::fs::write(dir.join("d1.der"), &der).expect("write");
    let expected = sh_str(dir, "openssl pkey -inform DER -in d1.der -pubout -outform DER | sha256sum | cut -d' ' -f1");
    let found = find_all(&embed(&der, 17, 17));
    assert_eq!(keys(&found).len(), 1, "{found:?}");
    assert_eq!(keys(&found)[0].spki.as_deref(), Some(expected.as_str()));
    // The same key in PEM inside JSON that escapes '/' and newlines.
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    assert!(b64.contains('/') || b64.contains('+'));
    let json = format!(
        "{{\"k\":\"-----BEGIN EC PRIVATE KEY-----\\n{}\\n-----END EC PRIVATE KEY-----\\n\"}}",
        b64.replace('/', "\\/")
    );
    let found = find_all(json.as_bytes());
    assert_eq!(keys(&found).len(), 1, "{found:?}");
    assert_eq!(keys(&found)[0].spki.as_deref(), Some(expected.as_str()));
    // What the finder holds is never shown.
    let mut f = Finder::new();
    let mut out = Vec::new();
    f.feed(&der, &mut out);
    let shown = format!("{f:?}");
    assert!(!shown.contains("0, 0, 0, 1") && shown.len() < 200, "{shown}");
}

/// Found by the scan_keys fuzz target: small rounds made the buffer's growth panic.
#[test]
fn small_rounds_grow_the_buffer_without_panicking() {
    let bytes = noise(3, 5000);
    let whole = iotpki_scan::keys::internal::find_all(&bytes, 64, 1);
    let mut f = iotpki_scan::keys::internal::finder(64, 1);
    let mut out = Vec::new();
    for c in bytes.chunks(633) {
        f.feed(c, &mut out);
    }
    f.finish(&mut out);
    assert_eq!(out, whole);
}

#[test]
fn pkcs8_v2_with_its_public_key_is_read() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path();
    sh(dir, "openssl genpkey -algorithm ed25519 -outform DER -out k.der && openssl pkey -inform DER -in k.der -pubout -outform DER -out pub.der");
    let spki = sh_str(dir, "sha256sum pub.der | cut -d' ' -f1");
    let v1 = read(dir, "k.der");
    let public = read(dir, "pub.der");
    // OneAsymmetricKey: version 1, then [1] IMPLICIT BIT STRING publicKey.
    assert_eq!(&v1[..5], &[0x30, 0x2e, 0x02, 0x01, 0x00]);
    let mut v2 = vec![0x30, 0x2e + 35, 0x02, 0x01, 0x01];
    v2.extend_from_slice(&v1[5..]);
    v2.extend_from_slice(&[0x81, 0x21, 0x00]);
    v2.extend_from_slice(&public[public.len() - 32..]);
    assert_one_key(&v2, 64, KeyFormat::Pkcs8, "ed25519", &spki, "DER");
    // A public key that is not the private key's: the private key decides, and says so.
    let last = v2.len() - 1;
    v2[last] ^= 1;
    let found = find_all(&embed(&v2, 64, 1));
    assert_eq!(keys(&found)[0].spki.as_deref(), Some(spki.as_str()));
    assert!(note_of(&found).is_some_and(|n| n.contains("does not match")), "{found:?}");
}
