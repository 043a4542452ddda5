//! The load generator: counts only answers that check out.

use crate::util::{batch, bin, run_fail, run_ok, station, Ca};

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_enrolls_and_renews_with_tokens_and_counts_every_certificate() {
    let ca = Ca::start().await;
    let before = ca.cert_count();
    let (dir, url) = (ca.dir.clone(), ca.url.clone());
    let out = tokio::task::spawn_blocking(move || {
        run_ok(bin().arg("loadgen").arg("--dir").arg(&dir).args([
            "--server",
            &url,
            "--devices",
            "40",
            "--concurrency",
            "8",
            "--renew",
            "--json",
        ]))
    })
    .await
    .unwrap();
    let v = json(&out);
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["enroll"]["ok"], 40, "{v}");
    assert_eq!(v["renew"]["ok"], 40, "{v}");
    for k in ["enrollments_per_s", "renewals_per_s", "p50_ms", "p99_ms"] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k} in {v}");
    }
    assert_eq!(ca.cert_count(), before + 80, "every certificate the generator counted is in the store");
    ca.authority.store().verify_audit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_births_through_a_station_on_kept_connections() {
    let ca = Ca::start().await;
    let serials: Vec<String> = (0..30).map(|i| format!("LGS-{i:03}")).collect();
    batch(&ca, "LGB", &serials, 30);
    let st = station(&ca, "lg-line", &["LGB"]);
    let url = ca.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_ok(bin().arg("loadgen").arg("--station-dir").arg(&st).args([
            "--batch",
            "LGB",
            "--server",
            &url,
            "--devices",
            "30",
            "--concurrency",
            "4",
            "--reuse-connections",
            "--json",
        ]))
    })
    .await
    .unwrap();
    let v = json(&out);
    assert_eq!(
        (v["errors"].as_u64(), v["enroll"]["ok"].as_u64(), v["mode"].as_str()),
        (Some(0), Some(30), Some("station"))
    );
    assert_eq!(ca.authority.store().batch("LGB").unwrap().unwrap().issued, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_refuses_a_server_its_anchor_does_not_vouch_for() {
    let ca = Ca::start().await;
    let other = Ca::start().await;
    let (dir, url, wrong) = (ca.dir.clone(), ca.url.clone(), other.root_file());
    let err = tokio::task::spawn_blocking(move || {
        run_fail(bin().arg("loadgen").arg("--dir").arg(&dir).arg("--ca-cert").arg(&wrong).args([
            "--server",
            &url,
            "--devices",
            "5",
            "--concurrency",
            "2",
        ]))
    })
    .await
    .unwrap();
    assert!(err.contains("invalid peer certificate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_handshakes_asks_ocsp_from_cache_and_spreads_over_servers() {
    let ca = Ca::start().await;
    let before = ca.cert_count();
    let (dir, url, http) = (ca.dir.clone(), ca.url.clone(), ca.http_url.clone());
    let me = std::process::id().to_string();
    let out = tokio::task::spawn_blocking(move || {
        // The same node given twice: the workers alternate between the two clients.
        run_ok(bin().arg("loadgen").arg("--dir").arg(&dir).args([
            "--server",
            &url,
            "--server",
            &url,
            "--devices",
            "12",
            "--concurrency",
            "4",
            "--handshakes",
            "--ocsp",
            &http,
            "--ocsp-requests",
            "30",
            "--watch-pid",
            &me,
            "--json",
        ]))
    })
    .await
    .unwrap();
    let v = json(&out);
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["servers"], 2, "{v}");
    assert_eq!(v["enroll"]["ok"], 12, "{v}");
    assert_eq!(v["handshake"]["ok"], 12, "{v}");
    assert_eq!(v["ocsp_same"]["ok"], 30, "{v}");
    assert_eq!(v["ocsp_distinct"]["ok"], 30, "{v}");
    for k in ["handshakes_per_s", "ocsp_same_per_s", "ocsp_distinct_per_s"] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k} in {v}");
    }
    for p in ["enroll", "handshake", "ocsp_same", "ocsp_distinct"] {
        for k in ["client_cpu_ms_per_op", "server_cpu_ms_per_op"] {
            assert!(v[p][k].as_f64().is_some_and(|x| x >= 0.0), "{p}.{k} in {v}");
        }
    }
    assert!(v.get("renew").is_none(), "no renewals without --renew: {v}");
    // Twelve devices, and the responder's delegated OCSP signer (made on first use):
    // the handshakes and OCSP requests issue nothing more.
    assert_eq!(ca.cert_count(), before + 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_refuses_an_ocsp_url_that_is_not_plain_http() {
    let ca = Ca::start().await;
    let (dir, url) = (ca.dir.clone(), ca.url.clone());
    let err = tokio::task::spawn_blocking(move || {
        run_fail(bin().arg("loadgen").arg("--dir").arg(&dir).args([
            "--server",
            &url,
            "--devices",
            "2",
            "--concurrency",
            "1",
            "--ocsp",
            &url,
        ]))
    })
    .await
    .unwrap();
    assert!(err.contains("--ocsp takes the plain-HTTP base URL"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_drives_coaps_enrollments_and_renewals() {
    let ca = Ca::start().await;
    let limits = iotpki_server::Limits::from(&ca.authority.config().limits);
    let udp = iotpki_server::Running::start_coaps(
        ca.authority.clone(),
        "127.0.0.1:0".parse().unwrap(),
        limits,
        iotpki_server::coaps::CoapsOptions::default(),
    )
    .await
    .unwrap();
    let before = ca.cert_count();
    let (dir, url) = (ca.dir.clone(), udp.coaps_url());
    let out = tokio::task::spawn_blocking(move || {
        run_ok(bin().arg("loadgen").arg("--dir").arg(&dir).args([
            "--server",
            &url,
            "--devices",
            "20",
            "--concurrency",
            "4",
            "--renew",
            "--json",
        ]))
    })
    .await
    .unwrap();
    let v = json(&out);
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["enroll"]["ok"], 20, "{v}");
    assert_eq!(v["renew"]["ok"], 20, "{v}");
    assert_eq!(ca.cert_count(), before + 40, "every certificate the generator counted is in the store");
    // Station births are not offered over coaps: refused with the reason, before any work.
    let e = run_fail(bin().arg("loadgen").arg("--station-dir").arg(ca.tmp.path()).args([
        "--batch",
        "X",
        "--server",
        &udp.coaps_url(),
    ]));
    assert!(e.contains("coaps"), "{e}");
}

/// Issue #19: `--key-type ml-dsa-44`: ML-DSA device keys enroll and renew
/// (over mutual TLS with ML-DSA client certificates) under an ML-DSA-65
/// authority; over coaps, ML-DSA is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_enrolls_and_renews_ml_dsa_devices() {
    use iotpki_core::keys::KeyType;
    let ca =
        Ca::start_with(iotpki_authority::init::InitOptions { key_type: KeyType::MlDsa65, ..Default::default() }).await;
    let before = ca.cert_count();
    let (dir, url) = (ca.dir.clone(), ca.url.clone());
    let (out, coaps) = tokio::task::spawn_blocking(move || {
        let args = ["--server", &url, "--devices", "12", "--concurrency", "4", "--key-type", "ml-dsa-44"];
        let out = run_ok(bin().arg("loadgen").arg("--dir").arg(&dir).args(args).args(["--renew", "--json"]));
        let coaps = run_fail(bin().arg("loadgen").arg("--dir").arg(&dir).args([
            "--server",
            "coaps://127.0.0.1:9",
            "--devices",
            "1",
            "--key-type",
            "ml-dsa-44",
        ]));
        (out, coaps)
    })
    .await
    .unwrap();
    let v = json(&out);
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["enroll"]["ok"], 12, "{v}");
    assert_eq!(v["renew"]["ok"], 12, "{v}");
    assert_eq!(ca.cert_count(), before + 24);
    assert!(coaps.contains("p256 or p384"), "{coaps}");
    assert_eq!(ca.cert_count(), before + 24, "nothing issued over coaps");
}
