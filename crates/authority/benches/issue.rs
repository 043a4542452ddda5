//! Issuance benchmarks: the raw crypto limit (one ECDSA P-256 sign and one
//! verify), CSR parse + verify, certificate build + sign, and the authority's
//! whole issue path on the SQLite store, sequential and concurrent; and the
//! same signing with the CA key in a PKCS#11 token (SoftHSM2) next to the key
//! file, in the same run (group `hsm_vs_file`).
//!
//! `cargo bench -p iotpki-authority`; BENCHMARKS.md explains the ratios.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use iotpki_authority::init::{HsmInit, InitOptions};
use iotpki_authority::{Authority, Credential, EnrollRequest, Gate, Passphrase, Pin};
use iotpki_core::clock::SystemClock;
use iotpki_core::keys::{self, KeyType, Signer, SoftKey};
use iotpki_core::name::{DeviceSerial, NameBuilder};
use iotpki_core::profile::{self, CertParams, Issuer, Profile};
use iotpki_core::{csr, est, serial};
use iotpki_hsm::{HsmKey, Pkcs11Uri, Token};
use spki::der::Decode;

fn raw_crypto(c: &mut Criterion) {
    let mut g = c.benchmark_group("raw_crypto");
    g.throughput(Throughput::Elements(1));
    let rng = SystemRandom::new();
    let kp = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
    let msg = [7u8; 300];
    let sig = kp.sign(&rng, &msg).unwrap();
    let pk = signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, kp.public_key().as_ref().to_vec());
    g.bench_function("p256_sign", |b| b.iter(|| kp.sign(&rng, &msg).unwrap()));
    g.bench_function("p256_verify", |b| b.iter(|| pk.verify(&msg, sig.as_ref()).unwrap()));
    g.bench_function("p256_sign_plus_verify", |b| {
        b.iter(|| {
            pk.verify(&msg, sig.as_ref()).unwrap();
            kp.sign(&rng, &msg).unwrap()
        })
    });
    g.finish();
}

fn device_csr(i: usize, key: &SoftKey) -> Vec<u8> {
    let sn = DeviceSerial::parse(&format!("B-{i:08}")).unwrap();
    let subject = NameBuilder::default().common_name(sn.as_str()).unwrap().serial_number(&sn).unwrap().build();
    csr::build(&subject, key, vec![]).unwrap()
}

fn core_ops(c: &mut Criterion) {
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(1));
    let dev = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let req = device_csr(1, &dev);
    g.bench_function("csr_parse_verify", |b| b.iter(|| csr::parse_and_verify(&req).unwrap()));

    let ca = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let ca_name = NameBuilder::default().organization("bench").unwrap().common_name("CA").unwrap().build();
    let ca_spki = spki::SubjectPublicKeyInfoOwned::from_der(ca.public_key_der()).unwrap();
    let kid = keys::key_identifier(&ca_spki);
    let issuer = Issuer { subject: &ca_name, key_id: &kid, not_after: 2_500_000_000, signer: &ca };
    let parsed = csr::parse_and_verify(&req).unwrap();
    g.bench_function("cert_build_sign", |b| {
        b.iter(|| {
            let params = CertParams {
                profile: Profile::Device,
                serial: serial::system_random_serial(1_800_000_000).unwrap().0,
                subject: parsed.subject.clone(),
                spki: parsed.spki.clone(),
                not_before: 1_800_000_000,
                not_after: 1_900_000_000,
                dns_names: vec![],
                ip_addrs: vec![],
                permitted_subtree: None,
            };
            profile::issue(&params, &issuer).unwrap()
        })
    });
    g.finish();
}

struct Bench {
    _tmp: tempfile::TempDir,
    authority: Arc<Authority>,
    next: std::sync::atomic::AtomicUsize,
}

impl Bench {
    fn new() -> Self {
        Self::with(None)
    }

    /// An authority whose CA keys are in `hsm` when given.
    fn with(hsm: Option<HsmInit>) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let pass = Passphrase::new("benchmark passphrase".into()).unwrap();
        let pin = hsm.as_ref().map(|h| h.pin.clone());
        let opts = InitOptions { hsm, ..InitOptions::default() };
        iotpki_authority::init::init(&dir, &opts, &pass, &SystemClock).unwrap();
        let authority = Arc::new(Authority::open_with_pin(&dir, &pass, pin.as_ref(), Arc::new(SystemClock)).unwrap());
        Self { _tmp: tmp, authority, next: 0.into() }
    }

    /// `n` (serial, token, body) triples, made concurrently so that token
    /// commits share fsyncs. Not timed.
    fn prepare(&self, n: usize) -> Vec<(String, String, Vec<u8>)> {
        let start = self.next.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
        let threads = 16.min(n.max(1));
        let chunks: Vec<Vec<usize>> =
            (0..threads).map(|t| (start..start + n).filter(|i| i % threads == t).collect()).collect();
        std::thread::scope(|s| {
            let hs: Vec<_> = chunks
                .into_iter()
                .map(|idx| {
                    s.spawn(move || {
                        idx.into_iter()
                            .map(|i| {
                                let sn = format!("B-{i:08}");
                                let token = self
                                    .authority
                                    .create_token(&DeviceSerial::parse(&sn).unwrap(), None, "bench")
                                    .unwrap();
                                let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
                                (sn, token, est::encode_body(&device_csr(i, &key)).into_bytes())
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        })
    }

    fn enroll(&self, job: &(String, String, Vec<u8>)) {
        // As the server does: admit the caller, parse the body once, enroll.
        let cred = Credential::Token { user: &job.0, password: &job.1 };
        let caller = self.authority.admit(Gate::Enroll, None, cred).unwrap();
        let csr = csr::parse_and_verify(&est::decode_body(&job.2).unwrap()).unwrap();
        let req = EnrollRequest::Enroll { batch: None, activation: None };
        self.authority.enroll(None, &caller, req, &csr).unwrap();
    }
}

fn issue_path(c: &mut Criterion) {
    let bench = Bench::new();
    let mut g = c.benchmark_group("issue_path_sqlite");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.bench_function("sequential", |b| {
        b.iter_custom(|iters| {
            let jobs = bench.prepare(iters as usize);
            let t = Instant::now();
            for j in &jobs {
                bench.enroll(j);
            }
            t.elapsed()
        })
    });
    for threads in [2usize, 32] {
        g.bench_function(format!("concurrent_{threads}"), |b| {
            b.iter_custom(|iters| {
                let jobs = bench.prepare(iters as usize);
                let t = Instant::now();
                std::thread::scope(|s| {
                    for part in jobs.chunks(jobs.len().div_ceil(threads).max(1)) {
                        let bench = &bench;
                        s.spawn(move || part.iter().for_each(|j| bench.enroll(j)));
                    }
                });
                t.elapsed()
            })
        });
    }
    g.finish();
}

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A throwaway SoftHSM2 token for this process (SOFTHSM2_CONF is set once,
/// before the module is first loaded).
fn softhsm(tmp: &std::path::Path) -> (Token, Pin) {
    let tokens = tmp.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = tmp.join("softhsm2.conf");
    std::fs::write(&conf, format!("directories.tokendir = {}\nlog.level = ERROR\n", tokens.display())).unwrap();
    let ok = std::process::Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", "bench", "--pin", "1234", "--so-pin", "5678"])
        .output()
        .expect("softhsm2-util: apt-get install softhsm2 (scripts/bench does)")
        .status
        .success();
    assert!(ok, "softhsm2-util --init-token failed");
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let token = Token::open(std::path::Path::new(SOFTHSM), &Pkcs11Uri::parse("pkcs11:token=bench").unwrap()).unwrap();
    (token, Pin::new("1234").unwrap())
}

/// Certificate build + sign with the CA key in a key file (in memory) and in
/// SoftHSM2, then the whole sequential issue path with each, in one run.
fn hsm_vs_file(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let (token, pin) = softhsm(tmp.path());
    let mut g = c.benchmark_group("hsm_vs_file");
    g.throughput(Throughput::Elements(1));
    let dev = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let parsed = csr::parse_and_verify(&device_csr(1, &dev)).unwrap();
    let ca_name = NameBuilder::default().organization("bench").unwrap().common_name("CA").unwrap().build();
    let file_key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let hsm_key = HsmKey::generate(&token, &pin, KeyType::EcdsaP256, "bench-ca").unwrap();
    for (name, key) in [("file", &file_key as &dyn Signer), ("softhsm", &hsm_key as &dyn Signer)] {
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(key.public_key_der()).unwrap();
        let kid = keys::key_identifier(&spki);
        let issuer = Issuer { subject: &ca_name, key_id: &kid, not_after: 2_500_000_000, signer: key };
        g.bench_function(format!("cert_build_sign_{name}"), |b| {
            b.iter(|| {
                let params = CertParams {
                    profile: Profile::Device,
                    serial: serial::system_random_serial(1_800_000_000).unwrap().0,
                    subject: parsed.subject.clone(),
                    spki: parsed.spki.clone(),
                    not_before: 1_800_000_000,
                    not_after: 1_900_000_000,
                    dns_names: vec![],
                    ip_addrs: vec![],
                    permitted_subtree: None,
                };
                profile::issue(&params, &issuer).unwrap()
            })
        });
    }
    let msg = [7u8; 300];
    g.bench_function("p256_sign_file", |b| b.iter(|| file_key.sign(&msg).unwrap()));
    g.bench_function("p256_sign_softhsm", |b| b.iter(|| hsm_key.sign(&msg).unwrap()));
    hsm_key.destroy().unwrap();

    g.sample_size(10).measurement_time(Duration::from_secs(8));
    let hsm =
        HsmInit { module: SOFTHSM.into(), token: Pkcs11Uri::parse("pkcs11:token=bench").unwrap(), pin: pin.clone() };
    for (name, bench) in [("file", Bench::new()), ("softhsm", Bench::with(Some(hsm)))] {
        g.bench_function(format!("issue_path_sequential_{name}"), |b| {
            b.iter_custom(|iters| {
                let jobs = bench.prepare(iters as usize);
                let t = Instant::now();
                for j in &jobs {
                    bench.enroll(j);
                }
                t.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, raw_crypto, core_ops, issue_path, hsm_vs_file);
criterion_main!(benches);
