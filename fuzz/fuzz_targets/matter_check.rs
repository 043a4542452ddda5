//! Matter attestation certificates as `iotpki matter check FILE...` reads them:
//! any octets, checked as a DAC, a PAI and a PAA, and three slices of them as a
//! chain (seeds: a PAA and a PAI from `iotpki matter`, a chain of them).
//! Nothing may panic; garbage is reported as broken rules, never passed.
#![no_main]
use iotpki_core::matter::{check, check_chain, Kind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for kind in [Kind::Dac, Kind::Pai, Kind::Paa] {
        let v = check(data, kind);
        // Only a certificate can pass: what does not parse as one is reported.
        if v.is_empty() {
            assert!(iotpki_core::profile::cert_info(data).is_ok());
        }
    }
    // Two big-endian u16 lengths first: the DAC's and the PAI's; the PAA is the rest.
    if let [a, b, c, d, rest @ ..] = data {
        let (x, y) = (usize::from(u16::from_be_bytes([*a, *b])), usize::from(u16::from_be_bytes([*c, *d])));
        if x <= rest.len() && y <= rest.len() - x {
            let (dac, more) = rest.split_at(x);
            let (pai, paa) = more.split_at(y);
            let _ = check_chain(dac, pai, paa, Some(1_800_000_000));
        }
    }
});
