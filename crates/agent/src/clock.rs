//! The time, for everything the agent decides by it (renewal, bundle and
//! voucher validity, OCSP freshness): core's system clock, in one place.

use iotpki_core::clock::{Clock as _, SystemClock};

/// Now, Unix seconds (0 if the system clock is before 1970).
pub fn now() -> i64 {
    SystemClock.now()
}
