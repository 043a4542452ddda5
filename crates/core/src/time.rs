//! X.509 times: UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 4.1.2.5).

use std::time::Duration;

use der::asn1::{GeneralizedTime, UtcTime};
use x509_cert::time::Time;

use crate::Error;

/// The 802.1AR / RFC 5280 "no well-defined expiration" value, 9999-12-31T23:59:59Z.
pub const NO_EXPIRY: i64 = 253_402_300_799;

/// First second that must be encoded as GeneralizedTime (2050-01-01T00:00:00Z).
const Y2050: i64 = 2_524_608_000;

/// Encode Unix seconds as an X.509 `Time`, picking the encoding RFC 5280 asks for.
pub fn x509_time(unix: i64) -> Result<Time, Error> {
    let secs = u64::try_from(unix).map_err(|_| Error::Profile(format!("time {unix} is before 1970")))?;
    let d = Duration::from_secs(secs);
    if unix < Y2050 {
        UtcTime::from_unix_duration(d).map(Time::UtcTime).map_err(|e| Error::Profile(format!("time {unix}: {e}")))
    } else {
        GeneralizedTime::from_unix_duration(d)
            .map(Time::GeneralTime)
            .map_err(|e| Error::Profile(format!("time {unix}: {e}")))
    }
}

/// Unix seconds of an X.509 `Time`.
pub fn unix(t: &Time) -> i64 {
    i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
}

/// RFC 3339 form of Unix seconds, for people.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_switches_at_2050() {
        assert!(matches!(x509_time(Y2050 - 1).unwrap(), Time::UtcTime(_)));
        assert!(matches!(x509_time(Y2050).unwrap(), Time::GeneralTime(_)));
        assert!(matches!(x509_time(NO_EXPIRY).unwrap(), Time::GeneralTime(_)));
        assert_eq!(unix(&x509_time(1_700_000_000).unwrap()), 1_700_000_000);
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
