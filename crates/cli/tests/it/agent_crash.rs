//! Power cuts on the device: the agent aborted at each step of enroll and
//! renew, and killed at random moments, leaves the old identity or the new
//! one, and the next run recovers.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{bin, run_ok, Ca};

const POINTS: [&str; 3] = ["key.written", "state.tmp-written", "state.renamed"];

fn status_serial(state: &Path) -> String {
    // `agent status` refuses a state whose key does not match its certificate.
    let out = run_ok(bin().args(["agent", "status", "--json", "--state"]).arg(state));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["cert_serial"].as_str().unwrap().to_string()
}

fn crashed(c: &mut Command) {
    let out = c.output().unwrap();
    assert!(!out.status.success(), "the crash point was not reached: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("crash point"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_enroll_or_renew_leaves_a_whole_identity_and_recovers() {
    let ca = Ca::start().await;
    let (url, root) = (ca.url.clone(), ca.root_file());
    for (i, point) in POINTS.iter().enumerate() {
        // Enroll: the token is good for the same key again, so nothing is lost.
        let serial = format!("PC-{i}");
        let token = ca.token(&serial);
        let state = ca.tmp.path().join("pc").join(&serial);
        let enroll = |env: Option<&str>| {
            let mut c = bin();
            c.args(["agent", "enroll", "--server", &url, "--serial", &serial, "--token", &token, "--ca-cert"])
                .arg(&root)
                .arg("--state")
                .arg(&state);
            if let Some(p) = env {
                c.env("IOTPKI_CRASH_AT", p);
            }
            c
        };
        let (mut first, point2) = (enroll(Some(point)), point.to_string());
        tokio::task::spawn_blocking(move || crashed(&mut first)).await.unwrap();
        let mut again = enroll(None);
        let out = tokio::task::spawn_blocking(move || again.output().unwrap()).await.unwrap();
        let said = String::from_utf8_lossy(&out.stderr).to_string();
        if point2 == "state.renamed" {
            // The identity was in place before the power went: it is kept.
            assert!(said.contains("already holds an identity"), "{said}");
        } else {
            assert!(out.status.success(), "enroll again after a crash at {point2}: {said}");
        }
        let st = state.clone();
        let before = tokio::task::spawn_blocking(move || status_serial(&st)).await.unwrap();

        // Renew: the old identity or the new one, then a renewal that works.
        let renew = |env: Option<&str>| {
            let mut c = bin();
            c.args(["agent", "renew", "--state"]).arg(&state);
            if let Some(p) = env {
                c.env("IOTPKI_CRASH_AT", p);
            }
            c
        };
        let mut r = renew(Some(point));
        tokio::task::spawn_blocking(move || crashed(&mut r)).await.unwrap();
        let st = state.clone();
        let mid = tokio::task::spawn_blocking(move || status_serial(&st)).await.unwrap();
        if *point == "state.renamed" {
            assert_ne!(mid, before, "renamed: the new identity is in place");
        } else {
            assert_eq!(mid, before, "before the rename: the old identity is in place");
        }
        let mut r = renew(None);
        tokio::task::spawn_blocking(move || run_ok(&mut r)).await.unwrap();
        let st = state.clone();
        let after = tokio::task::spawn_blocking(move || status_serial(&st)).await.unwrap();
        assert_ne!(after, mid);
        let keys = std::fs::read_dir(&state)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("key"))
            .count();
        assert_eq!(keys, 1, "keys left over from the crash are cleaned up");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_agent_at_random_moments_never_breaks_its_state() {
    let ca = Ca::start().await;
    let state = ca.enrolled_device("KILL-1").await;
    let mut killed_midway = 0;
    for i in 0..12u64 {
        let mut child = bin()
            .args(["agent", "renew", "--state"])
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Spread the kills over the run (a renewal takes some tens of milliseconds).
        tokio::time::sleep(Duration::from_millis(5 + (i * 7919) % 60)).await;
        let _ = child.kill();
        let st = child.wait().unwrap();
        if !st.success() {
            killed_midway += 1;
        }
        let s = state.clone();
        tokio::task::spawn_blocking(move || status_serial(&s)).await.unwrap();
    }
    let s = state.clone();
    tokio::task::spawn_blocking(move || run_ok(bin().args(["agent", "renew", "--state"]).arg(&s))).await.unwrap();
    assert!(killed_midway > 0, "no kill landed during a renewal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_apply_leaves_the_old_bundle_or_the_new_one() {
    use iotpki_core::bundle::Bundle;
    use iotpki_core::keys::{KeyType, SoftKey};
    let ca = Ca::start().await;
    let state = ca.enrolled_device("AP-1").await;
    let keys: Vec<SoftKey> = (0..3).map(|_| SoftKey::generate(KeyType::EcdsaP256).unwrap()).collect();
    let b1 = crate::util::signed_bundle(&ca, &keys, 1);
    iotpki_agent::trust::apply(&state, &b1, true).unwrap();
    for (i, point) in ["state.tmp-written", "state.renamed"].iter().enumerate() {
        let next = crate::util::signed_bundle(&ca, &keys, 2 + i as u64);
        let f = ca.tmp.path().join(format!("b{i}.cbor"));
        std::fs::write(&f, &next).unwrap();
        let installed_before = std::fs::read(state.join("bundle.cbor")).unwrap();
        let (s, f2, p) = (state.clone(), f.clone(), point.to_string());
        tokio::task::spawn_blocking(move || {
            crashed(bin().args(["agent", "apply", "--state"]).arg(&s).arg(&f2).env("IOTPKI_CRASH_AT", &p))
        })
        .await
        .unwrap();
        let now = std::fs::read(state.join("bundle.cbor")).unwrap();
        Bundle::decode(&now).expect("the installed bundle is whole");
        if *point == "state.renamed" {
            assert_eq!(now, next, "renamed: the new bundle is in place");
        } else {
            assert_eq!(now, installed_before, "before the rename: the old bundle is in place");
        }
        let s = state.clone();
        let out =
            tokio::task::spawn_blocking(move || run_ok(bin().args(["agent", "apply", "--state"]).arg(&s).arg(&f)))
                .await
                .unwrap();
        assert!(out.contains("installed") || out.contains("unchanged"), "{out}");
        assert_eq!(std::fs::read(state.join("bundle.cbor")).unwrap(), next);
    }
}
