//! `GET /metrics` (issue #18): the numbers move as the server works, the
//! scrape passes `promtool check metrics`, it takes no parameters and
//! changes nothing, and `[server] metrics_listen` moves it to its own listener.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;

use iotpki_authority::init::InitOptions;
use iotpki_authority::{Authority, Passphrase};
use iotpki_core::clock::{Clock, FixedClock, SystemClock};
use iotpki_server::Running;

use crate::util::{Ca, PASS};

/// `curl` a URL: (HTTP status, Content-Type, body).
fn get(url: &str, extra: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--insecure", "--write-out", "\n%{http_code} %{content_type}"])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, tail) = text.rsplit_once('\n').unwrap();
    let (code, ct) = tail.split_once(' ').unwrap_or((tail, ""));
    (code.parse().unwrap(), ct.to_string(), body.to_string())
}

/// The value of the sample `series` (name with its labels, as written) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).map(|v| v.parse().unwrap()))
}

/// `promtool check metrics` on a scrape: its verdict, whole.
fn promtool(scrape: &str) -> (bool, String) {
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/test installs it)");
    c.stdin.take().unwrap().write_all(scrape.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr))
}

/// One OCSP request about `cert` (no nonce, so that its answer is cached) to `url`.
fn ocsp(url: &str, issuer: &std::path::Path, root: &std::path::Path, cert: &std::path::Path) -> String {
    let o = Command::new("openssl")
        .args(["ocsp", "-no_nonce", "-url", &format!("{url}/ocsp")])
        .arg("-issuer")
        .arg(issuer)
        .arg("-CAfile")
        .arg(root)
        .arg("-cert")
        .arg(cert)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_issuances_refusals_ocsp_and_crls_and_promtool_accepts_the_scrape() {
    let ca = Ca::start().await;
    for i in 1..=3 {
        ca.enrolled_device(&format!("MET-{i}")).await;
    }
    let dev = ca.tmp.path().join("devices").join("MET-1");
    let pem = ca.tmp.path().join("met-1.pem");
    std::fs::write(&pem, iotpki_agent::state::load(&dev).unwrap().cert_pem).unwrap();
    let (url, http, root, op) = (ca.url.clone(), ca.http_url.clone(), ca.root_file(), ca.ca_file("operational"));
    let (refused, ocsp_out) = {
        let (url, http, root, op) = (url.clone(), http.clone(), root.clone(), op.clone());
        tokio::task::spawn_blocking(move || {
            // A refused first enrollment: a token that was never made.
            let refused = Command::new("curl")
                .args(["--silent", "--output", "/dev/null", "--write-out", "%{http_code}", "--cacert"])
                .arg(&root)
                .args(["--user", "MET-9:not-a-token", "-H", "Content-Type: application/pkcs10", "--data", "MAA="])
                .arg(format!("{url}/.well-known/est/simpleenroll"))
                .output()
                .unwrap();
            let refused = String::from_utf8_lossy(&refused.stdout).to_string();
            // The CRL, made now; two OCSP requests about one certificate: one signed, one from the cache.
            assert_eq!(get(&format!("{http}/crl/operational.crl"), &[]).0, 200);
            let ocsp_out = [ocsp(&http, &op, &root, &pem), ocsp(&http, &op, &root, &pem)];
            (refused, ocsp_out)
        })
        .await
        .unwrap()
    };
    let (certs, audit) = (ca.cert_count(), ca.audit_len());
    let (scrape, bad, post, tls, second) = tokio::task::spawn_blocking(move || {
        let scrape = get(&format!("{http}/metrics"), &[]);
        let bad = get(&format!("{http}/metrics?x=1"), &[]);
        let post = get(&format!("{http}/metrics"), &["--data", "x"]);
        let tls = get(&format!("{url}/metrics"), &[]);
        let second = get(&format!("{http}/metrics"), &[]);
        (scrape, bad, post, tls, second)
    })
    .await
    .unwrap();
    assert_eq!(refused, "401", "the refused enrollment");
    assert!(ocsp_out.iter().all(|o| o.contains(": good")), "{ocsp_out:?}");
    let (code, ct, m) = scrape;
    assert_eq!(code, 200, "{m}");
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");

    // Exact where the test made them.
    assert_eq!(sample(&m, r#"iotpki_issued_total{path="enroll"}"#), Some(3.0), "{m}");
    assert_eq!(sample(&m, r#"iotpki_refused_total{path="enroll",reason="token"}"#), Some(1.0), "{m}");
    assert_eq!(
        sample(&m, r#"iotpki_issued_total{path="ocsp.signer"}"#),
        Some(1.0),
        "the OCSP signer, made for the first answer"
    );
    assert_eq!(sample(&m, "iotpki_ocsp_cache_misses_total"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "iotpki_ocsp_cache_hits_total"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "iotpki_ocsp_cache_entries"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "iotpki_store_up"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "iotpki_store_schema_version"), Some(ca.authority.store().probe().unwrap() as f64), "{m}");
    let age = sample(&m, r#"iotpki_crl_age_seconds{ca="operational"}"#).expect("the CRL served has an age");
    assert!((0.0..5.0).contains(&age), "{age}");
    // Three enrollments answered 2xx on the enrollment route (its template, not the path).
    let enrolled = r#"iotpki_http_request_duration_seconds_count{route="/.well-known/est/simpleenroll",code="2xx"}"#;
    assert_eq!(sample(&m, enrolled), Some(3.0), "{m}");
    let refused_route =
        r#"iotpki_http_request_duration_seconds_count{route="/.well-known/est/simpleenroll",code="4xx"}"#;
    assert_eq!(sample(&m, refused_route), Some(1.0), "{m}");
    assert!(m.contains(r#"route="/crl/{*file}""#) && !m.contains("operational.crl"), "templates only: {m}");
    assert_eq!(
        sample(
            &m,
            r#"iotpki_http_request_duration_seconds_bucket{route="/.well-known/est/simpleenroll",code="2xx",le="+Inf"}"#
        ),
        Some(3.0)
    );
    // The scrape's own connection is open while it is answered.
    assert!(sample(&m, r#"iotpki_open_connections{listener="http"}"#).unwrap() >= 1.0, "{m}");
    assert!(sample(&m, r#"iotpki_open_connections{listener="tls"}"#).is_some(), "{m}");
    // Every write went through the group commit: at least one transaction per issuance.
    assert!(sample(&m, "iotpki_store_commit_batch_size_count").unwrap() >= 3.0, "{m}");
    assert!(sample(&m, "iotpki_store_commit_seconds_count").unwrap() >= 3.0, "{m}");
    // Operational certificates live 90 days by default: none expires within 30.
    let now = ca.clock.now();
    let (in7, in30) = (
        ca.authority.store().count_expiring(now, now + 7 * 86_400).unwrap(),
        ca.authority.store().count_expiring(now, now + 30 * 86_400).unwrap(),
    );
    assert_eq!(sample(&m, r#"iotpki_certificates_expiring{within="7d"}"#), Some(in7 as f64), "{m}");
    assert_eq!(sample(&m, r#"iotpki_certificates_expiring{within="30d"}"#), Some(in30 as f64), "{m}");

    let (ok, verdict) = promtool(&m);
    assert!(ok && verdict.trim().is_empty(), "promtool check metrics: {verdict}\n{m}");
    let (ok, verdict) = promtool("iotpki_bad_counter 1\n# TYPE iotpki_bad_counter counter\n");
    assert!(!ok || !verdict.trim().is_empty(), "promtool finds a broken exposition: {verdict}");

    // No parameters, no other method, not on the TLS listener; nothing written by any of it.
    assert_eq!(bad.0, 400, "{bad:?}");
    assert!(bad.2.contains("takes no parameters"), "{bad:?}");
    assert_eq!(post.0, 405, "{post:?}");
    assert_eq!(tls.0, 404, "{tls:?}");
    assert_eq!((ca.cert_count(), ca.audit_len()), (certs, audit), "scrapes write nothing");
    // The scrape with a query (400) and the POST (405) are counted under the route, as 4xx.
    assert_eq!(
        sample(&second.2, r#"iotpki_http_request_duration_seconds_count{route="/metrics",code="4xx"}"#),
        Some(2.0)
    );
    assert_eq!(sample(&second.2, r#"iotpki_issued_total{path="enroll"}"#), Some(3.0));
}

/// A certificate close to its end is counted in both windows; the count is
/// cached, so a scrape within a minute does not read the store again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_expiring_within_7_and_30_days_are_counted_and_cached() {
    let ca = Ca::start().await;
    ca.enrolled_device("EXP-1").await;
    // 85 days later the 90-day certificate has 5 days left (the clock is the authority's).
    ca.clock.advance(85 * 86_400);
    let http = ca.http_url.clone();
    let m = tokio::task::spawn_blocking(move || get(&format!("{http}/metrics"), &[]).2).await.unwrap();
    assert_eq!(sample(&m, r#"iotpki_certificates_expiring{within="7d"}"#), Some(1.0), "{m}");
    assert_eq!(sample(&m, r#"iotpki_certificates_expiring{within="30d"}"#), Some(1.0), "{m}");
    // Revoked now: it expires no more, but the count read a moment ago is served for a minute.
    let dev = iotpki_core::name::DeviceSerial::parse("EXP-1").unwrap();
    let revoked = iotpki_authority::revocation::revoke(
        ca.authority.store().as_ref(),
        ca.clock.as_ref(),
        iotpki_authority::revocation::Target::Device(&dev),
        1,
        "test",
    )
    .unwrap();
    assert_eq!(revoked.len(), 1);
    let now = ca.clock.now();
    assert_eq!(ca.authority.store().count_expiring(now, now + 7 * 86_400).unwrap(), 0, "the store's count moved");
    let http = ca.http_url.clone();
    let m = tokio::task::spawn_blocking(move || get(&format!("{http}/metrics"), &[]).2).await.unwrap();
    assert_eq!(sample(&m, r#"iotpki_certificates_expiring{within="7d"}"#), Some(1.0), "cached for a minute: {m}");
    assert_eq!(sample(&m, r#"iotpki_issued_total{path="enroll"}"#), Some(1.0), "counters are not cached: {m}");
}

/// With `[server] metrics_listen`, /metrics is there alone and not on the
/// plain-HTTP listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_serves_the_scrape_alone_and_the_public_listener_not() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let pass = Passphrase::new(PASS.into()).unwrap();
    iotpki_authority::init::init(&dir, &InitOptions::default(), &pass, &SystemClock).unwrap();
    let toml = dir.join("iotpki.toml");
    let cfg = std::fs::read_to_string(&toml).unwrap();
    assert!(cfg.contains("[server]\n"), "{cfg}");
    std::fs::write(&toml, cfg.replace("[server]\n", "[server]\nmetrics_listen = \"127.0.0.1:0\"\n")).unwrap();
    let clock = Arc::new(FixedClock::new(SystemClock.now()));
    let authority = Arc::new(Authority::open(&dir, &pass, clock).unwrap());
    assert_eq!(authority.config().server.metrics_listen.as_deref(), Some("127.0.0.1:0"));
    let public = Running::start_http(authority.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = Running::start_metrics_on(authority.clone(), listener).unwrap();
    let (p, m) = (format!("http://{}", public.addr), format!("http://{}", metrics.addr));
    let (on_public, on_metrics, other) = tokio::task::spawn_blocking(move || {
        (get(&format!("{p}/metrics"), &[]), get(&format!("{m}/metrics"), &[]), get(&format!("{m}/healthz"), &[]))
    })
    .await
    .unwrap();
    assert_eq!(on_public.0, 404, "{on_public:?}");
    assert_eq!(on_metrics.0, 200, "{on_metrics:?}");
    assert_eq!(other.0, 404, "the metrics listener serves nothing else: {other:?}");
    let s = &on_metrics.2;
    assert_eq!(sample(s, r#"iotpki_open_connections{listener="metrics"}"#), Some(1.0), "{s}");
    assert_eq!(
        sample(s, r#"iotpki_http_request_duration_seconds_count{route="unmatched",code="4xx"}"#),
        Some(1.0),
        "the public listener's 404, counted without its path: {s}"
    );
    let (ok, verdict) = promtool(s);
    assert!(ok && verdict.trim().is_empty(), "{verdict}");
    metrics.stop().await.unwrap();
    public.stop().await.unwrap();
}

/// `iotpki serve` with `[server] metrics_listen`: it binds that listener
/// before it says it is ready, prints where, and serves /metrics there only.
#[test]
fn iotpki_serve_binds_metrics_listen_and_prints_it() {
    use std::io::BufRead as _;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("ca");
    let dir = d.to_str().unwrap();
    crate::util::run_ok(crate::util::bin().args(["init", "--dir", dir]).env("IOTPKI_PASSPHRASE", PASS));
    let toml = d.join("iotpki.toml");
    let cfg = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, cfg.replace("[server]\n", "[server]\nmetrics_listen = \"127.0.0.1:0\"\n")).unwrap();
    let mut child = crate::util::bin()
        .args(["serve", "--dir", dir, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .env("IOTPKI_PASSPHRASE", PASS)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let _server = crate::util::Server(child);
    let (mut http, mut metrics) = (None, None);
    let mut line = String::new();
    while http.is_none() || metrics.is_none() {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "serve ended before printing both listeners");
        if let Some(u) = line.trim().strip_prefix("CRL and OCSP on ") {
            http = Some(u.to_string());
        }
        if let Some(u) = line.trim().strip_prefix("metrics on ") {
            metrics = Some(u.to_string());
        }
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let (http, metrics) = (http.unwrap(), metrics.unwrap());
    assert!(metrics.starts_with("http://127.0.0.1:") && metrics.ends_with("/metrics"), "{metrics}");
    let (code, ct, body) = get(&metrics, &[]);
    assert_eq!((code, ct.as_str()), (200, iotpki_metrics_content_type()), "{body}");
    assert_eq!(sample(&body, "iotpki_store_up"), Some(1.0), "{body}");
    assert_eq!(get(&format!("{http}/metrics"), &[]).0, 404, "not on the plain-HTTP listener");
    assert_eq!(get(&format!("{http}/healthz"), &[]).0, 200, "which serves the rest");
}

fn iotpki_metrics_content_type() -> &'static str {
    "text/plain; version=0.0.4; charset=utf-8"
}

/// The agent's flows keep one TLS connection for all their calls: an
/// enrollment (`cacerts`, then `simpleenroll`) and a renewal are one connection
/// each, counted by `iotpki_connections_accepted_total`; a client that opens one
/// per call is counted once per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_flow_makes_one_tls_connection_and_the_server_counts_each() {
    let ca = Ca::start().await;
    let accepted = || ca.authority.metrics().accepted_connections.get(&["tls"]);
    let before = accepted();
    let state = ca.enrolled_device("ONE-CONN-1").await;
    assert_eq!(accepted() - before, 1, "cacerts and simpleenroll on one connection");
    let before = accepted();
    iotpki_agent::renew(&state, None, None).await.unwrap();
    assert_eq!(accepted() - before, 1, "a renewal");

    // One connection per call, as the client makes them by default, and on one when asked.
    let anchor = ca.authority.root_der().to_vec();
    let client = iotpki_agent::est_client::EstClient::new(&ca.url, None, std::slice::from_ref(&anchor), None).unwrap();
    let before = accepted();
    client.cacerts().await.unwrap();
    client.cacerts().await.unwrap();
    assert_eq!(accepted() - before, 2);
    let one = client.one_connection();
    let before = accepted();
    for _ in 0..3 {
        one.clone().cacerts().await.unwrap();
    }
    assert_eq!(accepted() - before, 1, "the clones share the connection");

    // The scrape says the same.
    let http = ca.http_url.clone();
    let m = tokio::task::spawn_blocking(move || get(&format!("{http}/metrics"), &[]).2).await.unwrap();
    let tls = sample(&m, r#"iotpki_connections_accepted_total{listener="tls"}"#).expect("counted");
    assert_eq!(tls, accepted() as f64, "{m}");
    assert!(sample(&m, r#"iotpki_connections_accepted_total{listener="http"}"#).unwrap() >= 1.0, "{m}");
}
