//! The README's first command on a bare machine: the default build (no cargo
//! features) needs no pkg-config and no system library's headers, and its
//! release binary links nothing beyond the C library. scripts/test builds it
//! with the same command before the tests, so here the build is a no-op.

use std::path::PathBuf;
use std::process::Command;

/// What a binary may link on Linux: glibc's own libraries, the dynamic loader
/// and the vDSO, and the GCC runtime (unwinding).
pub const ALLOWED: &[&str] =
    &["linux-vdso.so", "ld-linux", "libc.so", "libm.so", "libgcc_s.so", "libpthread.so", "libdl.so", "librt.so"];

/// `cargo build --release` of the `iotpki` binary with default features and
/// pkg-config out of reach (what scripts/test runs); its path.
fn default_release_binary() -> PathBuf {
    crate::util::cargo_build_bin(&["--release", "-p", "iotpki-cli", "--bin", "iotpki"], "iotpki")
}

/// The default release binary builds without pkg-config (no libtss2 headers)
/// and `ldd` lists only the C library, the loader and the GCC runtime; its
/// TPM options say how to get TPM support instead of failing obscurely.
#[test]
fn default_release_binary_needs_no_pkg_config_and_links_only_the_c_library() {
    let exe = default_release_binary();
    let out = Command::new("ldd").arg(&exe).output().unwrap();
    assert!(out.status.success(), "ldd {}: {}", exe.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let libs: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(libs.iter().any(|l| l.starts_with("libc.so")), "{text}");
    for lib in &libs {
        let name = lib.rsplit('/').next().unwrap_or(lib);
        assert!(ALLOWED.iter().any(|a| name.starts_with(a)), "{} links {lib}:\n{text}", exe.display());
    }

    // The TPM options stay (same flags in every build) and say what to do.
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("root.pem");
    std::fs::write(&ca, "not read: the keystore is checked first").unwrap();
    let state = tmp.path().join("dev");
    let o = Command::new(&exe)
        .args(["agent", "enroll", "--state", state.to_str().unwrap(), "--server", "https://127.0.0.1:9"])
        .args(["--serial", "SN-1", "--token", "t", "--ca-cert", ca.to_str().unwrap(), "--keystore", "tpm"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("built without TPM support: rebuild with --features tpm"), "{err}");
    assert!(!state.exists(), "nothing written");
    let o = Command::new(&exe).args(["agent", "tpm-ek", "--tcti", "swtpm:host=127.0.0.1,port=9"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("built without TPM support: rebuild with --features tpm"), "{err}");
}
