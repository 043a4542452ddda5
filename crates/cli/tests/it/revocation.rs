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
    use iotpki_authority::init::InitOptions;
    use iotpki_core::clock::SystemClock;
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
    use iotpki_authority::revocation::EXPIRED_KEPT_SECS;
    use iotpki_core::clock::Clock as _;
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

fn pkilint_tool(tool: &str) -> std::path::PathBuf {
    std::env::var_os("IOTPKI_PKILINT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/iotpki/venv/bin")
        })
        .join(tool)
}

fn text_of(cmd: &mut Command) -> (bool, String) {
    let o = cmd.output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr))
}

/// The number of the root's ARL as the server serves it.
fn arl_number(http: &str) -> u64 {
    iotpki_core::crl::number(&curl(&[&format!("{http}/crl/root.crl")])).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_arl_is_served_lints_clean_and_a_revoked_ca_fails_strict_verification() {
    let ca = Ca::start().await;
    let op_dev = ca.enrolled_device("ARL-1").await;
    // A birth comes only from a station on the line.
    let birth_state = crate::util::born_devices(&ca, "ARLB", &["ARL-2".to_string()]).await.remove(0);
    let d = ca.tmp.path().join("arl");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("op-dev.pem"), iotpki_agent::state::load(&op_dev).unwrap().cert_pem).unwrap();
    std::fs::write(d.join("birth.pem"), iotpki_agent::state::load(&birth_state).unwrap().cert_pem).unwrap();
    let pass_file = ca.tmp.path().join("pass");
    std::fs::write(&pass_file, crate::util::PASS).unwrap();
    let wrong_pass = ca.tmp.path().join("wrong");
    std::fs::write(&wrong_pass, "not the passphrase").unwrap();
    let (dir, http, root) = (ca.dir.clone(), ca.http_url.clone(), ca.root_file());
    let (mfg, op) = (ca.ca_file("manufacturing"), ca.ca_file("operational"));
    let store = ca.authority.store().clone();
    let mfg_serial = iotpki_core::profile::cert_info(
        &iotpki_core::pem::decode_one("CERTIFICATE", &std::fs::read_to_string(&mfg).unwrap()).unwrap(),
    )
    .unwrap()
    .serial;
    tokio::task::spawn_blocking(move || {
        let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
        // Every CA certificate names the root's ARL; the server's names its issuer's CRL and OCSP.
        for c in [&mfg, &op] {
            let dp =
                run_ok(Command::new("openssl").args(["x509", "-noout", "-ext", "crlDistributionPoints", "-in", &s(c)]));
            assert!(dp.contains(&format!("URI:{http}/crl/root.crl")), "{dp}");
        }
        let server_chain = std::fs::read_to_string(dir.join("tls/server.crt")).unwrap();
        let leaf = iotpki_core::pem::decode_all("CERTIFICATE", &server_chain).unwrap().remove(0);
        std::fs::write(d.join("server.pem"), iotpki_core::pem::encode("CERTIFICATE", &leaf)).unwrap();
        let text = run_ok(Command::new("openssl").args(["x509", "-noout", "-text", "-in", &s(&d.join("server.pem"))]));
        assert!(
            text.contains("X509v3 CRL Distribution Points")
                && text.contains(&format!("URI:{http}/crl/operational.crl")),
            "{text}"
        );
        assert!(
            text.contains("Authority Information Access") && text.contains(&format!("OCSP - URI:{http}/ocsp")),
            "{text}"
        );

        // The ARL: signed by the root, one year, empty, lints clean as an ARL.
        let der = curl(&[&format!("{http}/crl/root.crl")]);
        std::fs::write(d.join("root.crl"), &der).unwrap();
        let (ok, out) = text_of(Command::new("openssl").args([
            "crl",
            "-inform",
            "DER",
            "-in",
            &s(&d.join("root.crl")),
            "-CAfile",
            &s(&root),
            "-noout",
            "-verify",
            "-text",
        ]));
        assert!(ok && out.contains("verify OK") && out.contains("No Revoked Certificates"), "{out}");
        let next = iotpki_core::crl::next_update(&der).unwrap();
        let now = iotpki_authority::Clock::now(&iotpki_authority::SystemClock);
        assert!((next - now - 365 * 86_400).abs() < 3600, "a year ahead, explicit: {next}");
        let l = run_ok(Command::new(pkilint_tool("lint_crl")).args([
            "lint",
            "-t",
            "ARL",
            "-p",
            "PKIX",
            "-s",
            "WARNING",
            "--document-format",
            "DER",
            &s(&d.join("root.crl")),
        ]));
        assert!(l.trim().is_empty(), "pkilint: {l}");
        let crls = |name: &str| {
            let p = d.join(name);
            let mut all = curl(&["-H", "Accept: application/x-pem-file", &format!("{http}/crl/root.crl")]);
            all.extend(curl(&["-H", "Accept: application/x-pem-file", &format!("{http}/crl/operational.crl")]));
            all.extend(curl(&["-H", "Accept: application/x-pem-file", &format!("{http}/crl/manufacturing.crl")]));
            std::fs::write(&p, all).unwrap();
            p
        };
        let verify = |leaf: &str, via: &std::path::Path, crls: &std::path::Path| {
            text_of(Command::new("openssl").args([
                "verify",
                "-crl_check_all",
                "-CAfile",
                &s(&root),
                "-untrusted",
                &s(via),
                "-CRLfile",
                &s(crls),
                &s(&d.join(leaf)),
            ]))
        };
        let before = crls("before.pem");
        for (leaf, via) in [("op-dev.pem", &op), ("birth.pem", &mfg)] {
            let (ok, out) = verify(leaf, via, &before);
            assert!(ok, "{leaf}: {out}");
        }

        // A CA certificate is not revoked by plain `revoke`, nor without the root key: nothing changes.
        let revoked_before = store.revocation_mark("root").unwrap();
        let e = crate::util::run_fail(crate::util::bin().args(["revoke", "--serial", &mfg_serial, "--dir", &s(&dir)]));
        assert!(e.contains("iotpki ca revoke"), "{e}");
        let e = crate::util::run_fail(crate::util::bin().args([
            "ca",
            "revoke",
            "--serial",
            &mfg_serial,
            "--dir",
            &s(&dir),
            "--passphrase-file",
            &s(&wrong_pass),
        ]));
        assert!(e.to_lowercase().contains("passphrase") || e.contains("decrypt"), "{e}");
        let e = crate::util::run_fail(crate::util::bin().args([
            "ca",
            "sign-arl",
            "--dir",
            &s(&dir),
            "--passphrase-file",
            &s(&pass_file),
            "--validity-days",
            "4000",
        ]));
        assert!(e.contains("1 to 1825 days"), "{e}");
        assert_eq!(store.revocation_mark("root").unwrap(), revoked_before, "nothing revoked");
        assert_eq!(arl_number(&http), 1, "no ARL signed");

        // Signed again on request, then with the manufacturing CA revoked: its births fail, the rest passes.
        let out =
            run_ok(crate::util::bin().args(["ca", "sign-arl", "--dir", &s(&dir), "--passphrase-file", &s(&pass_file)]));
        assert!(out.contains("ARL of root: number 2"), "{out}");
        assert_eq!(arl_number(&http), 2);
        let out = run_ok(crate::util::bin().args([
            "ca",
            "revoke",
            "--serial",
            &mfg_serial,
            "--reason",
            "cACompromise",
            "--dir",
            &s(&dir),
            "--passphrase-file",
            &s(&pass_file),
        ]));
        assert!(out.contains("ARL of root: number 3, 1 revoked"), "{out}");
        let after = crls("after.pem");
        let (ok, out) = verify("birth.pem", &mfg, &after);
        assert!(!ok && out.contains("certificate revoked"), "a birth under a revoked CA: {out}");
        let (ok, out) = verify("op-dev.pem", &op, &after);
        assert!(ok, "{out}");
        let der = curl(&[&format!("{http}/crl/root.crl")]);
        std::fs::write(d.join("root3.crl"), &der).unwrap();
        let (ok, out) = text_of(Command::new("openssl").args([
            "crl",
            "-inform",
            "DER",
            "-in",
            &s(&d.join("root3.crl")),
            "-CAfile",
            &s(&root),
            "-noout",
            "-verify",
            "-text",
        ]));
        assert!(ok && out.contains("CA Compromise") && out.to_lowercase().contains(&mfg_serial), "{out}");
        let l = run_ok(Command::new(pkilint_tool("lint_crl")).args([
            "lint",
            "-t",
            "ARL",
            "-p",
            "PKIX",
            "-s",
            "WARNING",
            "--document-format",
            "DER",
            &s(&d.join("root3.crl")),
        ]));
        assert!(l.trim().is_empty(), "pkilint: {l}");
    })
    .await
    .unwrap();
    let audit: Vec<String> =
        ca.authority.store().audit_entries(1, 10_000).unwrap().into_iter().map(|e| e.event.action).collect();
    assert!(
        audit.iter().filter(|a| *a == "arl.sign").count() == 3 && audit.contains(&"ca.revoke".to_string()),
        "{audit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_root_publishes_its_own_arl_and_its_ca_certificates_name_it() {
    let ca = Ca::start().await;
    let pass = iotpki_authority::Passphrase::new(crate::util::PASS.into()).unwrap();
    let r = iotpki_authority::rotation::rotate(&ca.dir, &pass, ca.clock.as_ref(), "test").unwrap();
    assert_eq!(r.root, "root-2");
    let (dir, http) = (ca.dir.clone(), ca.http_url.clone());
    let arl = ca.authority.store().artifact("arl/root-2").unwrap().expect("the new root's ARL is published");
    let d = ca.tmp.path().join("rot");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("root-2.crl"), &arl.body).unwrap();
    let pass_file = ca.tmp.path().join("pass");
    std::fs::write(&pass_file, crate::util::PASS).unwrap();
    tokio::task::spawn_blocking(move || {
        let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
        let (ok, out) = text_of(Command::new("openssl").args([
            "crl",
            "-inform",
            "DER",
            "-in",
            &s(&d.join("root-2.crl")),
            "-CAfile",
            &s(&dir.join("ca/root-2.crt")),
            "-noout",
            "-verify",
        ]));
        assert!(ok && out.contains("verify OK"), "{out}");
        for c in ["operational-2.crt", "manufacturing-2.crt"] {
            let dp = run_ok(Command::new("openssl").args([
                "x509",
                "-noout",
                "-ext",
                "crlDistributionPoints",
                "-in",
                &s(&dir.join("ca").join(c)),
            ]));
            assert!(dp.contains(&format!("URI:{http}/crl/root-2.crl")), "{c}: {dp}");
        }
        // sign-arl signs both roots while the old one retires.
        let out =
            run_ok(crate::util::bin().args(["ca", "sign-arl", "--dir", &s(&dir), "--passphrase-file", &s(&pass_file)]));
        assert!(out.contains("ARL of root: number 2") && out.contains("ARL of root-2: number 2"), "{out}");
    })
    .await
    .unwrap();
    // A server started on the rotated directory serves both.
    let clock =
        std::sync::Arc::new(iotpki_core::clock::FixedClock::new(iotpki_authority::Clock::now(ca.clock.as_ref())));
    let a = iotpki_authority::Authority::open(&ca.dir, &pass, clock).unwrap();
    assert_eq!(iotpki_core::crl::number(&a.crl("root-2").unwrap()).unwrap(), 2);
    assert_eq!(iotpki_core::crl::number(&a.crl("root").unwrap()).unwrap(), 2);
}

/// An EST simplereenroll over mutual TLS with curl: (HTTP status, body).
fn reenroll_with_curl(
    url: &str,
    root: &std::path::Path,
    chain: &std::path::Path,
    key: &std::path::Path,
    csr_b64: &std::path::Path,
) -> (String, Vec<u8>) {
    let out = Command::new("curl")
        .args(["--silent", "--cacert"])
        .arg(root)
        .arg("--cert")
        .arg(chain)
        .arg("--key")
        .arg(key)
        .args(["-H", "Content-Type: application/pkcs10", "--data-binary"])
        .arg(format!("@{}", csr_b64.display()))
        .args(["-w", "\n%{http_code}"])
        .arg(format!("{url}/.well-known/est/simplereenroll"))
        .output()
        .unwrap();
    let mut body = out.stdout;
    let nl = body.iter().rposition(|b| *b == b'\n').unwrap();
    let code = String::from_utf8_lossy(&body[nl + 1..]).into_owned();
    body.truncate(nl);
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_supersedes_the_old_certificate_and_a_lost_answer_gets_the_same_certificate_again() {
    use base64::Engine as _;
    let ca = Ca::start().await;
    let dev = ca.enrolled_device("SUP-1").await;
    let id = iotpki_agent::state::load(&dev).unwrap();
    let old_der = iotpki_core::pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap();
    let old = iotpki_core::profile::cert_info(&old_der).unwrap();
    let d = ca.tmp.path().join("sup");
    std::fs::create_dir_all(&d).unwrap();
    let chain = d.join("old.chain.pem");
    std::fs::write(&chain, format!("{}{}", id.cert_pem, id.chain_pem)).unwrap();
    std::fs::write(d.join("old.pem"), &id.cert_pem).unwrap();
    let old_key = dev.join(&id.key_file);
    // The agent's first step of a renewal: a new key in its state directory, then the request.
    let new_key = iotpki_core::keys::SoftKey::generate(iotpki_core::keys::KeyType::EcdsaP256).unwrap();
    iotpki_agent::state::write_new_key(&dev, &new_key).unwrap();
    let csr = iotpki_core::csr::build(&old.cert.tbs_certificate.subject, &new_key, vec![]).unwrap();
    std::fs::write(d.join("csr.b64"), base64::engine::general_purpose::STANDARD.encode(&csr)).unwrap();
    let other_key = iotpki_core::keys::SoftKey::generate(iotpki_core::keys::KeyType::EcdsaP256).unwrap();
    let other = iotpki_core::csr::build(&old.cert.tbs_certificate.subject, &other_key, vec![]).unwrap();
    std::fs::write(d.join("other.b64"), base64::engine::general_purpose::STANDARD.encode(&other)).unwrap();
    let (url, root) = (ca.url.clone(), ca.root_file());
    let store = ca.authority.store().clone();

    let (dd, url1, root1, chain1, key1) = (d.clone(), url.clone(), root.clone(), chain.clone(), old_key.clone());
    let (first, again, refused) = tokio::task::spawn_blocking(move || {
        let first = reenroll_with_curl(&url1, &root1, &chain1, &key1, &dd.join("csr.b64"));
        // The answer is "lost": the device asks again with its old certificate and the same request.
        let again = reenroll_with_curl(&url1, &root1, &chain1, &key1, &dd.join("csr.b64"));
        let refused = reenroll_with_curl(&url1, &root1, &chain1, &key1, &dd.join("other.b64"));
        (first, again, refused)
    })
    .await
    .unwrap();
    assert_eq!(first.0, "200", "{}", String::from_utf8_lossy(&first.1));
    assert_eq!(again.0, "200", "{}", String::from_utf8_lossy(&again.1));
    assert_eq!(first.1, again.1, "the same certificate, not a second one");
    assert_eq!(refused.0, "403", "another key with a superseded certificate: {}", String::from_utf8_lossy(&refused.1));
    assert!(String::from_utf8_lossy(&refused.1).contains("renewed already"), "{}", String::from_utf8_lossy(&refused.1));
    let p7 = base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8_lossy(&first.1).split_whitespace().collect::<String>())
        .unwrap();
    let new_der = iotpki_core::pkcs7::parse_certs_only(&p7).unwrap().remove(0);
    let new = iotpki_core::profile::cert_info(&new_der).unwrap();
    let q = iotpki_store::CertQuery { device_serial: Some("SUP-1".into()), ..Default::default() };
    let all = store.list_certificates(&q).unwrap();
    assert_eq!(all.len(), 2, "one renewal, however many retries: {all:?}");
    let o = store.certificate(&old.serial).unwrap().unwrap();
    assert_eq!(o.replaced_by.as_deref(), Some(new.serial.as_str()), "the registry names the successor");
    assert!(matches!(o.status, iotpki_store::CertStatus::Revoked { reason: 4, .. }), "{:?}", o.status);
    let n = store.certificate(&new.serial).unwrap().unwrap();
    assert_eq!(
        (n.replaces.as_deref(), n.replaced_by.clone(), n.status.clone()),
        (Some(old.serial.as_str()), None, iotpki_store::CertStatus::Good)
    );
    assert!(ca.last_audit().event.action == "refuse.reenroll");
    let replays =
        store.audit_entries(1, 10_000).unwrap().into_iter().filter(|e| e.event.action == "reenroll.replay").count();
    assert_eq!(replays, 1);

    // The agent, retrying with the key it kept, gets that same certificate and installs it.
    let id2 = iotpki_agent::renew(&dev, None, None).await.unwrap();
    assert_eq!(iotpki_core::pem::decode_one("CERTIFICATE", &id2.cert_pem).unwrap(), new_der);
    assert_eq!(store.list_certificates(&q).unwrap().len(), 2);

    // OCSP says superseded; the registry (CLI) says which one is current.
    std::fs::write(d.join("new.pem"), &id2.cert_pem).unwrap();
    let (root2, op, dir, old_serial, new_serial) =
        (root.clone(), ca.ca_file("operational"), ca.dir.clone(), old.serial.clone(), new.serial.clone());
    tokio::task::spawn_blocking(move || {
        let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
        let (_, out) = text_of(Command::new("openssl").args([
            "ocsp",
            "-issuer",
            &s(&op),
            "-CAfile",
            &s(&root2),
            "-url",
            &format!("{url}/ocsp"),
            "-cert",
            &s(&d.join("old.pem")),
            "-cert",
            &s(&d.join("new.pem")),
        ]));
        assert!(
            out.contains("Response verify OK")
                && out.contains("old.pem: revoked")
                && out.contains("Reason: superseded"),
            "{out}"
        );
        assert!(out.contains("new.pem: good"), "{out}");
        let list = run_ok(crate::util::bin().args(["cert", "list", "--device", "SUP-1", "--dir", &s(&dir)]));
        let line = |serial: &str| list.lines().find(|l| l.starts_with(serial)).unwrap_or_default().to_string();
        assert!(line(&old_serial).contains(&format!("superseded), renewed by {new_serial}")), "{list}");
        assert!(line(&new_serial).contains("good, current"), "{list}");
        let show = run_ok(crate::util::bin().args(["cert", "show", "--json", &old_serial, "--dir", &s(&dir)]));
        let v: serde_json::Value = serde_json::from_str(&show).unwrap();
        assert_eq!((v["replaced_by"].as_str(), v["current"].as_bool()), (Some(new_serial.as_str()), Some(false)));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_device_under_concurrent_renewals_leaves_no_good_certificate() {
    use rustls::pki_types::CertificateDer;
    let ca = Ca::start().await;
    // Four good certificates for one device (four enrollments), each renewed over and over in its own thread.
    let mut states = Vec::new();
    for i in 0..4 {
        let state = ca.tmp.path().join(format!("race-{i}"));
        iotpki_agent::enroll(&ca.enroll_opts(&state, "RACE-1", &ca.token("RACE-1"))).await.unwrap();
        states.push(state);
    }
    let op_der =
        iotpki_core::pem::decode_one("CERTIFICATE", &std::fs::read_to_string(ca.ca_file("operational")).unwrap())
            .unwrap();
    let renewed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut threads = Vec::new();
    for state in &states {
        let id = iotpki_agent::state::load(state).unwrap();
        let (a, op_der, renewed) = (ca.authority.clone(), op_der.clone(), renewed.clone());
        threads.push(std::thread::spawn(move || {
            let mut cert = iotpki_core::pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap();
            let subject = iotpki_core::profile::cert_info(&cert).unwrap().cert.tbs_certificate.subject;
            for _ in 0..1_000 {
                let key = iotpki_core::keys::SoftKey::generate(iotpki_core::keys::KeyType::EcdsaP256).unwrap();
                let csr = iotpki_core::csr::build(&subject, &key, vec![]).unwrap();
                let csr = iotpki_core::csr::parse_and_verify(&csr).unwrap();
                let chain = [CertificateDer::from(cert.clone()), CertificateDer::from(op_der.clone())];
                let cred = iotpki_authority::Credential::ClientCert(&chain);
                let renewed_or_refused = a
                    .admit(iotpki_authority::Gate::Certificate("refuse.reenroll"), None, cred)
                    .and_then(|caller| a.enroll(None, &caller, iotpki_authority::EnrollRequest::Reenroll, &csr));
                match renewed_or_refused {
                    Ok(e) => {
                        renewed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        cert = e.cert_der;
                    }
                    Err(e) => {
                        assert!(e.to_string().contains("revoked"), "{e}");
                        return;
                    }
                }
            }
            panic!("the renewals never saw the revocation");
        }));
    }
    while renewed.load(std::sync::atomic::Ordering::SeqCst) < 12 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let sn = DeviceSerial::parse("RACE-1").unwrap();
    let gone =
        revocation::revoke(ca.authority.store().as_ref(), ca.clock.as_ref(), Target::Device(&sn), 1, "test").unwrap();
    assert!(!gone.is_empty());
    for t in threads {
        t.join().unwrap();
    }
    let q = iotpki_store::CertQuery { device_serial: Some("RACE-1".into()), ..Default::default() };
    let all = ca.authority.store().list_certificates(&q).unwrap();
    assert!(all.len() >= 16, "the renewals ran: {}", all.len());
    let good: Vec<_> = all.iter().filter(|c| c.status == iotpki_store::CertStatus::Good).map(|c| &c.serial).collect();
    assert!(good.is_empty(), "good certificates left after revoke --device: {good:?}");
}

#[test]
fn a_root_in_an_hsm_signs_its_arl_at_init_and_on_request_and_a_wrong_pin_signs_nothing() {
    use crate::util::{run_fail, SoftHsm, PASS, SOFTHSM_MODULE};
    let hsm = SoftHsm::new(&["arl"]);
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let dir = hsm.dir.path().join("ca");
    let pass_file = hsm.dir.path().join("pass");
    std::fs::write(&pass_file, format!("{PASS}\n")).unwrap();
    run_ok(
        hsm.bin()
            .args(["init", "--dir", &s(&dir), "--hsm", "pkcs11:token=arl", "--pkcs11-module", SOFTHSM_MODULE])
            .args(["--pin-file", &s(&hsm.pin_file), "--passphrase-file", &s(&pass_file)])
            .args(["--http-listen", "127.0.0.1:0", "--public-http-url", "http://127.0.0.1:9"]),
    );
    let arl = |n: u64| {
        let store = iotpki_store::sqlite::SqliteStore::open(&dir.join("store.db")).unwrap();
        let a = iotpki_store::Artifacts::artifact(&store, "arl/root").unwrap().expect("an ARL");
        assert_eq!(a.version, n);
        let f = hsm.dir.path().join(format!("root-{n}.crl"));
        std::fs::write(&f, &a.body).unwrap();
        let (ok, out) = text_of(Command::new("openssl").args([
            "crl",
            "-inform",
            "DER",
            "-in",
            &s(&f),
            "-CAfile",
            &s(&dir.join("ca/root.crt")),
            "-noout",
            "-verify",
        ]));
        assert!(ok && out.contains("verify OK"), "{out}");
    };
    arl(1);
    let bad_pin = hsm.dir.path().join("bad-pin");
    std::fs::write(&bad_pin, "0000\n").unwrap();
    let sign = |pin: &std::path::Path| {
        let mut c = hsm.bin();
        c.args(["ca", "sign-arl", "--dir", &s(&dir), "--passphrase-file", &s(&pass_file), "--pin-file", &s(pin)]);
        c
    };
    let e = run_fail(&mut sign(&bad_pin));
    assert!(e.to_lowercase().contains("pin"), "{e}");
    arl(1);
    let out = run_ok(&mut sign(&hsm.pin_file));
    assert!(out.contains("ARL of root: number 2"), "{out}");
    arl(2);
}
