//! Calls every public function of the crate on inputs read at run time, so
//! nothing is optimised away: what `cargo bloat --profile device` and
//! `size` measure (docs/device-core.md, "Code size"). Not a tool.
//!
//! Usage: size FILE... (any files: the results are printed, not judged).

use iotpki_device_core::csr::{self, Signature, Subject};
use iotpki_device_core::{bundle, chain, crl, est, voucher};

fn main() {
    let args: Vec<Vec<u8>> = std::env::args().skip(1).map(|p| std::fs::read(p).unwrap_or_default()).collect();
    let arg = |i: usize| args.get(i).map(Vec::as_slice).unwrap_or_default();
    let now = u64::try_from(args.len()).unwrap_or_default();
    let (a, b, c) = (arg(0), arg(1), arg(2));
    let serial = core::str::from_utf8(c).unwrap_or("SN-0001");
    let r = csr::build(&Subject::Serial(serial), a, |tbs| Ok(Signature::Fixed(tbs[..64.min(tbs.len())].to_vec())));
    println!("{:?}", r.map(|d| d.len()));
    println!("{:?}", csr::build(&Subject::Name(b), a, |tbs| Ok(Signature::Der(tbs.to_vec()))).map(|d| d.len()));
    println!("{:?} {:?}", csr::key_type(a), csr::check_serial(serial));
    println!("{:?}", est::decode_body(a).map(|d| d.len()));
    println!("{:?}", est::parse_certs_only(a).map(|d| d.len()));
    let chain = est::ca_chain(a, b).unwrap_or_default();
    println!("{:?}", est::enroll_answer(b).map(|d| d.len()));
    println!("{:?}", est::check_issued(a, b, &Subject::Serial(serial), &chain, c, now));
    println!("{:?}", chain::verify(a, &chain, b, now, chain::Purpose::ClientAuth));
    match bundle::verify_initial(a, now) {
        Ok(cur) => {
            println!("{:?}", cur.allows_server(serial, serial));
            println!("{:?}", bundle::verify_update(&cur, b, now).map(|u| matches!(u, bundle::Update::Unchanged)));
        }
        Err(e) => println!("{e}"),
    }
    println!("{:?}", bundle::Bundle::decode(c).map(|b| b.content().version));
    println!("{:?}", voucher::verify(a, b, serial, c, now).map(|v| v.owner.len()));
    println!("{:?}", voucher::check_extends(a, b, now));
    println!("{:?}", voucher::decode(c).map(|e| e.len()));
    let last = crl::check(c, b, now).ok().map(|c| c.last);
    println!("{:?}", crl::verify(a, b, now, &[serial], last.as_ref()).map(|v| v == crl::Verdict::Unchanged));
    println!("{:?}", iotpki_device_core::keys::PublicKey::from_spki_der(a).map(|k| k.key_type()));
}
