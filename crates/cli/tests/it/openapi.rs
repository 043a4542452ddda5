//! The admin API's OpenAPI document (issue #18): served to any TLS client,
//! valid OpenAPI 3.1, and true. Every operation it lists is called against a
//! real server with a small fleet (devices, batches, an admin and a revoked
//! one), where it succeeds and where it is refused; each answer's status is
//! the one this test expects, and openapi_check.py (openapi-spec-validator and
//! openapi-schema-validator, which we did not write) checks that the document
//! describes it: the status, the Content-Type, the JSON body against the
//! document's schema. It fails if an operation was not called, or a status
//! the document lists was never seen (but 503: the store away, disk.rs).
//! The rate limiter's 429 is seen on a second server that limits refusals hard.
//!
//! Python rather than the Rust `jsonschema` crate: the venv is there already
//! (pkilint, pycose), the validator of the document is the one that validates
//! the bodies, and it adds no crate to the workspace's build.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::authz::{add_admin, cert_serial, sync_clock};
use iotpki_server::{Limits, Running};

use crate::util::{batch, bin, run_ok, Ca};

/// Who calls.
#[derive(Clone, Copy, Debug)]
enum Who {
    /// A TLS client without a certificate.
    Nobody,
    /// An admin.
    Admin,
    /// An admin whose certificate was revoked.
    Revoked,
}

/// One call: the operation (method and path template), the path called, the
/// body sent (POST), who calls, and the status it must get.
struct Call {
    method: &'static str,
    template: &'static str,
    path: String,
    body: Option<Body>,
    who: Who,
    want: u16,
}

enum Body {
    Text(String),
    /// A file's content (too large for an argument).
    File(PathBuf),
}

fn get(template: &'static str, path: impl Into<String>, who: Who, want: u16) -> Call {
    Call { method: "GET", template, path: path.into(), body: None, who, want }
}

fn post(template: &'static str, path: impl Into<String>, body: &str, who: Who, want: u16) -> Call {
    Call { method: "POST", template, path: path.into(), body: Some(Body::Text(body.into())), who, want }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The call with curl: (status, Content-Type, body).
fn curl(url: &str, dirs: &Dirs, c: &Call) -> (u16, String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--tlsv1.3", "--write-out", "\n%{http_code} %{content_type}"]);
    let dir = match c.who {
        Who::Revoked => &dirs.revoked,
        _ => &dirs.admin,
    };
    cmd.args(["--cacert", s(&dir.join("ca.crt"))]);
    if !matches!(c.who, Who::Nobody) {
        cmd.args(["--cert", s(&dir.join("admin.crt")), "--key", s(&dir.join("admin.key"))]);
    }
    match &c.body {
        Some(Body::Text(t)) => cmd.args(["-H", "Content-Type: application/json", "--data-binary", t]),
        // A body over the limit is announced and held back (`Expect: 100-continue`, as a
        // client sending a large body does): the server's early 413 then reaches curl
        // instead of a reset of a connection closed with unread bytes in it.
        Some(Body::File(f)) => cmd
            .args(["-H", "Content-Type: application/json", "-H", "Expect: 100-continue", "--data-binary"])
            .arg(format!("@{}", s(f))),
        None if c.method == "POST" => cmd.args(["-X", "POST"]),
        None => &mut cmd,
    };
    let out = cmd.arg(format!("{url}{}", c.path)).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) =
        text.rsplit_once('\n').unwrap_or_else(|| panic!("curl: {text} {}", String::from_utf8_lossy(&out.stderr)));
    let (code, ct) = tail.split_once(' ').unwrap_or((tail, ""));
    let code = code.parse().unwrap_or_else(|_| panic!("curl: {text} {}", String::from_utf8_lossy(&out.stderr)));
    (code, ct.trim().to_string(), body.to_string())
}

struct Dirs {
    admin: PathBuf,
    revoked: PathBuf,
}

/// The Python of the venv scripts/test prepares, with openapi-spec-validator.
fn venv_python() -> PathBuf {
    let dir = std::env::var_os("IOTPKI_PKILINT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/iotpki/venv/bin"));
    let p = dir.join("python");
    let ok = Command::new(&p).args(["-c", "import openapi_spec_validator"]).output().map(|o| o.status.success());
    assert!(
        ok.unwrap_or(false),
        "openapi-spec-validator not found with {}: run ./scripts/test, which installs it (or set IOTPKI_PKILINT_DIR)",
        p.display()
    );
    p
}

/// Run openapi_check.py on the document and the answers; (success, its output).
fn check(doc: &Path, answers: &Path) -> (bool, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/openapi_check.py");
    let out = Command::new(venv_python()).arg(script).arg(doc).arg(answers).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The calls: every operation, allowed and refused, reads before the changes they would see.
fn calls(s1: &str, spki3: &str, big: &Path, huge: &Path) -> Vec<Call> {
    use Who::{Admin, Nobody, Revoked};
    let long = format!("?pad={}", "a".repeat(MAX_URI + 1));
    let cert = "/admin/v1/certificates/{serial}";
    let revoke = "/admin/v1/certificates/{serial}/revoke";
    let dev_revoke = "/admin/v1/devices/{serial}/revoke";
    let batches = "/admin/v1/batches";
    let one_batch = "/admin/v1/batches/{id}";
    let close = "/admin/v1/batches/{id}/close";
    let key = "/admin/v1/keys/{hash}";
    let zeros = "0".repeat(64);
    let mut v = vec![
        get("/admin/v1/openapi.json", "/admin/v1/openapi.json", Nobody, 200),
        get("/admin/v1/openapi.json", format!("/admin/v1/openapi.json{long}"), Nobody, 414),
        get("/admin/v1/whoami", "/admin/v1/whoami", Admin, 200),
        get("/admin/v1/certificates", "/admin/v1/certificates", Admin, 200),
        get("/admin/v1/certificates", "/admin/v1/certificates?device=OA-1&profile=device&limit=5", Admin, 200),
        get("/admin/v1/certificates", "/admin/v1/certificates?limit=many", Admin, 400),
        get(cert, format!("/admin/v1/certificates/{s1}"), Admin, 200),
        get(cert, "/admin/v1/certificates/0badc0ffee", Admin, 404),
        get(batches, batches, Admin, 200),
        get(one_batch, "/admin/v1/batches/OAB1", Admin, 200),
        get(one_batch, "/admin/v1/batches/OA-NOPE", Admin, 404),
        get("/admin/v1/audit", "/admin/v1/audit?from=1&limit=5", Admin, 200),
        get("/admin/v1/audit", "/admin/v1/audit?from=first", Admin, 400),
        get("/admin/v1/audit/verify", "/admin/v1/audit/verify", Admin, 200),
        get("/admin/v1/keys/blocked", "/admin/v1/keys/blocked", Admin, 200),
        get(key, format!("/admin/v1/keys/{zeros}"), Admin, 200),
        get(key, "/admin/v1/keys/abc", Admin, 400),
        post(revoke, format!("/admin/v1/certificates/{s1}/revoke"), r#"{"reason":"nope"}"#, Admin, 400),
        post(revoke, format!("/admin/v1/certificates/{s1}/revoke"), r#"{"why":"x"}"#, Admin, 400),
        post(revoke, "/admin/v1/certificates/0badc0ffee/revoke", "{}", Admin, 404),
        post(revoke, format!("/admin/v1/certificates/{s1}/revoke"), r#"{"reason":"superseded"}"#, Admin, 200),
        // A revoked certificate's record, with its revocation fields.
        get(cert, format!("/admin/v1/certificates/{s1}"), Admin, 200),
        post(dev_revoke, "/admin/v1/devices/OA-2/revoke", r#"{"reason":"nope"}"#, Admin, 400),
        post(dev_revoke, "/admin/v1/devices/OA-NONE/revoke", "{}", Admin, 404),
        post(dev_revoke, "/admin/v1/devices/OA-2/revoke", "", Admin, 200),
        post(batches, batches, r#"{"id":"OAB3","product":"widget","serials":["OA-10","OA-11"],"quota":2}"#, Admin, 200),
        post(batches, batches, r#"{"product":"widget"}"#, Admin, 400),
        post(batches, batches, r#"{"product":"w","serials":[],"quota":1,"from":"yesterday"}"#, Admin, 400),
        Call {
            method: "POST",
            template: close,
            path: "/admin/v1/batches/OAB2/close".into(),
            body: None,
            who: Admin,
            want: 200,
        },
        Call {
            method: "POST",
            template: close,
            path: "/admin/v1/batches/OA-NOPE/close".into(),
            body: None,
            who: Admin,
            want: 404,
        },
        post("/admin/v1/tokens", "/admin/v1/tokens", r#"{"serial":"OA-20","ttl_secs":600}"#, Admin, 200),
        post("/admin/v1/tokens", "/admin/v1/tokens", "{}", Admin, 400),
        post("/admin/v1/keys/block", "/admin/v1/keys/block", r#"{"spki_sha256":["abc"]}"#, Admin, 400),
        post(
            "/admin/v1/keys/block",
            "/admin/v1/keys/block",
            &format!(r#"{{"spki_sha256":["{spki3}"],"reason":"found in fw.bin","revoke":true}}"#),
            Admin,
            200,
        ),
        get(key, format!("/admin/v1/keys/{spki3}"), Admin, 200),
        get("/admin/v1/keys/blocked", "/admin/v1/keys/blocked", Admin, 200),
        get("/admin/v1/certificates", "/admin/v1/certificates", Admin, 200),
    ];
    // Every admin operation: no certificate (401), a revoked admin's (403), a URI too long (414),
    // and each POST a body over its limit (413).
    let ops: Vec<(&'static str, &'static str, String)> = vec![
        ("GET", "/admin/v1/whoami", "/admin/v1/whoami".into()),
        ("GET", "/admin/v1/certificates", "/admin/v1/certificates".into()),
        ("GET", cert, format!("/admin/v1/certificates/{s1}")),
        ("POST", revoke, format!("/admin/v1/certificates/{s1}/revoke")),
        ("POST", dev_revoke, "/admin/v1/devices/OA-3/revoke".into()),
        ("GET", batches, batches.into()),
        ("POST", batches, batches.into()),
        ("GET", one_batch, "/admin/v1/batches/OAB1".into()),
        ("POST", close, "/admin/v1/batches/OAB1/close".into()),
        ("GET", "/admin/v1/audit", "/admin/v1/audit".into()),
        ("GET", "/admin/v1/audit/verify", "/admin/v1/audit/verify".into()),
        ("POST", "/admin/v1/tokens", "/admin/v1/tokens".into()),
        ("GET", "/admin/v1/keys/blocked", "/admin/v1/keys/blocked".into()),
        ("POST", "/admin/v1/keys/block", "/admin/v1/keys/block".into()),
        ("GET", key, format!("/admin/v1/keys/{spki3}")),
    ];
    for (method, template, path) in ops {
        let mk = |path: String, body: Option<Body>, who, want| Call { method, template, path, body, who, want };
        let body = || (method == "POST").then(|| Body::Text("{}".into()));
        v.push(mk(path.clone(), body(), Nobody, 401));
        v.push(mk(path.clone(), body(), Revoked, 403));
        v.push(mk(format!("{path}{long}"), body(), Admin, 414));
        if method == "POST" {
            let over = if template == batches { huge } else { big };
            v.push(mk(path, Some(Body::File(over.to_path_buf())), Admin, 413));
        }
    }
    v
}

/// The longest URI the server takes (crates/server/src/gate.rs `MAX_URI`).
const MAX_URI: usize = 12 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_answers_as_the_openapi_document_says() {
    let ca = Ca::start().await;
    let d1 = ca.enrolled_device("OA-1").await;
    ca.enrolled_device("OA-2").await;
    let d3 = ca.enrolled_device("OA-3").await;
    let s1 = cert_serial(&d1);
    let spki3 = ca.authority.store().certificate(&cert_serial(&d3)).unwrap().unwrap().spki_sha256;
    batch(&ca, "OAB1", &["OA-5".into(), "OA-6".into()], 2);
    batch(&ca, "OAB2", &["OA-7".into()], 1);
    let dirs = Dirs { admin: add_admin(&ca, "oa-ops", &[]), revoked: add_admin(&ca, "oa-gone", &[]) };
    run_ok(bin().args(["admin", "revoke", "oa-gone", "--dir"]).arg(&ca.dir));
    sync_clock(&ca);
    // Bodies one byte over the limits: 64 KiB for admin actions, 32 MiB for a batch.
    let big = ca.tmp.path().join("big.json");
    std::fs::write(&big, vec![b' '; 64 * 1024 + 1]).unwrap();
    let huge = ca.tmp.path().join("huge.json");
    std::fs::write(&huge, vec![b' '; 32 * 1024 * 1024 + 1]).unwrap();
    let calls = calls(&s1, &spki3, &big, &huge);

    // A server whose limiter lets this test's refusals through, and one that
    // stops an address after its first refusal (429 for every operation).
    let lenient = Limits { refusal_burst: 10_000, client_burst: 10_000, ..Limits::default() };
    let server = Running::start_with(ca.authority.clone(), "127.0.0.1:0".parse().unwrap(), lenient).await.unwrap();
    let strict = Limits { refusal_burst: 1, refusal_rate: 0.001, ..Limits::default() };
    let tight = Running::start_with(ca.authority.clone(), "127.0.0.1:0".parse().unwrap(), strict).await.unwrap();
    let mut tight_calls = vec![get("/admin/v1/whoami", "/admin/v1/whoami", Who::Nobody, 401)];
    for c in &calls {
        if c.want == 200
            && !tight_calls.iter().any(|t| t.want == 429 && t.method == c.method && t.template == c.template)
        {
            let body = c.body.as_ref().map(|_| Body::Text("{}".into()));
            tight_calls.push(Call {
                method: c.method,
                template: c.template,
                path: c.path.clone(),
                body,
                who: Who::Admin,
                want: 429,
            });
        }
    }
    let (url, tight_url) = (server.url(), tight.url());
    let answers = tokio::task::spawn_blocking(move || {
        let on = |url: &str, calls: Vec<Call>| calls.into_iter().map(|c| (url.to_string(), c)).collect::<Vec<_>>();
        let mut all = on(&url, calls);
        all.extend(on(&tight_url, tight_calls));
        all.iter()
            .map(|(url, c)| {
                let (status, ct, body) = curl(url, &dirs, c);
                let shown: String = c.path.chars().take(100).collect();
                assert_eq!(status, c.want, "{} {shown} as {:?}: {body}", c.method, c.who);
                let request = match &c.body {
                    Some(Body::Text(t)) => Some(t.clone()),
                    _ => None,
                };
                json!({"method": c.method, "template": c.template, "path": shown, "status": status,
                       "content_type": ct, "body": body, "request": request})
            })
            .collect::<Vec<Value>>()
    })
    .await
    .unwrap();

    // The document served is the one the server's code makes, and the CLI prints without a server.
    let served = answers[0]["body"].as_str().unwrap().to_string();
    assert_eq!(served, iotpki_server::openapi_json());
    let printed = run_ok(bin().args(["admin", "openapi"]));
    assert_eq!(printed.trim_end(), served.trim_end());
    let doc_file = ca.tmp.path().join("openapi.json");
    std::fs::write(&doc_file, &served).unwrap();
    let answers_file = ca.tmp.path().join("answers.json");
    std::fs::write(&answers_file, serde_json::to_vec(&answers).unwrap()).unwrap();
    let (ok, out) = check(&doc_file, &answers_file);
    assert!(ok, "{out}");
    assert!(out.contains(", 0 problems"), "{out}");

    // The check is not blind: an answer the document does not describe fails it.
    let mut wrong = answers.clone();
    wrong.push(json!({"method": "GET", "template": "/admin/v1/whoami", "path": "/admin/v1/whoami", "status": 200,
                      "content_type": "application/json", "body": r#"{"admin":"x"}"#, "request": null}));
    wrong.push(json!({"method": "GET", "template": "/admin/v1/whoami", "path": "/admin/v1/whoami", "status": 409,
                      "content_type": "text/plain", "body": "no\n", "request": null}));
    std::fs::write(&answers_file, serde_json::to_vec(&wrong).unwrap()).unwrap();
    let (ok, out) = check(&doc_file, &answers_file);
    assert!(!ok, "{out}");
    assert!(out.contains("cert_serial") && out.contains("status 409 is not documented"), "{out}");
    // And so does an operation never called.
    let fewer: Vec<&Value> = answers.iter().filter(|a| a["template"] != "/admin/v1/audit/verify").collect();
    std::fs::write(&answers_file, serde_json::to_vec(&fewer).unwrap()).unwrap();
    let (ok, out) = check(&doc_file, &answers_file);
    assert!(!ok && out.contains("GET /admin/v1/audit/verify: never answered with success"), "{out}");
}
