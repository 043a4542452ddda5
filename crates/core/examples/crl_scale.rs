//! A CRL with many revoked entries (issue #6): how long `crl::build` takes and
//! how large the DER is, and what a relying party pays to check it. Then the
//! same entries cut into shards, as a partitioned CRL would carry them.
//!
//! ```sh
//! cargo run --release -p iotpki-core --example crl_scale -- 1000000 [SHARDS=64] [OUT.crl]
//! ```
//!
//! Serials are 16 octets like the authority's (0x01, seconds, 88 random bits);
//! one revocation in ten carries a reasonCode (keyCompromise), the rest are
//! `unspecified` (no entry extension, RFC 5280 5.3.1).

use std::time::Instant;

use iotpki_core::crl::{self, Revoked};
use iotpki_core::keys::{key_identifier, KeyType, Signer, SoftKey};
use iotpki_core::name::NameBuilder;
use iotpki_core::profile::{issue, CertParams, Issuer, Profile};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    use der::Decode;
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1_000_000);
    let shards: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(64).max(1);
    let out = args.next();
    let key = SoftKey::generate(KeyType::EcdsaP256)?;
    let name = NameBuilder::default().organization("Bench")?.common_name("Bench Operational CA")?.build();
    let spki = spki::SubjectPublicKeyInfoOwned::from_der(key.public_key_der())?;
    let kid = key_identifier(&spki);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let issuer = Issuer { subject: &name, key_id: &kid, not_after: now + 10 * 365 * 86_400, signer: &key };
    let ca_cert = issue(
        &CertParams {
            profile: Profile::Root,
            serial: iotpki_core::serial::system_random_serial(now)?.0,
            subject: name.clone(),
            spki,
            not_before: now - 60,
            not_after: now + 10 * 365 * 86_400,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: None,
        },
        &issuer,
    )?
    .der;

    let mut seed = now as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let revoked: Vec<Revoked> = (0..n)
        .map(|i| {
            let at = now - 365 * 86_400 + (i as i64 * 365 * 86_400) / n as i64;
            let issued = at - 86_400;
            Revoked {
                serial: format!("01{:08x}{:06x}{:016x}", issued as u32, rnd() & 0xff_ffff, rnd()),
                at,
                reason: if i % 10 == 0 { 1 } else { 0 },
            }
        })
        .collect();

    let t = Instant::now();
    let der = crl::build(&issuer, 1, now, now + 7 * 86_400, &revoked)?;
    let build = t.elapsed();
    let t = Instant::now();
    let checked = crl::check(&der, &ca_cert, now, 300);
    let check = t.elapsed();
    println!(
        "one CRL, {n} entries: built and signed in {:.0} ms, {} octets ({:.1} MiB, {:.1} octets per entry); crl::check {} in {:.0} ms",
        build.as_secs_f64() * 1000.0,
        der.len(),
        der.len() as f64 / 1_048_576.0,
        der.len() as f64 / n.max(1) as f64,
        match &checked {
            Ok(c) => format!("accepts it ({} serials)", c.revoked.len()),
            Err(e) => format!("refuses it ({e})"),
        },
        check.as_secs_f64() * 1000.0
    );
    if let Some(p) = &out {
        std::fs::write(p, &der)?;
        std::fs::write(format!("{p}.issuer.der"), &ca_cert)?;
    }

    // Shards as the authority cuts them: a certificate's shard is fixed at
    // issuance by its serial (crl::shard_of) and named in its CRL DP URL; each
    // shard's CRL carries a critical issuingDistributionPoint with that URL.
    let count = u32::try_from(shards)?;
    if !crl::valid_shard_count(count) {
        return Err(format!("{shards} shards: give a power of two from 2 to {}", crl::MAX_SHARDS).into());
    }
    let mut parts: Vec<Vec<Revoked>> = vec![Vec::new(); shards];
    for r in &revoked {
        let k = crl::shard_of(&r.serial, count).ok_or("serial is not hex")?;
        parts[k as usize].push(r.clone());
    }
    let t = Instant::now();
    let mut built = Vec::with_capacity(shards);
    for (k, p) in parts.iter().enumerate() {
        let url = format!("http://pki.example{}", crl::shard_path("operational", count, k as u32));
        built.push(crl::build_scoped(&issuer, 1, now, now + 7 * 86_400, p, Some(&url))?);
    }
    let all = t.elapsed();
    // What a device pays for its one shard: crl::check (signature, profile, every entry).
    let t = Instant::now();
    let one = crl::check(&built[0], &ca_cert, now, 300)?;
    let check_one = t.elapsed();
    let mut sizes: Vec<usize> = built.iter().map(Vec::len).collect();
    sizes.sort();
    println!(
        "{shards} shards: all built in {:.0} ms ({:.1} ms each); shard size median {} octets (min {}, max {}); crl::check of one shard ({} serials) {:.1} ms",
        all.as_secs_f64() * 1000.0,
        all.as_secs_f64() * 1000.0 / shards as f64,
        sizes[shards / 2],
        sizes[0],
        sizes[shards - 1],
        one.revoked.len(),
        check_one.as_secs_f64() * 1000.0
    );
    Ok(())
}
