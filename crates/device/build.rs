//! Link flags for the `iotpki-device` binary (not the library: a C program
//! linking libiotpki_device chooses its own). Both only make the file smaller;
//! BENCHMARKS.md has the figures.
//!
//! - Relative relocations packed (DT_RELR; glibc 2.36 and binutils 2.38 or
//!   newer, as in Debian 12): a position-independent binary otherwise stores
//!   each at 24 bytes.
//! - `no-unwind-tables.ld`: the unwind tables of a binary built with
//!   panic = "abort" are discarded (nothing unwinds): `device` profile only.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    println!("cargo:rerun-if-changed=no-unwind-tables.ld");
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    // Only in the `device` profile, which has panic = "abort" (a build script is not
    // told the profile's panic strategy; its output directory names the profile).
    let out = std::env::var("OUT_DIR").unwrap_or_default();
    // OUT_DIR is target/[TRIPLE/]PROFILE/build/PACKAGE-HASH/out.
    let profile = std::path::Path::new(&out).ancestors().nth(3).and_then(|p| p.file_name());
    if profile.is_some_and(|p| p == "device") {
        println!("cargo:rustc-link-arg-bins={dir}/no-unwind-tables.ld");
    }
}
