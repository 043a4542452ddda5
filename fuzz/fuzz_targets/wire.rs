//! The JSON bodies a station, agent or CLI reads from the network (and the
//! station's delegation file): whatever parses, serializes back to a body
//! that parses to the same value.
#![no_main]
use iotpki_core::wire;
use libfuzzer_sys::fuzz_target;

fn round_trip<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = wire::from_slice::<T>("fuzz", data) {
        let again: T = wire::from_slice("fuzz", wire::to_string(&v).as_bytes()).unwrap();
        assert_eq!(again, v);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<wire::SyncState>(data);
    round_trip::<wire::SyncOutcome>(data);
    round_trip::<wire::CrlTerms>(data);
    round_trip::<wire::StationBatch>(data);
    round_trip::<wire::TpmChallengeRequest>(data);
    round_trip::<wire::TpmChallenge>(data);
    round_trip::<wire::Delegation>(data);
    round_trip::<wire::CertRecord>(data);
});
