//! The fleet console (issue #18): sign-in by one-time link, sessions, CSRF,
//! roles, actions audited like the CLI's, and a real browser (Debian's
//! headless Chromium driven by selenium) reading the demo fleet and revoking
//! a device, which OCSP then answers revoked.

use std::path::{Path, PathBuf};
use std::process::Command;

use iotpki_store::CertStatus;

use crate::util::{bin, openssl, run_fail, run_ok, Ca, PASS};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn add_admin(ca: &Ca, name: &str) -> PathBuf {
    let out = ca.tmp.path().join("admins").join(name);
    let o = run_ok(
        bin().env("IOTPKI_PASSPHRASE", PASS).args(["admin", "add", name, "--dir"]).arg(&ca.dir).arg("--out").arg(&out),
    );
    assert!(o.contains(&format!("admin {name} certified")), "{o}");
    out
}

/// The server's clock (fixed, moved by the test) caught up with the system's.
fn sync_clock(ca: &Ca) {
    use iotpki_authority::Clock as _;
    let behind = iotpki_authority::SystemClock.now() - ca.clock.now();
    ca.clock.advance(behind.max(0));
}

fn link(ca: &Ca, admin: &str, extra: &[&str]) -> String {
    let out = run_ok(
        bin()
            .args(["admin", "console-link", "--dir"])
            .arg(&ca.dir)
            .args(["--admin", admin, "--url", &ca.url])
            .args(extra),
    );
    let line = out.trim().to_string();
    assert!(line.starts_with(&format!("{}/console/login?link=", ca.url)), "{line}");
    line
}

fn secret(link: &str) -> String {
    link.rsplit_once("link=").unwrap().1.to_string()
}

/// One HTTP exchange with curl: (status, headers, body).
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

fn curl(ca: &Ca, method: &str, path: &str, cookie: Option<&str>, form: Option<&str>, extra: &[&str]) -> Answer {
    let dir = tempfile::tempdir().unwrap();
    let (h, b) = (dir.path().join("h"), dir.path().join("b"));
    let mut c = Command::new("curl");
    c.args(["--silent", "--show-error", "--tlsv1.3", "--cacert", s(&ca.root_file()), "-X", method]).args([
        "--dump-header",
        s(&h),
        "--output",
        s(&b),
        "--write-out",
        "%{http_code}",
    ]);
    if let Some(k) = cookie {
        c.args(["--cookie", &format!("__Host-iotpki-console={k}")]);
    }
    if let Some(f) = form {
        c.args(["-H", "Content-Type: application/x-www-form-urlencoded", "--data-binary", f]);
    }
    let out = c.args(extra).arg(format!("{}{path}", ca.url)).output().unwrap();
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Answer {
        status: code.parse().unwrap_or_else(|_| panic!("curl: {code} {}", String::from_utf8_lossy(&out.stderr))),
        headers: std::fs::read_to_string(&h).unwrap_or_default(),
        body: std::fs::read_to_string(&b).unwrap_or_default(),
    }
}

/// Spend a link: the session cookie's value.
fn sign_in(ca: &Ca, link: &str) -> String {
    let a = curl(ca, "POST", "/console/login", None, Some(&format!("link={}", secret(link))), &[]);
    assert_eq!(a.status, 303, "{}", a.body);
    let set = a
        .headers
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {}", a.headers));
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    set.split_once("__Host-iotpki-console=").unwrap().1.split(';').next().unwrap().to_string()
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").unwrap_or_else(|| panic!("no CSRF field in {page}"));
    page[at + 19..].split('"').next().unwrap().to_string()
}

fn status(ca: &Ca, serial: &str) -> CertStatus {
    ca.authority.store().certificate(serial).unwrap().unwrap().status
}

fn serial_of(state: &Path) -> String {
    iotpki_agent::status(state).unwrap().cert_serial
}

fn actions(ca: &Ca) -> Vec<(String, String)> {
    let n = ca.audit_len();
    ca.authority
        .store()
        .audit_entries(1, n as u32)
        .unwrap()
        .into_iter()
        .map(|e| (e.event.action, e.event.actor))
        .collect()
}

/// A link opens one session, once; a replayed or expired link, a cookie from
/// another authority, a form without its CSRF token or from another origin,
/// a read-only session's action and a revoked admin's session are refused,
/// each changing nothing; an admin certificate works without a link; every
/// login and action is in the audit chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sessions_open_once_and_refuse_what_they_must() {
    let ca = Ca::start().await;
    let other = Ca::start().await;
    let (d1, d2) = (ca.enrolled_device("CON-1").await, ca.enrolled_device("CON-2").await);
    let (c1, c2) = (serial_of(&d1), serial_of(&d2));
    let ops_dir = add_admin(&ca, "ops");
    let auditor_dir = add_admin(&ca, "auditor");
    add_admin(&other, "ops");
    sync_clock(&ca);
    sync_clock(&other);
    let ca = std::sync::Arc::new(ca);
    let other = std::sync::Arc::new(other);
    let (ca2, other2) = (ca.clone(), other.clone());
    tokio::task::spawn_blocking(move || {
        let (ca, other) = (&*ca2, &*other2);
        // Not signed in: the sign-in page, nothing of the fleet.
        let a = curl(ca, "GET", "/console/", None, None, &[]);
        assert_eq!(a.status, 401);
        assert!(a.body.contains("console-link") && !a.body.contains("CON-1"), "{}", a.body);
        assert!(a.headers.to_ascii_lowercase().contains("content-security-policy: default-src 'none'"));

        // The link's page asks to confirm and spends nothing; the POST does, once.
        let l = link(ca, "ops", &[]);
        let a = curl(ca, "GET", &l[ca.url.len()..], None, None, &[]);
        assert_eq!(a.status, 200);
        assert!(a.body.contains("id=\"sign-in\"") && !a.headers.to_ascii_lowercase().contains("set-cookie"));
        assert!(a.headers.to_ascii_lowercase().contains("referrer-policy: same-origin"));
        let cookie = sign_in(ca, &l);
        let replay = curl(ca, "POST", "/console/login", None, Some(&format!("link={}", secret(&l))), &[]);
        assert_eq!(replay.status, 403);
        assert!(replay.body.contains("used already"), "{}", replay.body);

        // Signed in: the device page, with a CSRF token in its forms.
        let page = curl(ca, "GET", "/console/devices/CON-1", Some(&cookie), None, &[]);
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(page.body.contains(&c1) && page.body.contains("ops"), "{}", page.body);
        let csrf = csrf_of(&page.body);

        // Refused, changing nothing: no CSRF token, a wrong one, another origin, no confirmation.
        let revoke = format!("/console/certificates/{c1}/revoke");
        let audit = ca.audit_len();
        for (form, extra, why) in [
            ("reason=keyCompromise&confirm=yes".to_string(), vec![], "CSRF"),
            ("reason=keyCompromise&confirm=yes&csrf=forged".to_string(), vec![], "CSRF"),
            (
                format!("reason=keyCompromise&confirm=yes&csrf={csrf}"),
                vec!["-H", "Origin: https://evil.example"],
                "another site",
            ),
        ] {
            let a = curl(ca, "POST", &revoke, Some(&cookie), Some(&form), &extra);
            assert_eq!(a.status, 403, "{why}: {}", a.body);
            assert!(a.body.contains(why), "{}", a.body);
        }
        assert_eq!(ca.audit_len(), audit, "refused before anything is done");
        let unconfirmed =
            curl(ca, "POST", &revoke, Some(&cookie), Some(&format!("reason=keyCompromise&csrf={csrf}")), &[]);
        assert_eq!(unconfirmed.status, 400, "{}", unconfirmed.body);
        assert!(unconfirmed.body.contains("confirmation"), "{}", unconfirmed.body);
        assert_eq!(status(ca, &c1), CertStatus::Good);

        // The revocation itself, audited with the admin's name.
        let done = curl(
            ca,
            "POST",
            &revoke,
            Some(&cookie),
            Some(&format!("reason=keyCompromise&confirm=yes&csrf={csrf}")),
            &[],
        );
        assert_eq!(done.status, 200, "{}", done.body);
        assert!(done.body.contains("Revoked") && done.body.contains("keyCompromise"), "{}", done.body);
        assert!(matches!(status(ca, &c1), CertStatus::Revoked { reason: 1, .. }));
        let acts = actions(ca);
        assert!(acts.contains(&("console.link".into(), "admin:cli".into())), "{acts:?}");
        assert!(acts.contains(&("console.login".into(), "admin:ops".into())), "{acts:?}");
        assert!(acts.iter().any(|(a, by)| a == "revoke" && by == "admin:ops"), "{acts:?}");

        // A token, shown once.
        let t = curl(
            ca,
            "POST",
            "/console/tokens",
            Some(&cookie),
            Some(&format!("serial=CON-9&ttl_secs=600&csrf={csrf}")),
            &[],
        );
        assert_eq!(t.status, 200, "{}", t.body);
        assert!(t.body.contains("id=\"token\""), "{}", t.body);
        // The token and batch forms name a certificate template (docs/templates.md):
        // the config's are offered, one it does not have is refused, nothing made.
        let form = curl(ca, "GET", "/console/tokens", Some(&cookie), None, &[]);
        assert!(
            form.body.contains("<select name=\"template\">") && form.body.contains("value=\"device\""),
            "{}",
            form.body
        );
        let post =
            |path: &str, form: &str| curl(ca, "POST", path, Some(&cookie), Some(&format!("{form}&csrf={csrf}")), &[]);
        let t = post("/console/tokens", "serial=CON-10&template=device");
        assert_eq!(t.status, 200, "{}", t.body);
        let made = ca.authority.store().audit_entries(1, ca.audit_len() as u32).unwrap();
        let last = made.iter().rev().find(|e| e.event.action == "token.create").unwrap();
        assert!(last.event.detail.contains("template=device"), "{}", last.event.detail);
        let t = post("/console/tokens", "serial=CON-11&template=nope");
        assert_eq!(t.status, 400, "{}", t.body);
        assert!(t.body.contains("no certificate template named"), "{}", t.body);
        let b = post(
            "/console/batches",
            "id=CONB&product=p&quota=1&serials=CONB-1&template=device&tpm_attestation=required",
        );
        assert_eq!(b.status, 200, "{}", b.body);
        let page = curl(ca, "GET", "/console/batches/CONB", Some(&cookie), None, &[]);
        assert!(page.body.contains("<th>template</th><td>device</td>"), "{}", page.body);
        assert!(page.body.contains("<th>TPM attestation</th><td>required</td>"), "{}", page.body);
        assert!(ca.authority.store().batch("CONB").unwrap().unwrap().tpm_attestation);
        let b = post("/console/batches", "id=CONC&product=p&quota=1&serials=CONC-1&template=nope");
        assert_eq!(b.status, 400, "{}", b.body);
        assert!(ca.authority.store().batch("CONC").unwrap().is_none(), "a refused batch is not made");

        // The session works on no other authority.
        let foreign = curl(other, "GET", "/console/", Some(&cookie), None, &[]);
        assert_eq!(foreign.status, 401, "{}", foreign.body);

        // A read-only session reads, and may not act.
        let ro = sign_in(ca, &link(ca, "auditor", &["--role", "read"]));
        let page = curl(ca, "GET", "/console/devices/CON-2", Some(&ro), None, &[]);
        assert_eq!(page.status, 200);
        assert!(!page.body.contains("data-revoke"), "no revoke form for a reader");
        let ro_csrf = csrf_of(&page.body);
        let refused_before = actions(ca).len();
        let a = curl(
            ca,
            "POST",
            &format!("/console/certificates/{c2}/revoke"),
            Some(&ro),
            Some(&format!("reason=keyCompromise&confirm=yes&csrf={ro_csrf}")),
            &[],
        );
        assert_eq!(a.status, 403);
        assert!(a.body.contains("only read"), "{}", a.body);
        assert_eq!(status(ca, &c2), CertStatus::Good);
        // Audited, as every refusal, under the reader's name.
        let after = actions(ca);
        assert_eq!(after.len(), refused_before + 1, "{after:?}");
        assert_eq!(after.last().unwrap(), &("refuse.console".to_string(), "admin:auditor".to_string()));
        // A read session's list upload is refused unread too, and audited.
        let a = curl(ca, "POST", "/console/claims", Some(&ro), Some(&format!("births=x&csrf={ro_csrf}")), &[]);
        assert_eq!(a.status, 403, "{}", a.body);
        assert!(a.body.contains("only read"), "{}", a.body);
        let after = actions(ca);
        assert_eq!(after.len(), refused_before + 2, "{after:?}");
        assert_eq!(after.last().unwrap(), &("refuse.console".to_string(), "admin:auditor".to_string()));

        // Blocking the reader's key, its certificate left good, ends its session
        // and its links, as it ends its certificate's mutual TLS.
        run_ok(
            bin()
                .args(["key", "block", "--reason", "lost laptop", "--dir"])
                .arg(&ca.dir)
                .arg("--cert")
                .arg(auditor_dir.join("admin.crt")),
        );
        let a = curl(ca, "GET", "/console/", Some(&ro), None, &[]);
        assert_eq!(a.status, 403, "{}", a.body);
        assert!(a.body.contains("no good admin certificate"), "{}", a.body);
        let err = run_fail(
            bin().args(["admin", "console-link", "--dir"]).arg(&ca.dir).args(["--admin", "auditor", "--url", &ca.url]),
        );
        assert!(err.contains("no good admin certificate"), "{err}");

        // An expired link opens nothing.
        let old = link(ca, "ops", &["--ttl", "60s"]);
        sync_clock(ca);
        ca.clock.advance(61);
        let a = curl(ca, "POST", "/console/login", None, Some(&format!("link={}", secret(&old))), &[]);
        assert_eq!(a.status, 403);
        assert!(a.body.contains("expired"), "{}", a.body);
        let a = curl(ca, "POST", "/console/login", None, Some("link=not-a-link-of-ours"), &[]);
        assert_eq!(a.status, 403);
        assert!(actions(ca).iter().filter(|(a, _)| a == "refuse.console").count() >= 3);

        // An admin certificate works without a link (mutual TLS).
        let (crt, key) = (ops_dir.join("admin.crt"), ops_dir.join("admin.key"));
        let cert = ["--cert", s(&crt), "--key", s(&key)];
        let a = curl(ca, "GET", "/console/batches", None, None, &cert);
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(a.body.contains("<h1>Batches</h1>"), "{}", a.body);

        // Revoking the admin ends its sessions.
        run_ok(bin().args(["admin", "revoke", "ops", "--dir"]).arg(&ca.dir));
        let a = curl(ca, "GET", "/console/", Some(&cookie), None, &[]);
        assert_eq!(a.status, 403, "{}", a.body);
        assert!(a.body.contains("no good admin certificate"), "{}", a.body);
        let err = run_fail(
            bin().args(["admin", "console-link", "--dir"]).arg(&ca.dir).args(["--admin", "ops", "--url", &ca.url]),
        );
        assert!(err.contains("no good admin certificate"), "{err}");
    })
    .await
    .unwrap();
}

fn tool(name: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {name}")]).output().is_ok_and(|o| o.status.success())
}

fn ocsp_status(ca: &Ca, cert_pem: &str, d: &Path) -> String {
    let f = d.join("ask.pem");
    std::fs::write(&f, cert_pem).unwrap();
    let out = openssl(&[
        "ocsp",
        "-issuer",
        s(&ca.ca_file("operational")),
        "-CAfile",
        s(&ca.root_file()),
        "-cert",
        s(&f),
        "-url",
        &format!("{}/ocsp", ca.http_url),
    ]);
    out.lines().find(|l| l.starts_with(s(&f))).unwrap_or_default().to_string()
}

/// Where screenshots of the console are kept (a test artifact):
/// `$IOTPKI_ARTIFACTS/console`, else `target/artifacts/console`.
fn shots_dir() -> PathBuf {
    let base = std::env::var_os("IOTPKI_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts"));
    let d = base.join("console");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Headless Chromium signs in with a console link, sees the fleet's numbers on
/// every main page (a screenshot of each saved), revokes a device's
/// certificate from its page with a reason and a confirmation, and signs out;
/// OCSP then answers revoked for exactly that certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_reads_the_fleet_and_revokes_a_device() {
    let venv = PathBuf::from(std::env::var("IOTPKI_PKILINT_DIR").unwrap_or_default());
    let python = venv.join("python3");
    if std::env::var_os("CI").is_none() && !(python.exists() && tool("chromium") && tool("chromedriver")) {
        eprintln!("skipped: chromium, chromedriver and selenium (scripts/test installs them) are missing");
        return;
    }
    let ca = Ca::start().await;
    let mut states = Vec::new();
    for i in 1..=5 {
        states.push(ca.enrolled_device(&format!("WEB-{i}")).await);
    }
    add_admin(&ca, "browser-ops");
    sync_clock(&ca);
    let (victim, bystander) = (serial_of(&states[2]), serial_of(&states[3]));
    let l = link(&ca, "browser-ops", &[]);
    let shots = shots_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/console_browser.py");
    let out = {
        let mut c = Command::new(&python);
        c.arg(&script)
            .env("LINK", &l)
            .env("BASE", &ca.url)
            .env("TOTAL", "5")
            .env("DEVICE", "WEB-3")
            .env("CERT", &victim)
            .env("SHOTS", &shots);
        tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap()
    };
    assert!(
        out.status.success(),
        "the browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for page in ["overview", "batches", "stations", "revocations", "audit", "device", "device-revoked"] {
        let png = std::fs::read(shots.join(format!("{page}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 2_000, "{page}.png is a screenshot");
    }
    assert!(matches!(status(&ca, &victim), CertStatus::Revoked { reason: 1, .. }));
    assert_eq!(status(&ca, &bystander), CertStatus::Good);
    let tmp = ca.tmp.path().to_path_buf();
    let pem = |st: &Path| iotpki_agent::state::load(st).unwrap().cert_pem;
    let (vpem, bpem) = (pem(&states[2]), pem(&states[3]));
    let ca = std::sync::Arc::new(ca);
    let c = ca.clone();
    let (v, b) = tokio::task::spawn_blocking(move || (ocsp_status(&c, &vpem, &tmp), ocsp_status(&c, &bpem, &tmp)))
        .await
        .unwrap();
    assert!(v.ends_with(": revoked"), "{v}");
    assert!(b.ends_with(": good"), "{b}");
    let acts = actions(&ca);
    assert!(acts.contains(&("console.logout".into(), "admin:browser-ops".into())), "{acts:?}");
}
