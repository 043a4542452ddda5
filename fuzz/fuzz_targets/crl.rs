//! CRLs as a device takes them from a relay or a file (`iotpki agent apply`):
//! checked against a fixed issuer; nothing may panic, and a CRL that passes
//! must agree with its own number.
#![no_main]
use libfuzzer_sys::fuzz_target;

/// A self-signed P-256 CA certificate (seeds/crl/issuer.der, built in).
static ISSUER: &[u8] = include_bytes!("../seeds/crl/issuer.der");

fuzz_target!(|data: &[u8]| {
    let n = iotpki_core::crl::number(data);
    if let Ok(c) = iotpki_core::crl::check(data, ISSUER, 1_800_000_000, 300) {
        assert_eq!(n.ok(), Some(c.number));
        assert!(iotpki_core::crl::issuer(data).is_ok());
        // A device asking about some serials learns exactly which of them are listed.
        let asked: Vec<String> = c.revoked.iter().take(2).cloned().chain(["00".to_string()]).collect();
        let mine = iotpki_core::crl::check_for(data, ISSUER, 1_800_000_000, 300, &asked).unwrap();
        assert_eq!(mine.revoked, c.revoked.iter().filter(|s| asked.contains(s)).cloned().collect::<Vec<_>>());
        assert_eq!((mine.number, mine.this_update, &mine.scope), (c.number, c.this_update, &c.scope));
        assert!(c.next_update > 1_800_000_000);
        // A complete CRL covers every certificate; a partitioned one only those naming its scope.
        assert_eq!(iotpki_core::crl::covers(&c, &[]), c.scope.is_none());
        if let Some(scope) = &c.scope {
            assert!(iotpki_core::crl::covers(&c, scope));
        }
    }
    // The shard paths a relay and the server accept.
    if let Ok(path) = std::str::from_utf8(data) {
        if let Some((ca, s, k)) = iotpki_core::crl::parse_shard_path(path) {
            assert!(k < s && iotpki_core::crl::valid_shard_count(s));
            assert_eq!(iotpki_core::crl::shard_path(ca, s, k), format!("/crl/{path}"));
        }
    }
});
