//! CRLs as a microcontroller takes them (iotpki-device-core): checked
//! against a fixed issuer; nothing may panic, and the verdict and what a
//! passing CRL says are the core's (the agent's).
#![no_main]
use iotpki_device_core::crl;
use libfuzzer_sys::fuzz_target;

/// A self-signed P-256 CA certificate (seeds/crl/issuer.der, built in).
static ISSUER: &[u8] = include_bytes!("../seeds/crl/issuer.der");
const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let ours = crl::check(data, ISSUER, NOW);
    let core = iotpki_core::crl::check(data, ISSUER, NOW as i64, 300);
    assert_eq!(ours.is_ok(), core.is_ok(), "verdicts differ: ours {ours:?}, core {core:?}");
    if let (Ok(o), Ok(c)) = (ours, core) {
        assert_eq!((o.number, o.scope.clone()), (c.number, c.scope.clone()));
        assert_eq!(o.revoked.len(), c.revoked.len());
        // The same CRL again is no change; a lower number after it is a rollback.
        assert_eq!(
            crl::verify(data, ISSUER, NOW, &[], Some(&o.last)).ok().map(|v| v == crl::Verdict::Unchanged),
            o.scope.is_none().then_some(true)
        );
    }
});
