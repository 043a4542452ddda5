//! Revocation: a revoked device is refused, and the CRLs say so to peers
//! (openssl crl -verify, openssl verify -crl_check, pkilint lint_crl).

use std::process::Command;

use iotpki_authority::revocation::{self, Target};
use iotpki_core::name::DeviceSerial;

use crate::util::{run_ok, Ca};

fn curl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl").args(["--silent", "--show-error", "--fail"]).args(args).output().unwrap();
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_refused_and_listed_on_the_crl() {
    let ca = Ca::start().await;
    let dev = ca.enrolled_device("RV-1").await;
    let keep = ca.enrolled_device("RV-2").await;
    let store = ca.authority.store().clone();
    let sn = DeviceSerial::parse("RV-1").unwrap();
    let revoked = revocation::revoke(store.as_ref(), ca.clock.as_ref(), Target::Device(&sn), 1, "test").unwrap();
    assert_eq!(revoked.len(), 1);
    // Twice, or something unknown: refused with the reason.
    let again = revocation::revoke(store.as_ref(), ca.clock.as_ref(), Target::Device(&sn), 1, "test").unwrap_err();
    assert!(again.to_string().contains("no certificate that is not revoked"), "{again}");
    let unknown = revocation::revoke(store.as_ref(), ca.clock.as_ref(), Target::Serial("00ff"), 1, "test").unwrap_err();
    assert!(unknown.to_string().contains("not in the store"), "{unknown}");

    // The revoked device cannot renew; the other one can.
    let err = iotpki_agent::renew(&dev, None, None).await.unwrap_err();
    assert!(err.to_string().contains("HTTP 403") && err.to_string().contains("revoked"), "{err}");
    iotpki_agent::renew(&keep, None, None).await.unwrap();

    // The CRL, over HTTP, checked by openssl and pkilint.
    let d = ca.tmp.path().join("crl");
    std::fs::create_dir_all(&d).unwrap();
    let dev_cert = iotpki_agent::state::load(&dev).unwrap().cert_pem;
    let keep_cert = iotpki_agent::state::load(&keep).unwrap().cert_pem;
    std::fs::write(d.join("dev.pem"), dev_cert).unwrap();
    std::fs::write(d.join("keep.pem"), keep_cert).unwrap();
    let (url, root, op) = (ca.url.clone(), ca.root_file(), ca.ca_file("operational"));
    let lint = std::env::var_os("IOTPKI_PKILINT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/iotpki/venv/bin")
        })
        .join("lint_crl");
    let dd = d.clone();
    tokio::task::spawn_blocking(move || {
        let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
        let der = curl(&["--cacert", &s(&root), &format!("{url}/crl/operational.crl")]);
        std::fs::write(dd.join("op.crl"), &der).unwrap();
        let text = String::from_utf8(curl(&[
            "--cacert",
            &s(&root),
            "-H",
            "Accept: application/x-pem-file",
            &format!("{url}/crl/operational.crl"),
        ]))
        .unwrap();
        assert!(text.starts_with("-----BEGIN X509 CRL-----"), "{text}");
        std::fs::write(dd.join("op.crl.pem"), &text).unwrap();
        let out = Command::new("openssl")
            .args([
                "crl",
                "-inform",
                "DER",
                "-in",
                &s(&dd.join("op.crl")),
                "-CAfile",
                &s(&op),
                "-noout",
                "-verify",
                "-text",
            ])
            .output()
            .unwrap();
        let all = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && all.contains("verify OK"), "{all}");
        assert!(all.contains("Key Compromise") && all.contains("X509v3 CRL Number"), "{all}");
        // openssl verify with the CRL: the revoked device fails, the other passes.
        let check = |cert: &str| {
            Command::new("openssl")
                .args([
                    "verify",
                    "-crl_check",
                    "-CAfile",
                    &s(&root),
                    "-untrusted",
                    &s(&op),
                    "-CRLfile",
                    &s(&dd.join("op.crl.pem")),
                    &s(&dd.join(cert)),
                ])
                .output()
                .unwrap()
        };
        let bad = check("dev.pem");
        let said = String::from_utf8_lossy(&bad.stdout).to_string() + &String::from_utf8_lossy(&bad.stderr);
        assert!(!bad.status.success(), "a revoked certificate must fail: {said}");
        assert!(said.contains("certificate revoked"), "{said}");
        assert!(check("keep.pem").status.success());
        let l = run_ok(Command::new(&lint).args([
            "lint",
            "-t",
            "CRL",
            "-p",
            "PKIX",
            "-s",
            "WARNING",
            "--document-format",
            "DER",
            &s(&dd.join("op.crl")),
        ]));
        assert!(l.trim().is_empty(), "pkilint: {l}");
        let missing = Command::new("curl")
            .args([
                "--silent",
                "--cacert",
                &s(&root),
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("{url}/crl/nosuch.crl"),
            ])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&missing.stdout), "404");
    })
    .await
    .unwrap();

    // The CRL is cached until something changes; then a higher number.
    let number = |der: &[u8]| {
        use iotpki_core::asn1::der::Decode;
        let crl = iotpki_core::asn1::x509_cert::crl::CertificateList::from_der(der).unwrap();
        let ext = crl
            .tbs_cert_list
            .crl_extensions
            .unwrap()
            .into_iter()
            .find(|e| e.extn_id.to_string() == "2.5.29.20")
            .unwrap();
        ext.extn_value.as_bytes().to_vec()
    };
    let a = ca.authority.crl("operational").unwrap();
    assert_eq!(ca.authority.crl("operational").unwrap(), a, "cached");
    let keep_serial = iotpki_agent::status(&keep).unwrap().cert_serial;
    revocation::revoke(store.as_ref(), ca.clock.as_ref(), Target::Serial(&keep_serial), 4, "test").unwrap();
    let b = ca.authority.crl("operational").unwrap();
    assert_ne!(a, b);
    assert!(number(&b) > number(&a), "CRL numbers grow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsp_answers_good_revoked_unknown_and_peers_agree() {
    let ca = Ca::start().await;
    let dev = ca.enrolled_device("OC-1").await;
    let d = ca.tmp.path().join("ocsp");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("dev.pem"), iotpki_agent::state::load(&dev).unwrap().cert_pem).unwrap();
    let (url, root, op) = (ca.url.clone(), ca.root_file(), ca.ca_file("operational"));
    let pkilint = |tool: &str| {
        std::env::var_os("IOTPKI_PKILINT_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/iotpki/venv/bin")
            })
            .join(tool)
    };
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let ask = {
        let (url, root, op, d) = (url.clone(), root.clone(), op.clone(), d.clone());
        move |extra: &[&str], out: &str| {
            let o = Command::new("openssl")
                .args([
                    "ocsp",
                    "-issuer",
                    &s(&op),
                    "-url",
                    &format!("{url}/ocsp"),
                    "-CAfile",
                    &s(&root),
                    "-respout",
                    &s(&d.join(out)),
                ])
                .args(extra)
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
        }
    };
    let (a1, dd, lint, root1, op1, url1) =
        (ask.clone(), d.clone(), pkilint("lint_ocsp_response"), root.clone(), op.clone(), url.clone());
    tokio::task::spawn_blocking(move || {
        let (root, op, url) = (root1, op1, url1);
        let out = a1(&["-cert", &s(&dd.join("dev.pem"))], "good.der");
        assert!(out.contains("Response verify OK") && out.contains("dev.pem: good"), "{out}");
        let out = a1(&["-serial", "0x0123456789abcdef"], "unknown.der");
        assert!(out.contains("Response verify OK") && out.contains(": unknown"), "{out}");
        // About a CA this responder does not serve (the operational CA itself, issued by the root): unauthorized.
        let o = Command::new("openssl")
            .args([
                "ocsp",
                "-issuer",
                &s(&root),
                "-cert",
                &s(&op),
                "-url",
                &format!("{url}/ocsp"),
                "-CAfile",
                &s(&root),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        assert!(text.contains("unauthorized"), "{text}");
        let l = run_ok(Command::new(&lint).args(["lint", "-s", "WARNING", &s(&dd.join("good.der"))]));
        assert!(l.trim().is_empty(), "pkilint: {l}");
        // GET, with the request base64 in the path (RFC 6960 A.1).
        run_ok(Command::new("openssl").args([
            "ocsp",
            "-issuer",
            &s(&op),
            "-cert",
            &s(&dd.join("dev.pem")),
            "-no_nonce",
            "-reqout",
            &s(&dd.join("req.der")),
        ]));
        let b64 = run_ok(Command::new("openssl").args(["base64", "-A", "-in", &s(&dd.join("req.der"))]));
        let got = Command::new("curl")
            .args([
                "--silent",
                "--fail",
                "--cacert",
                &s(&root),
                "-o",
                &s(&dd.join("get.der")),
                &format!("{url}/ocsp/{}", b64.trim().replace('/', "%2F").replace('+', "%2B")),
            ])
            .status()
            .unwrap();
        assert!(got.success());
        let out = Command::new("openssl")
            .args([
                "ocsp",
                "-respin",
                &s(&dd.join("get.der")),
                "-issuer",
                &s(&op),
                "-cert",
                &s(&dd.join("dev.pem")),
                "-CAfile",
                &s(&root),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("Response verify OK") && text.contains("dev.pem: good"), "{text}");
        // Garbage: malformedRequest, not an HTTP error.
        let o = Command::new("curl")
            .args([
                "--silent",
                "--fail",
                "--cacert",
                &s(&root),
                "-H",
                "Content-Type: application/ocsp-request",
                "--data-binary",
                "garbage",
                "-o",
                &s(&dd.join("bad.der")),
                &format!("{url}/ocsp"),
            ])
            .status()
            .unwrap();
        assert!(o.success());
        let out = Command::new("openssl")
            .args(["ocsp", "-respin", &s(&dd.join("bad.der")), "-resp_text", "-noverify"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(text.to_lowercase().contains("malformedrequest"), "{text}");
    })
    .await
    .unwrap();

    // The OCSP signer is a recorded certificate that pkilint finds clean, alone and under its CA.
    let signer = ca
        .authority
        .store()
        .list_certificates(&Default::default())
        .unwrap()
        .into_iter()
        .find(|c| c.profile == "ocsp-signer")
        .unwrap();
    std::fs::write(d.join("signer.pem"), iotpki_core::pem::encode("CERTIFICATE", &signer.der)).unwrap();
    let (dd, cert_lint, chain_lint, op2) =
        (d.clone(), pkilint("lint_pkix_cert"), pkilint("lint_pkix_signer_signee_cert_chain"), op.clone());
    tokio::task::spawn_blocking(move || {
        let l = run_ok(Command::new(&cert_lint).args([
            "lint",
            "-s",
            "WARNING",
            "--document-format",
            "PEM",
            &s(&dd.join("signer.pem")),
        ]));
        assert!(l.trim().is_empty(), "pkilint: {l}");
        let l = run_ok(Command::new(&chain_lint).args([
            "lint",
            "-s",
            "WARNING",
            "--document-format",
            "PEM",
            &s(&op2),
            &s(&dd.join("signer.pem")),
        ]));
        assert!(l.trim().is_empty(), "pkilint: {l}");
    })
    .await
    .unwrap();

    // Revoked: the answer changes at once (the cache follows the store), with its reason.
    let sn = DeviceSerial::parse("OC-1").unwrap();
    revocation::revoke(ca.authority.store().as_ref(), ca.clock.as_ref(), Target::Device(&sn), 1, "test").unwrap();
    let (a2, dd, lint) = (ask, d.clone(), pkilint("lint_ocsp_response"));
    tokio::task::spawn_blocking(move || {
        let out = a2(&["-cert", &s(&dd.join("dev.pem")), "-no_nonce"], "revoked.der");
        assert!(
            out.contains("Response verify OK") && out.contains("dev.pem: revoked") && out.contains("keyCompromise"),
            "{out}"
        );
        let l = run_ok(Command::new(&lint).args(["lint", "-s", "WARNING", &s(&dd.join("revoked.der"))]));
        assert!(l.trim().is_empty(), "pkilint: {l}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_certificates_point_to_their_crl_and_ocsp_and_openssl_follows_them() {
    let ca = Ca::start().await;
    let dev = ca.enrolled_device("DP-1").await;
    let d = ca.tmp.path().join("dp");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("dev.pem"), iotpki_agent::state::load(&dev).unwrap().cert_pem).unwrap();
    let (root, op, http) = (ca.root_file(), ca.ca_file("operational"), ca.http_url.clone());
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let verify = {
        let (root, op, d) = (root.clone(), op.clone(), d.clone());
        move || {
            let o = Command::new("openssl")
                .args(["verify", "-crl_check", "-crl_download", "-CAfile", &s(&root), "-untrusted", &s(&op)])
                .arg(d.join("dev.pem"))
                .output()
                .unwrap();
            (o.status.success(), String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr))
        }
    };
    let ocsp = {
        let (root, op, d) = (root.clone(), op.clone(), d.clone());
        move |url: &str| {
            let o = Command::new("openssl")
                .args(["ocsp", "-issuer", &s(&op), "-CAfile", &s(&root), "-url", url])
                .arg("-cert")
                .arg(d.join("dev.pem"))
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
        }
    };
    let (dd, v1, o1, http1) = (d.clone(), verify.clone(), ocsp.clone(), http.clone());
    let uri = tokio::task::spawn_blocking(move || {
        let dev = s(&dd.join("dev.pem"));
        let uri = run_ok(Command::new("openssl").args(["x509", "-noout", "-ocsp_uri", "-in", &dev])).trim().to_string();
        assert_eq!(uri, format!("{http1}/ocsp"));
        let dp = run_ok(Command::new("openssl").args(["x509", "-noout", "-ext", "crlDistributionPoints", "-in", &dev]));
        assert!(dp.contains(&format!("URI:{http1}/crl/operational.crl")), "{dp}");
        // openssl fetches the CRL from the distribution point and asks the OCSP responder in the AIA.
        let (ok, said) = v1();
        assert!(ok, "{said}");
        let out = o1(&uri);
        assert!(out.contains("Response verify OK") && out.contains("dev.pem: good"), "{out}");
        uri
    })
    .await
    .unwrap();

    let sn = DeviceSerial::parse("DP-1").unwrap();
    revocation::revoke(ca.authority.store().as_ref(), ca.clock.as_ref(), Target::Device(&sn), 1, "test").unwrap();
    tokio::task::spawn_blocking(move || {
        let (ok, said) = verify();
        assert!(!ok && said.contains("certificate revoked"), "{said}");
        let out = ocsp(&uri);
        assert!(out.contains("Response verify OK") && out.contains("dev.pem: revoked"), "{out}");
    })
    .await
    .unwrap();
    // Nothing that issues is reachable without TLS.
    let est = Command::new("curl")
        .args(["--silent", "--output", "/dev/null", "--write-out", "%{http_code}"])
        .arg(format!("{http}/.well-known/est/cacerts"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&est.stdout), "404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_crl_lists_a_certificate_in_its_own_shard_only_and_peers_agree() {
    use iotpki_core::crl::shard_of;
    let opts = iotpki_authority::init::InitOptions { crl_shards: Some(2), ..Default::default() };
    let ca = Ca::start_with(opts).await;
    // Devices until both shards have one (each lands in either with probability 1/2).
    let (mut a, mut b) = (None, None);
    for i in 0..24 {
        let dev = ca.enrolled_device(&format!("SH-{i}")).await;
        let serial = iotpki_agent::status(&dev).unwrap().cert_serial;
        let slot = if shard_of(&serial, 2) == Some(0) { &mut a } else { &mut b };
        if slot.is_none() {
            *slot = Some((dev, serial));
        }
        if a.is_some() && b.is_some() {
            break;
        }
    }
    let ((dev_a, serial_a), (dev_b, serial_b)) = (a.unwrap(), b.unwrap());
    let d = ca.tmp.path().join("shards");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("a.pem"), iotpki_agent::state::load(&dev_a).unwrap().cert_pem).unwrap();
    std::fs::write(d.join("b.pem"), iotpki_agent::state::load(&dev_b).unwrap().cert_pem).unwrap();
    let http = ca.http_url.clone();
    let b_before = ca.authority.crl_scoped("operational", Some((2, 1))).unwrap();

    let sn = DeviceSerial::parse(&iotpki_agent::status(&dev_a).unwrap().device_serial).unwrap();
    revocation::revoke(ca.authority.store().as_ref(), ca.clock.as_ref(), Target::Device(&sn), 1, "test").unwrap();
    // Shard 1 has the same entries as before: the same CRL, not signed again.
    assert_eq!(ca.authority.crl_scoped("operational", Some((2, 1))).unwrap(), b_before);
    let audit_before = ca.audit_len();
    let _ = ca.authority.crl_scoped("operational", Some((2, 0))).unwrap();
    assert_eq!(ca.audit_len(), audit_before + 1, "shard 0 changed: a new CRL, recorded");
    assert_eq!(ca.last_audit().event.target, "operational/2/0");

    let (root, op) = (ca.root_file(), ca.ca_file("operational"));
    let dd = d.clone();
    let upper = serial_a.to_uppercase();
    let upper_b = serial_b.to_uppercase();
    tokio::task::spawn_blocking(move || {
        let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
        for (pem, k) in [("a.pem", 0), ("b.pem", 1)] {
            let dp = run_ok(
                Command::new("openssl")
                    .args(["x509", "-noout", "-ext", "crlDistributionPoints", "-in"])
                    .arg(dd.join(pem)),
            );
            assert!(dp.contains(&format!("URI:{http}/crl/operational/2/{k}.crl")), "{dp}");
            let der = curl(&[&format!("{http}/crl/operational/2/{k}.crl")]);
            std::fs::write(dd.join(format!("{k}.crl")), &der).unwrap();
            let pem_crl = Command::new("openssl")
                .args(["crl", "-inform", "DER", "-in", &s(&dd.join(format!("{k}.crl"))), "-out"])
                .arg(dd.join(format!("{k}.crl.pem")))
                .output()
                .unwrap();
            assert!(pem_crl.status.success());
        }
        // Each shard verifies, names itself in a critical issuingDistributionPoint,
        // and only shard 0 lists the revoked certificate.
        for k in [0, 1] {
            let out = Command::new("openssl")
                .args(["crl", "-inform", "DER", "-in", &s(&dd.join(format!("{k}.crl"))), "-CAfile", &s(&op)])
                .args(["-noout", "-verify", "-text"])
                .output()
                .unwrap();
            let all = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success() && all.contains("verify OK"), "{all}");
            assert!(all.contains("X509v3 Issuing Distribution Point: critical"), "{all}");
            assert!(all.contains(&format!("URI:{http}/crl/operational/2/{k}.crl")), "{all}");
            assert_eq!(all.contains(&upper), k == 0, "shard {k}: {all}");
            assert!(!all.contains(&upper_b), "the good certificate is on no shard: {all}");
        }
        let verify = |cert: &str, crl: &str| {
            let o = Command::new("openssl")
                .args(["verify", "-crl_check", "-CAfile", &s(&root), "-untrusted", &s(&op), "-CRLfile"])
                .arg(dd.join(crl))
                .arg(dd.join(cert))
                .output()
                .unwrap();
            (o.status.success(), String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr))
        };
        let (ok, said) = verify("a.pem", "0.crl.pem");
        assert!(!ok && said.contains("certificate revoked"), "{said}");
        let (ok, said) = verify("b.pem", "1.crl.pem");
        assert!(ok, "{said}");
        // openssl does not take another shard's CRL for a certificate: out of its scope.
        let (ok, said) = verify("a.pem", "1.crl.pem");
        assert!(!ok && said.contains("different CRL scope"), "{said}");
        // openssl follows the distribution point to the shard.
        let o = Command::new("openssl")
            .args(["verify", "-crl_check", "-crl_download", "-CAfile", &s(&root), "-untrusted", &s(&op)])
            .arg(dd.join("a.pem"))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && said.contains("certificate revoked"), "{said}");
        // pkilint: no finding at WARNING or above.
        let lint = std::env::var_os("IOTPKI_PKILINT_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/iotpki/venv/bin")
            })
            .join("lint_crl");
        let l = run_ok(
            Command::new(&lint)
                .args(["lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING", "--document-format", "DER"])
                .arg(dd.join("0.crl")),
        );
        assert!(l.trim().is_empty(), "pkilint: {l}");
        // No such shard: 404, with the reason.
        for bad in ["operational/2/2.crl", "operational/3/0.crl", "operational/2/01.crl", "nosuch/2/0.crl"] {
            let o = Command::new("curl")
                .args(["--silent", "-o", "/dev/null", "-w", "%{http_code}", &format!("{http}/crl/{bad}")])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&o.stdout), "404", "{bad}");
        }
        // The complete CRL is still served, and lists it too.
        let whole = curl(&[&format!("{http}/crl/operational.crl")]);
        std::fs::write(dd.join("whole.crl"), &whole).unwrap();
        let text = run_ok(
            Command::new("openssl").args(["crl", "-inform", "DER", "-noout", "-text", "-in"]).arg(dd.join("whole.crl")),
        );
        assert!(text.contains(&upper) && !text.contains("Issuing Distribution Point"), "{text}");
    })
    .await
    .unwrap();

    // The devices: each takes its own shard only.
    let shard0 = std::fs::read(d.join("0.crl")).unwrap();
    let shard1 = std::fs::read(d.join("1.crl")).unwrap();
    let before = std::fs::read_dir(&dev_b).unwrap().count();
    let err = iotpki_agent::trust::apply(&dev_b, &shard0, false).unwrap_err().to_string();
    assert!(err.contains("covers none of this device's certificates"), "{err}");
    assert_eq!(std::fs::read_dir(&dev_b).unwrap().count(), before, "nothing installed");
    match iotpki_agent::trust::apply(&dev_b, &shard1, false).unwrap() {
        iotpki_agent::trust::Applied::Crl { own_revoked, .. } => assert!(!own_revoked),
        other => panic!("{other:?}"),
    }
    let fetched = iotpki_agent::trust::fetch_and_apply(&dev_a, &ca.http_url).await.unwrap();
    let crl = fetched.iter().find(|(p, _)| p.starts_with("/crl/")).expect("the shard was fetched");
    assert_eq!(crl.0, "/crl/operational/2/0.crl");
    assert!(matches!(crl.1, Ok(iotpki_agent::trust::Applied::Crl { own_revoked: true, .. })), "{crl:?}");
}

#[test]
fn crl_shards_that_cannot_be_served_are_refused_with_the_reason() {
    use iotpki_authority::clock::SystemClock;
    use iotpki_authority::init::InitOptions;
    let tmp = tempfile::tempdir().unwrap();
    let pass = iotpki_authority::Passphrase::new(crate::util::PASS.into()).unwrap();
    // Shards need a URL to name in certificates: init refuses, and makes nothing.
    let no_url = InitOptions { public_http_url: None, http_listen: None, ..InitOptions::default() };
    let dir = tmp.path().join("ca");
    let e =
        iotpki_authority::init::init(&dir, &InitOptions { crl_shards: Some(4), ..no_url.clone() }, &pass, &SystemClock)
            .unwrap_err()
            .to_string();
    assert!(e.contains("--crl-shards 4") && e.contains("needs server.public_http_url"), "{e}");
    assert!(!dir.exists());
    // An authority without a URL serves its complete CRL, and no shards.
    iotpki_authority::init::init(&dir, &no_url, &pass, &SystemClock).unwrap();
    let a = iotpki_authority::Authority::open(&dir, &pass, std::sync::Arc::new(SystemClock)).unwrap();
    assert!(a.crl("operational").is_ok());
    let e = a.crl_scoped("operational", Some((2, 0))).unwrap_err().to_string();
    assert!(e.contains("no partitioned CRLs"), "{e}");
    // Counts and shards that do not exist, asked of the authority directly.
    for (s, k) in [(3, 0), (2, 2), (2048, 0), (0, 0)] {
        let e = a.crl_scoped("operational", Some((s, k))).unwrap_err().to_string();
        assert!(e.contains(&format!("no CRL shard {k} of {s}")), "{e}");
    }
    assert!(a.crl_scoped("nosuch", None).unwrap_err().to_string().contains("no issuing CA named"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_leaves_the_crl_some_time_after_it_expires() {
    use iotpki_authority::clock::Clock as _;
    use iotpki_authority::revocation::EXPIRED_KEPT_SECS;
    let ca = Ca::start().await;
    let dev = ca.enrolled_device("EX-1").await;
    let keep = ca.enrolled_device("EX-2").await;
    let serial = iotpki_agent::status(&dev).unwrap().cert_serial;
    let keep_serial = iotpki_agent::status(&keep).unwrap().cert_serial;
    let store = ca.authority.store().clone();
    let not_after = store.certificate(&serial).unwrap().unwrap().not_after;
    for s in [&serial, &keep_serial] {
        revocation::revoke(store.as_ref(), ca.clock.as_ref(), Target::Serial(s), 1, "test").unwrap();
    }
    let op = iotpki_core::pem::decode_one("CERTIFICATE", &std::fs::read_to_string(ca.ca_file("operational")).unwrap())
        .unwrap();
    let listed = |ca: &Ca| {
        let der = ca.authority.crl("operational").unwrap();
        let c = iotpki_core::crl::check(&der, &op, ca.clock.now(), 0).unwrap();
        (c.revoked.contains(&serial), c.revoked.len())
    };
    assert_eq!(listed(&ca), (true, 2));
    // Expired, but not long enough: still listed (RFC 5280 3.3).
    ca.clock.advance(not_after + EXPIRED_KEPT_SECS - 1 - ca.clock.now());
    assert_eq!(listed(&ca), (true, 2));
    // Then it leaves every CRL, complete and partitioned, from the next one made
    // (a cached CRL is kept for half its validity); the store still knows it.
    ca.clock.advance(2);
    let shard = iotpki_core::crl::shard_of(&serial, 2).unwrap();
    let der = ca.authority.crl_scoped("operational", Some((2, shard))).unwrap();
    assert!(!iotpki_core::crl::check(&der, &op, ca.clock.now(), 0).unwrap().revoked.contains(&serial));
    ca.clock.advance(revocation::CRL_VALIDITY_SECS / 2);
    assert_eq!(listed(&ca), (false, 0), "both certificates expired at the same time");
    let rec = store.certificate(&serial).unwrap().unwrap();
    assert!(matches!(rec.status, iotpki_store::CertStatus::Revoked { .. }), "the store keeps it");
}
