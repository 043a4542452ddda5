//! Certificate templates (issue #19, docs/templates.md): refused at load,
//! naming the template, the field and the rule, before any certificate is
//! issued; pkilint vets their samples when `serve` starts.

use std::path::Path;
use std::process::Command;

use crate::authz::curl;
use crate::util::{bin, run_fail, run_ok, serve, PASS};

/// A template that passes our RFC 5280 checks and pkilint.
pub(crate) const GOOD: &str = r#"
[[template]]
name = "sensor"
subject = ["C=DE", "O={organization}", "CN={serial}", "serialNumber={serial}"]
keys = ["p256", "ed25519"]
lifetime_days = 30
extended_key_usage = ["clientAuth", "serverAuth"]

[template.san]
dns = ["{serial}.devices.example.com"]
uri = ["https://devices.example.com/d/{serial}"]

[[template.extension]]
oid = "1.3.6.1.4.1.55555.1"
utf8 = "fw-2"
"#;

/// An RSA template (devices bring RSA keys; the samples use a fixed RSA public key).
pub(crate) const LEGACY: &str = r#"
[[template]]
name = "legacy"
subject = ["O={organization}", "CN={serial}", "serialNumber={serial}"]
keys = ["rsa-2048"]
key_usage = ["digitalSignature", "keyEncipherment"]
"#;

/// An authority directory with `extra` appended to its config.
fn init(tmp: &Path) -> (String, String, String) {
    let dir = tmp.join("ca");
    let pass_file = tmp.join("pass");
    std::fs::write(&pass_file, format!("{PASS}\n")).unwrap();
    let (d, pf) = (dir.to_str().unwrap().to_string(), pass_file.to_str().unwrap().to_string());
    run_ok(bin().args(["init", "--dir", &d, "--passphrase-file", &pf]));
    let config = std::fs::read_to_string(dir.join("iotpki.toml")).unwrap();
    (d, pf, config)
}

fn serve_cmd(d: &str, pf: &str) -> Command {
    let mut c = bin();
    c.args(["serve", "--dir", d, "--listen", "127.0.0.1:0", "--passphrase-file", pf]).env_remove("IOTPKI_PKILINT");
    c
}

/// The certificates in the store: nothing is issued by a refused start.
fn cert_count(d: &str) -> u64 {
    let store = iotpki_store::sqlite::SqliteStore::open(&Path::new(d).join("store.db")).unwrap();
    iotpki_store::Certificates::count_certificates(&store).unwrap()
}

#[test]
fn serve_refuses_a_template_that_breaks_rfc_5280_naming_the_template_the_field_and_the_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let (d, pf, config) = init(tmp.path());
    let before = cert_count(&d);
    let with = |extra: &str| std::fs::write(Path::new(&d).join("iotpki.toml"), format!("{config}{extra}")).unwrap();
    for (bad, wants) in [
        (
            GOOD.replace("dns = [\"{serial}.devices.example.com\"]", "dns = [\"\"]"),
            ["template sensor: san.dns[0]", "RFC 5280 4.2.1.6"],
        ),
        (
            GOOD.replace("oid = \"1.3.6.1.4.1.55555.1\"", "oid = \"2.5.29.19\""),
            ["template sensor: extension[0].oid", "RFC 5280 4.2"],
        ),
        (format!("{GOOD}critical = true\n"), ["template sensor: extension[0].critical", "RFC 5280 4.2"]),
        (GOOD.replace("\"C=DE\"", "\"emailAddress=a@b\""), ["template sensor: subject[0]", "RFC 5280 4.1.2.4"]),
        (
            GOOD.replace("lifetime_days = 30", "lifetime_days = 36000"),
            ["template sensor: lifetime_days", "RFC 5280 4.1.2.5"],
        ),
        (
            GOOD.replace("keys = [\"p256\", \"ed25519\"]", "keys = [\"ed25519\"]\nkey_usage = [\"keyAgreement\"]"),
            ["template sensor: key_usage", "RFC 8410 5"],
        ),
        (
            GOOD.replace("keys = [\"p256\", \"ed25519\"]", "keys = [\"p256\", \"dsa-1024\"]"),
            ["template sensor: keys[1]", "dsa-1024"],
        ),
    ] {
        with(&bad);
        let err = run_fail(&mut serve_cmd(&d, &pf));
        for w in wants {
            assert!(err.contains(w), "wanted {w:?} in:\n{err}");
        }
    }
    // A label naming a template that is not there.
    std::fs::write(
        Path::new(&d).join("iotpki.toml"),
        config.replace("validity_days = 90\n", "validity_days = 90\ntemplate = \"nope\"\n"),
    )
    .unwrap();
    assert!(run_fail(&mut serve_cmd(&d, &pf)).contains("label operational: no template named nope"));
    assert_eq!(cert_count(&d), before, "a refused start issues nothing");
}

#[test]
fn serve_refuses_a_template_pkilint_flags_with_pkilint_finding_as_the_reason() {
    let lint = crate::pkilint::pkilint_bin("lint_pkix_cert");
    let tmp = tempfile::tempdir().unwrap();
    let (d, pf, config) = init(tmp.path());
    let before = cert_count(&d);
    // A URN in the subjectAltName: our checks (an absolute URI with a scheme, RFC
    // 5280 4.2.1.6) let it through; pkilint's URI syntax check does not.
    let flagged = GOOD.replace("https://devices.example.com/d/{serial}", "urn:dev:sn:{serial}");
    std::fs::write(Path::new(&d).join("iotpki.toml"), format!("{config}{flagged}")).unwrap();
    // Without pkilint configured, our own checks pass it...
    let (s, _) = serve(&mut serve_cmd(&d, &pf));
    drop(s);
    // ...with pkilint (from the environment), serve refuses to start, with its finding.
    let err = run_fail(serve_cmd(&d, &pf).env("IOTPKI_PKILINT", &lint));
    assert!(err.contains("template sensor: sample certificate for a p256 key"), "{err}");
    assert!(err.contains("(pkilint lint_pkix_cert)") && err.contains("pkilint finds:"), "{err}");
    assert!(err.contains("pkix.invalid_uri_syntax") && err.contains("urn:dev:sn:SAMPLE-0001"), "{err}");
    // certificatePolicies whose value is a UTF8String, not the SEQUENCE RFC 5280
    // 4.2.1.4 defines: one whole DER value, not an extension the authority sets,
    // non-critical; a peer cannot parse it, and pkilint says so.
    let policies = GOOD.replace("oid = \"1.3.6.1.4.1.55555.1\"", "oid = \"2.5.29.32\"");
    std::fs::write(Path::new(&d).join("iotpki.toml"), format!("{config}{policies}")).unwrap();
    let err = run_fail(serve_cmd(&d, &pf).env("IOTPKI_PKILINT", &lint));
    assert!(err.contains("template sensor: sample certificate") && err.contains("pkilint finds:"), "{err}");
    // And from the config's [lint] section.
    let lint_toml = format!("\n[lint]\npkilint = \"{}\"\n", lint.display());
    std::fs::write(Path::new(&d).join("iotpki.toml"), format!("{config}{lint_toml}{flagged}")).unwrap();
    assert!(run_fail(&mut serve_cmd(&d, &pf)).contains("pkilint finds:"));
    // The good template passes pkilint: serve starts.
    std::fs::write(Path::new(&d).join("iotpki.toml"), format!("{config}{lint_toml}{GOOD}{LEGACY}")).unwrap();
    let (s, url) = serve(&mut serve_cmd(&d, &pf));
    assert!(url.starts_with("https://"));
    drop(s);
    assert_eq!(cert_count(&d), before, "the samples are never recorded");
}

/// A birth template: the batch and its product in the subject and a URN.
const BIRTH: &str = r#"
[[template]]
name = "sensor-birth"
subject = ["O={organization}", "OU={batch}", "L={product}", "CN={serial}", "serialNumber={serial}"]
keys = ["p256"]

[template.san]
uri = ["https://devices.example.com/{product}/{serial}"]
"#;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An openssl key of `alg` (`P-256`, `P-384`, `ED25519`) and a CSR with `subj` and `extra` args, base64.
fn csr(d: &Path, name: &str, alg: &str, subj: &str, extra: &[&str]) -> (String, String) {
    let key = d.join(format!("{name}.key"));
    let mut gen = vec!["genpkey", "-algorithm"];
    if alg == "ED25519" {
        gen.push("ED25519");
    } else if alg == "RSA-2048" {
        gen.extend(["RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    } else {
        gen.extend(["EC", "-pkeyopt"]);
        gen.push(if alg == "P-256" { "ec_paramgen_curve:P-256" } else { "ec_paramgen_curve:P-384" });
    }
    gen.extend(["-out", s(&key)]);
    crate::util::openssl(&gen);
    let der = d.join(format!("{name}.csr"));
    let mut req = vec!["req", "-new", "-key", s(&key), "-subj", subj, "-outform", "DER", "-out", s(&der)];
    req.extend(extra);
    crate::util::openssl(&req);
    let b64 = d.join(format!("{name}.b64"));
    crate::util::openssl(&["base64", "-A", "-in", s(&der), "-out", s(&b64)]);
    (s(&key).to_string(), s(&b64).to_string())
}

/// POST a CSR (base64 file) to `path` with `auth` curl args; the certificate's PEM file on 200.
fn post(url: &str, root: &Path, d: &Path, name: &str, b64: &str, path: &str, auth: &[&str]) -> (u16, String) {
    let out = d.join(format!("{name}.p7.b64"));
    let mut args = vec!["--cacert", s(root)];
    args.extend(auth);
    let body = format!("@{b64}");
    let to = format!("{url}/.well-known/est/{path}");
    args.extend([
        "-H",
        "Content-Type: application/pkcs10",
        "-H",
        "Content-Transfer-Encoding: base64",
        "--data-binary",
        &body,
        "-o",
        s(&out),
        &to,
    ]);
    let (code, _) = curl(&args);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    if code != 200 {
        return (code, text);
    }
    let p7 = d.join(format!("{name}.p7"));
    let pem = d.join(format!("{name}.pem"));
    crate::util::openssl(&["base64", "-d", "-A", "-in", s(&out), "-out", s(&p7)]);
    crate::util::openssl(&["pkcs7", "-inform", "DER", "-in", s(&p7), "-print_certs", "-out", s(&pem)]);
    (code, s(&pem).to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn enrollments_under_a_template_get_its_subject_sans_extensions_and_lifetime_and_refusals_store_nothing() {
    let ca = crate::util::Ca::start_with_config(Default::default(), |c| {
        *c = c.replace("allowed_keys = [\n    \"p256\",", "allowed_keys = [\n    \"rsa-2048\",\n    \"p256\",");
        c.push_str(GOOD);
        c.push_str(BIRTH);
        c.push_str(LEGACY);
    })
    .await;
    let d = ca.tmp.path().join("tpl");
    std::fs::create_dir_all(&d).unwrap();
    let (url, root, op) = (ca.url.clone(), ca.root_file(), ca.ca_file("operational"));
    let token = |serial: &str, t: Option<&str>| {
        ca.authority
            .create_token_with_template(&iotpki_core::name::DeviceSerial::parse(serial).unwrap(), None, t, "test")
            .unwrap()
    };
    let t1 = token("TPL-1", Some("sensor"));
    let t2 = token("TPL-2", Some("sensor"));
    let t3 = token("TPL-3", Some("sensor"));
    let t4 = token("TPL-4", Some("sensor"));
    let t5 = token("TPL-5", None);
    let t6 = token("TPL-6", Some("legacy"));
    let t7 = token("TPL-7", Some("legacy"));
    let before = ca.cert_count();
    let (d2, root2, url2, op2) = (d.clone(), root.clone(), url.clone(), op.clone());
    let pems = tokio::task::spawn_blocking(move || {
        let (d, root, url) = (d2, root2, url2);
        let auth = |serial: &str, t: &str| format!("{serial}:{t}");
        // Refused, 4xx, nothing stored: an OU the template does not take, a SAN it would
        // not write, a key type it does not allow.
        let (_, b) = csr(&d, "ou", "P-256", "/CN=TPL-2/OU=admins", &[]);
        let (code, body) = post(&url, &root, &d, "ou", &b, "simpleenroll", &["-u", &auth("TPL-2", &t2)]);
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("does not let a request set OU"), "{body}");
        let (_, b) = csr(&d, "san", "P-256", "/CN=TPL-3", &["-addext", "subjectAltName=DNS:evil.example"]);
        let (code, body) = post(&url, &root, &d, "san", &b, "simpleenroll", &["-u", &auth("TPL-3", &t3)]);
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("subjectAltName"), "{body}");
        let (_, b) = csr(&d, "p384", "P-384", "/CN=TPL-4", &[]);
        let (code, body) = post(&url, &root, &d, "p384", &b, "simpleenroll", &["-u", &auth("TPL-4", &t4)]);
        assert!((400..500).contains(&code), "{code} {body}");
        assert!(body.contains("template sensor"), "{body}");
        // Issued: the template's subject, SANs, extKeyUsage, extension.
        let (key, b) = csr(
            &d,
            "ok",
            "P-256",
            "/CN=TPL-1/serialNumber=TPL-1",
            &["-addext", "subjectAltName=DNS:TPL-1.devices.example.com"],
        );
        let (code, pem) = post(&url, &root, &d, "ok", &b, "simpleenroll", &["-u", &auth("TPL-1", &t1)]);
        assert_eq!(code, 200, "{pem}");
        // Renewal over mutual TLS with it: the same shape for a new key.
        let (_, b) = csr(&d, "renew", "P-256", "/CN=TPL-1/serialNumber=TPL-1", &[]);
        let (code, renewed) = post(&url, &root, &d, "renew", &b, "simplereenroll", &["--cert", &pem, "--key", &key]);
        assert_eq!(code, 200, "{renewed}");
        // Without a template: the built-in device profile, as before.
        let (_, b) = csr(&d, "plain", "P-256", "/CN=TPL-5", &[]);
        let (code, plain) = post(&url, &root, &d, "plain", &b, "simpleenroll", &["-u", &auth("TPL-5", &t5)]);
        assert_eq!(code, 200, "{plain}");
        // An RSA-2048 device under the RSA template; a P-256 key under it is refused.
        let (_, b) = csr(&d, "rsa", "RSA-2048", "/CN=TPL-6/serialNumber=TPL-6", &[]);
        let (code, rsa) = post(&url, &root, &d, "rsa", &b, "simpleenroll", &["-u", &auth("TPL-6", &t6)]);
        assert_eq!(code, 200, "{rsa}");
        let (_, b) = csr(&d, "ec7", "P-256", "/CN=TPL-7/serialNumber=TPL-7", &[]);
        let (code, body) = post(&url, &root, &d, "ec7", &b, "simpleenroll", &["-u", &auth("TPL-7", &t7)]);
        assert!((400..500).contains(&code) && body.contains("template legacy"), "{code} {body}");
        let _ = op2;
        (pem, renewed, plain, rsa)
    })
    .await
    .unwrap();
    assert_eq!(ca.cert_count(), before + 4, "four issued, the refusals stored nothing");
    let lint = crate::pkilint::pkilint_bin("lint_pkix_cert");
    for (pem, days) in [(&pems.0, 30), (&pems.1, 30)] {
        let text = crate::util::openssl(&["x509", "-in", pem, "-noout", "-text"]);
        for want in [
            "Subject: C = DE, O = iotpki, CN = TPL-1, serialNumber = TPL-1",
            "DNS:TPL-1.devices.example.com",
            "URI:https://devices.example.com/d/TPL-1",
            "TLS Web Client Authentication, TLS Web Server Authentication",
            "1.3.6.1.4.1.55555.1",
            "X509v3 CRL Distribution Points",
        ] {
            assert!(text.contains(want), "wanted {want:?} in:\n{text}");
        }
        let der =
            iotpki_core::pem::decode_all("CERTIFICATE", &std::fs::read_to_string(pem).unwrap()).unwrap().remove(0);
        let info = iotpki_core::profile::cert_info(&der).unwrap();
        // The template's 30 days, the renewal's too (docs/templates.md: a renewal follows
        // the template its certificate was issued under, not the label's); 60 s backdated.
        assert_eq!(info.not_after - info.not_before, days * 86_400 + 60);
        let v =
            crate::util::openssl(&["verify", "-CAfile", s(&root), "-untrusted", s(&op), "-purpose", "sslserver", pem]);
        assert!(v.contains(": OK"), "{v}");
        iotpki_authority::templates::pkilint(&lint, &der).unwrap();
    }
    let text = crate::util::openssl(&["x509", "-in", &pems.3, "-noout", "-text"]);
    assert!(text.contains("Public-Key: (2048 bit)") && text.contains("Key Encipherment"), "{text}");
    let der =
        iotpki_core::pem::decode_all("CERTIFICATE", &std::fs::read_to_string(&pems.3).unwrap()).unwrap().remove(0);
    iotpki_authority::templates::pkilint(&lint, &der).unwrap();
    let text = crate::util::openssl(&["x509", "-in", &pems.2, "-noout", "-text"]);
    assert!(!text.contains("Alternative Name") && !text.contains("55555") && !text.contains("Server Auth"), "{text}");
    // A token naming a template the config does not have is refused when made.
    let e = ca
        .authority
        .create_token_with_template(&iotpki_core::name::DeviceSerial::parse("TPL-9").unwrap(), None, Some("nope"), "t")
        .unwrap_err();
    assert!(e.to_string().contains("no certificate template named \"nope\""), "{e}");

    // A batch's template gives its births their subject and SAN (station on the line).
    let now = iotpki_authority::Clock::now(ca.clock.as_ref());
    let nb = iotpki_authority::factory::NewBatch {
        template: Some("sensor-birth".into()),
        ..iotpki_authority::factory::NewBatch::open("TPLB", "thermo", "TPLB-1\n".into(), 1, (now - 60, now + 3600))
    };
    iotpki_authority::factory::create_batch(ca.authority.store().as_ref(), ca.clock.as_ref(), nb, "test").unwrap();
    let line = crate::util::station(&ca, "tpl-line", &["TPLB"]);
    let born = ca.tmp.path().join("born-tpl");
    iotpki_station::factory::Station::open(&line, None)
        .unwrap()
        .birth("TPLB", &born, "TPLB-1", iotpki_core::keys::KeyType::EcdsaP256)
        .await
        .unwrap();
    let pem = d.join("birth.pem");
    std::fs::write(&pem, iotpki_agent::state::load(&born).unwrap().cert_pem).unwrap();
    let text = crate::util::openssl(&["x509", "-in", s(&pem), "-noout", "-text"]);
    assert!(text.contains("OU = TPLB, L = thermo, CN = TPLB-1"), "{text}");
    assert!(text.contains("URI:https://devices.example.com/thermo/TPLB-1"), "{text}");
    let der = iotpki_core::pem::decode_all("CERTIFICATE", &std::fs::read_to_string(&pem).unwrap()).unwrap().remove(0);
    iotpki_authority::templates::pkilint(&lint, &der).unwrap();
}

#[test]
fn template_commands_list_show_and_check_and_token_and_batch_refuse_an_unknown_template() {
    let lint = crate::pkilint::pkilint_bin("lint_pkix_cert");
    let tmp = tempfile::tempdir().unwrap();
    let (d, _pf, config) = init(tmp.path());
    std::fs::write(Path::new(&d).join("iotpki.toml"), format!("{config}{GOOD}")).unwrap();
    let list = run_ok(bin().args(["template", "list", "--dir", &d]));
    let names: Vec<&str> = list.lines().filter_map(|l| l.split('\t').next()).collect();
    assert_eq!(names, ["device", "device-batch", "sensor"], "{list}");
    assert!(list.contains("sensor\tconfig\tkeys=p256,ed25519\tlifetime=30d"), "{list}");
    let show = run_ok(bin().args(["template", "show", "sensor", "--dir", &d]));
    assert!(show.contains("[[template]]") && show.contains("name = \"sensor\""), "{show}");
    assert!(run_fail(bin().args(["template", "show", "nope", "--dir", &d])).contains("no template named \"nope\""));
    // check FILE: our checks and pkilint, before a template goes into a config.
    let good = tmp.path().join("good.toml");
    std::fs::write(&good, GOOD).unwrap();
    let out = run_ok(bin().args(["template", "check", s(&good), "--pkilint", s(&lint)]));
    assert!(out.contains("template sensor: a p256 sample passes our lint and pkilint"), "{out}");
    let urn = tmp.path().join("urn.toml");
    std::fs::write(&urn, GOOD.replace("https://devices.example.com/d/{serial}", "urn:dev:sn:{serial}")).unwrap();
    run_ok(bin().args(["template", "check", s(&urn)]).env_remove("IOTPKI_PKILINT"));
    let err = run_fail(bin().args(["template", "check", s(&urn), "--pkilint", s(&lint)]));
    assert!(err.contains("pkix.invalid_uri_syntax"), "{err}");
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, GOOD.replace("\"C=DE\"", "\"C=Germany\"")).unwrap();
    assert!(run_fail(bin().args(["template", "check", s(&bad)])).contains("template sensor: subject[0]"));
    // A token or batch naming a template the config does not have: refused, nothing made.
    let err = run_fail(bin().args(["token", "create", "--dir", &d, "--serial", "X-1", "--template", "nope"]));
    assert!(err.contains("no certificate template named \"nope\""), "{err}");
    run_ok(bin().args(["token", "create", "--dir", &d, "--serial", "X-1", "--template", "sensor"]));
    let serials = tmp.path().join("serials");
    std::fs::write(&serials, "B-1\n").unwrap();
    let batch = |t: &str| {
        let mut c = bin();
        c.args(["batch", "create", "--dir", &d, "--id", "TB", "--product", "p", "--quota", "1"]);
        c.args(["--serials", s(&serials), "--template", t]);
        c
    };
    assert!(run_fail(&mut batch("nope")).contains("no certificate template named \"nope\""));
    run_ok(&mut batch("sensor"));
    let store = iotpki_store::sqlite::SqliteStore::open(&Path::new(&d).join("store.db")).unwrap();
    let b = iotpki_store::Batches::batch(&store, "TB").unwrap().unwrap();
    assert_eq!(b.template.as_deref(), Some("sensor"));
}

/// A label's template shapes every enrollment through that label.
#[tokio::test(flavor = "multi_thread")]
async fn a_label_template_shapes_the_enrollments_through_that_label() {
    let ca = crate::util::Ca::start_with_config(Default::default(), |c| {
        *c = c.replace("validity_days = 90\n", "validity_days = 90\ntemplate = \"sensor\"\n");
        c.push_str(GOOD);
    })
    .await;
    let state = ca.enrolled_device("LBL-1").await;
    let pem = iotpki_agent::state::load(&state).unwrap().cert_pem;
    let der = iotpki_core::pem::decode_all("CERTIFICATE", &pem).unwrap().remove(0);
    let info = iotpki_core::profile::cert_info(&der).unwrap();
    let san = iotpki_core::profile::subject_alt_name(&info.cert).unwrap().expect("the template's SAN");
    assert_eq!(san.0.len(), 2);
    assert_eq!(info.not_after - info.not_before, 30 * 86_400 + 60);
    assert!(ca.last_audit().event.detail.contains("template=sensor"), "{:?}", ca.last_audit());
}
