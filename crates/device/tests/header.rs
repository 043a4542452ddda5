//! include/iotpki_device.h is what cbindgen makes of src/ffi.rs today, byte
//! for byte. `IOTPKI_BLESS=1 cargo test -p iotpki-device --test header`
//! writes it anew.

#![allow(clippy::unwrap_used)]

use std::path::Path;

#[test]
fn the_checked_in_header_is_fresh() {
    let krate = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header = krate.join("../../include/iotpki_device.h");
    let config = cbindgen::Config::from_file(krate.join("cbindgen.toml")).unwrap();
    let mut made = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(krate.join("src/ffi.rs"))
        .generate()
        .expect("cbindgen reads src/ffi.rs")
        .write(&mut made);
    if std::env::var_os("IOTPKI_BLESS").is_some() {
        std::fs::write(&header, &made).unwrap();
        return;
    }
    let checked_in = std::fs::read(&header).unwrap_or_default();
    assert!(
        checked_in == made,
        "include/iotpki_device.h is stale (src/ffi.rs or cbindgen.toml changed): regenerate it with \
         `IOTPKI_BLESS=1 cargo test -p iotpki-device --test header` and commit it"
    );
}
