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
