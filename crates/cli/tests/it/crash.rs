//! Durability under SIGKILL: `scripts/crash-test` kills the server at random
//! moments under load and reconciles what the clients received with the store.

use std::process::Command;

#[test]
fn killing_the_server_under_load_loses_nothing() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(root.join("scripts/crash-test"))
        .args(["--kills", "3", "--devices", "240", "--concurrency", "8"])
        .env("IOTPKI_BIN", env!("CARGO_BIN_EXE_iotpki"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("missing 0, different 0, received twice 0"), "{text}");
    assert!(text.contains("crash test passed"), "{text}");
    // The run did something: certificates were received before and between the kills.
    let received: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("token enrollments and renewals: received "))
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(received > 0, "{text}");
}
