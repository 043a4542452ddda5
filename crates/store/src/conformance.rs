//! The store's contract as executable checks, independent of the backend:
//! every implementation of [`Store`] runs [`run_all`] in its tests.
//! Each check panics with a message naming what broke.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::audit::sha256_hex;

use crate::{
    Artifact, AuditEvent, BatchProfile, BatchRecord, BatchStatus, Born, CertQuery, CertRecord, CertStatus, Claim,
    DeviceRevocation, ExpiringNoted, ExpiringScan, HandOver, Issuance, ManufacturerRecord, OwnershipStatus,
    Precondition, RevokedCert, StationRecord, StationStatus, Store, StoreError, SyncEntry, SyncOutcome, SyncUpload,
    TokenRecord,
};

static UNIQUE: AtomicU64 = AtomicU64::new(1);

pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}{:016x}{:08x}", UNIQUE.fetch_add(1, Ordering::SeqCst), std::process::id())
}

/// A certificate record with a fresh serial.
pub fn cert(device: &str) -> CertRecord {
    CertRecord {
        serial: unique("5e"),
        ca: "operational".into(),
        profile: "device".into(),
        subject: format!("CN={device}"),
        device_serial: Some(device.into()),
        not_before: 1_000,
        not_after: 2_000,
        issued_at: 1_000,
        spki_sha256: unique("ab"),
        replaces: None,
        replaced_by: None,
        template: None,
        status: CertStatus::Good,
        der: vec![0x30, 0x03, 0x02, 0x01, 0x01],
    }
}

fn event(action: &str, target: &str) -> AuditEvent {
    AuditEvent { at: 1_000, actor: "test".into(), action: action.into(), target: target.into(), detail: String::new() }
}

fn issuance(c: CertRecord, pre: Vec<Precondition>) -> Issuance {
    let target = c.serial.clone();
    Issuance { cert: c, preconditions: pre, audit: event("issue", &target) }
}

fn new_token(store: &dyn Store, device: &str, expires_at: i64) -> String {
    let h = unique("70");
    let t = TokenRecord {
        token_hash: h.clone(),
        device_serial: device.into(),
        created_at: 1_000,
        expires_at,
        used_at: None,
        cert_serial: None,
        template: None,
    };
    store.create_token(t, event("token.create", device)).expect("create token");
    h
}

fn consume(h: &str, device: &str, now: i64) -> Precondition {
    Precondition::ConsumeToken { token_hash: h.into(), device_serial: device.into(), now }
}

fn audit_len(store: &dyn Store) -> u64 {
    store.verify_audit().expect("audit chain verifies").entries
}

/// Run every check; after each, the fleet summaries kept by its writes
/// must equal a rebuild from the registry.
pub fn run_all(store: &(dyn Store + 'static)) {
    issuance_round_trip(store);
    fleet_matches_rebuild(store);
    duplicate_serial_writes_nothing(store);
    fleet_matches_rebuild(store);
    queued_issuances_resolve_as_waited_ones_do(store);
    fleet_matches_rebuild(store);
    token_refusals_write_nothing(store);
    fleet_matches_rebuild(store);
    token_works_once(store);
    fleet_matches_rebuild(store);
    cert_is_good(store);
    fleet_matches_rebuild(store);
    listing_filters(store);
    fleet_matches_rebuild(store);
    concurrent_token_race(store);
    fleet_matches_rebuild(store);
    concurrent_issuance(store);
    fleet_matches_rebuild(store);
    factory_births_and_refusals(store);
    fleet_matches_rebuild(store);
    batch_profiles_round_trip(store);
    fleet_matches_rebuild(store);
    templates_round_trip(store);
    fleet_matches_rebuild(store);
    quota_race(store);
    fleet_matches_rebuild(store);
    clone_race(store);
    fleet_matches_rebuild(store);
    offline_sync(store);
    fleet_matches_rebuild(store);
    revocation(store);
    fleet_matches_rebuild(store);
    templates_and_latest_not_after(store);
    fleet_matches_rebuild(store);
    ownership(store);
    fleet_matches_rebuild(store);
    artifacts(store);
    fleet_matches_rebuild(store);
    voucher_claims_racing_against_one_held_voucher_store_one_and_no_fork(store);
    fleet_matches_rebuild(store);
    renewal_supersedes_once(store);
    fleet_matches_rebuild(store);
    superseding_moves_the_superseded_devices_summary(store);
    fleet_matches_rebuild(store);
    concurrent_renewals_of_one_certificate(store);
    fleet_matches_rebuild(store);
    revoke_device_in_one_transaction(store);
    fleet_matches_rebuild(store);
    revoke_device_races_renewals_and_issuance(store);
    fleet_matches_rebuild(store);
    a_hand_over_is_one_transaction_under_renewals(store);
    fleet_matches_rebuild(store);
    a_commissioning_supersedes_the_devices_other_certificates_but_its_births(store);
    fleet_matches_rebuild(store);
    a_key_is_certified_for_one_device_only(store);
    fleet_matches_rebuild(store);
    blocked_keys_are_refused_on_every_path(store);
    fleet_matches_rebuild(store);
    a_presented_certificate_is_read_as_its_separate_reads_say(store);
    a_key_held_by_other_devices_names_the_oldest_and_a_block_comes_first(store);
    fleet_matches_rebuild(store);
    blocking_revokes_the_keys_certificates_once(store);
    fleet_matches_rebuild(store);
    a_withdrawn_token_enrolls_nothing(store);
    fleet_matches_rebuild(store);
    clones_racing_with_one_key_get_one_certificate(store);
    a_console_link_opens_one_session_once(store);
    fleet_matches_rebuild(store);
    fleet_matches_rebuild(store);
    fleet_overview_counts_every_state(store);
    fleet_matches_rebuild(store);
    audit_search_pages_and_filters(store);
    fleet_matches_rebuild(store);
    events_are_recorded_with_their_change_and_only_then(store);
    webhook_cursors_are_per_webhook_and_leased_to_one_owner(store);
    expiring_certificates_are_announced_once_per_threshold_in_pages(store);
    expiring_counts_current_certificates_in_the_window(store);
    fleet_matches_rebuild(store);
    health_probe_and_writer_stats(store);
    store.verify_audit().expect("audit chain verifies at the end");
}

/// What goes in comes out, and the audit chain grows by one.
pub fn issuance_round_trip(store: &dyn Store) {
    let before = audit_len(store);
    let c = cert("RT-1");
    store.record_issuance(issuance(c.clone(), vec![])).expect("issue");
    assert_eq!(store.certificate(&c.serial).expect("read"), Some(c.clone()), "record read back identical");
    assert_eq!(audit_len(store), before + 1, "one audit entry per issuance");
    let last = store.audit_entries(before + 1, 10).expect("entries");
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].event.target, c.serial);
}

/// A duplicate serial is refused by constraint; the token it would have consumed is not consumed.
pub fn duplicate_serial_writes_nothing(store: &dyn Store) {
    let c = cert("DUP-1");
    store.record_issuance(issuance(c.clone(), vec![])).expect("first");
    let h = new_token(store, "DUP-1", 5_000);
    let (count, audit) = (store.count_certificates().expect("count"), audit_len(store));
    let mut again = cert("DUP-1");
    again.serial = c.serial.clone();
    let err = store.record_issuance(issuance(again, vec![consume(&h, "DUP-1", 1_500)])).expect_err("duplicate");
    assert_eq!(err, StoreError::DuplicateSerial { serial: c.serial.clone() });
    assert_eq!(store.count_certificates().expect("count"), count, "nothing inserted");
    assert_eq!(audit_len(store), audit, "no audit entry for the rolled-back issuance");
    assert_eq!(store.token(&h).expect("token").expect("exists").used_at, None, "token not consumed");
}

/// Issuances queued from many threads at once, as a server's requests
/// queue them when its threads are scarce: each resolves once committed and
/// is readable then; one whose serial is taken resolves refused, and writes
/// nothing (the token it would have spent stays unspent).
pub fn queued_issuances_resolve_as_waited_ones_do(store: &dyn Store) {
    let taken = cert("QD-0");
    store.record_issuance(issuance(taken.clone(), vec![])).expect("first");
    let h = new_token(store, "QD-X", 5_000);
    let (count, audit) = (store.count_certificates().expect("count"), audit_len(store));
    let certs: Vec<CertRecord> = (1..=24).map(|i| cert(&format!("QD-{i}"))).collect();
    std::thread::scope(|s| {
        let queued: Vec<_> = certs
            .iter()
            .map(|c| s.spawn(move || store.record_issuance_queued(issuance(c.clone(), vec![])).wait()))
            .collect();
        let mut dup = cert("QD-X");
        dup.serial = taken.serial.clone();
        let refused = s.spawn(|| store.record_issuance_queued(issuance(dup, vec![consume(&h, "QD-X", 1_500)])).wait());
        for q in queued {
            q.join().expect("thread").expect("a queued issuance is recorded");
        }
        let err = refused.join().expect("thread").expect_err("a taken serial");
        assert_eq!(err, StoreError::DuplicateSerial { serial: taken.serial.clone() });
    });
    for c in &certs {
        assert_eq!(store.certificate(&c.serial).expect("read").as_ref(), Some(c), "readable once resolved");
    }
    assert_eq!(store.count_certificates().expect("count"), count + 24);
    assert_eq!(audit_len(store), audit + 24, "one audit entry per recorded issuance, none for the refused one");
    assert_eq!(store.token(&h).expect("token").expect("exists").used_at, None, "token not consumed");
}

/// Unknown, wrong-serial, used and expired tokens: refused, nothing written.
pub fn token_refusals_write_nothing(store: &dyn Store) {
    let h = new_token(store, "TK-1", 2_000);
    let cases = [
        (consume("no-such-token", "TK-1", 1_500), StoreError::TokenUnknown),
        (consume(&h, "TK-2", 1_500), StoreError::TokenWrongSerial),
        (consume(&h, "TK-1", 2_000), StoreError::TokenExpired { expires_at: 2_000 }),
    ];
    for (pre, want) in cases {
        let (count, audit) = (store.count_certificates().expect("count"), audit_len(store));
        let err = store.record_issuance(issuance(cert("TK-1"), vec![pre])).expect_err("refused");
        assert_eq!(err, want);
        assert_eq!(store.count_certificates().expect("count"), count, "{want}: nothing inserted");
        assert_eq!(audit_len(store), audit, "{want}: no audit entry");
        assert_eq!(store.token(&h).expect("token").expect("exists").used_at, None, "{want}: token unconsumed");
    }
    let t = TokenRecord {
        token_hash: h.clone(),
        device_serial: "TK-1".into(),
        created_at: 1,
        expires_at: 2,
        used_at: None,
        cert_serial: None,
        template: None,
    };
    assert_eq!(store.create_token(t, event("token.create", "TK-1")), Err(StoreError::TokenExists));
}

/// A token works exactly once.
pub fn token_works_once(store: &dyn Store) {
    let h = new_token(store, "ONCE-1", 5_000);
    let c = cert("ONCE-1");
    store.record_issuance(issuance(c.clone(), vec![consume(&h, "ONCE-1", 1_500)])).expect("first use");
    let t = store.token(&h).expect("token").expect("exists");
    assert_eq!(t.used_at, Some(1_500));
    assert_eq!(t.cert_serial, Some(c.serial), "the token remembers its certificate");
    let err = store.record_issuance(issuance(cert("ONCE-1"), vec![consume(&h, "ONCE-1", 1_600)])).expect_err("reuse");
    assert_eq!(err, StoreError::TokenUsed { used_at: 1_500 });
}

/// Renewal guard: the replaced certificate must exist and be good.
pub fn cert_is_good(store: &dyn Store) {
    let good = cert("CG-1");
    store.record_issuance(issuance(good.clone(), vec![])).expect("good");
    let mut revoked = cert("CG-1");
    revoked.status = CertStatus::Revoked { at: 1_200, reason: 1 };
    store.record_issuance(issuance(revoked.clone(), vec![])).expect("revoked");
    assert_eq!(store.certificate(&revoked.serial).expect("read").expect("there").status, revoked.status);
    let guard = |s: &str| vec![Precondition::CertIsGood { serial: s.into() }];
    store.record_issuance(issuance(cert("CG-1"), guard(&good.serial))).expect("renewal of a good cert");
    assert_eq!(
        store.record_issuance(issuance(cert("CG-1"), guard("00"))),
        Err(StoreError::CertUnknown { serial: "00".into() })
    );
    assert_eq!(
        store.record_issuance(issuance(cert("CG-1"), guard(&revoked.serial))),
        Err(StoreError::CertRevoked { serial: revoked.serial.clone() })
    );
}

/// Filters and limits.
pub fn listing_filters(store: &dyn Store) {
    let dev = unique("LS-");
    for i in 0..3 {
        let mut c = cert(&dev);
        c.issued_at = 10_000 + i;
        c.not_after = 20_000 + i * 100;
        c.ca = if i == 2 { "manufacturing".into() } else { "operational".into() };
        store.record_issuance(issuance(c, vec![])).expect("issue");
    }
    let q = |ca: Option<&str>, exp: Option<i64>, limit: Option<u32>| CertQuery {
        device_serial: Some(dev.clone()),
        ca: ca.map(str::to_string),
        expiring_before: exp,
        expiring_after: None,
        limit,
        profile: None,
    };
    let all = store.list_certificates(&q(None, None, None)).expect("list");
    assert_eq!(all.len(), 3);
    assert!(all.windows(2).all(|w| w[0].issued_at >= w[1].issued_at), "newest first");
    assert_eq!(store.list_certificates(&q(Some("manufacturing"), None, None)).expect("list").len(), 1);
    assert_eq!(store.list_certificates(&q(None, Some(20_100), None)).expect("list").len(), 2);
    let newest = store.list_certificates(&q(None, None, Some(1))).expect("list");
    assert_eq!(newest.iter().map(|c| c.issued_at).collect::<Vec<_>>(), vec![10_002], "a limit keeps the newest");
    // Ties on issuedAt: by serial, with and without a limit.
    let tied = unique("LT-");
    let mut serials = Vec::new();
    for _ in 0..4 {
        let mut c = cert(&tied);
        c.issued_at = 30_000;
        serials.push(c.serial.clone());
        store.record_issuance(issuance(c, vec![])).expect("issue");
    }
    serials.sort();
    let tq = |limit| CertQuery { device_serial: Some(tied.clone()), limit, ..Default::default() };
    let got: Vec<String> = store.list_certificates(&tq(None)).expect("list").into_iter().map(|c| c.serial).collect();
    assert_eq!(got, serials);
    let got: Vec<String> = store.list_certificates(&tq(Some(2))).expect("list").into_iter().map(|c| c.serial).collect();
    assert_eq!(got, serials[..2]);
    // A window: notAfter in [20_050, 20_200] is only the last two (20_100, 20_200).
    let window = CertQuery { expiring_after: Some(20_050), ..q(None, Some(20_200), None) };
    let got = store.list_certificates(&window).expect("list");
    assert_eq!(got.iter().map(|c| c.not_after).collect::<Vec<_>>(), vec![20_200, 20_100]);
    // Both filters and a limit together, with the device filter off: the window
    // still holds (other tests' certificates may fall in it, never outside it).
    let wide = CertQuery { expiring_after: Some(20_050), expiring_before: Some(20_200), ..Default::default() };
    let got = store.list_certificates(&wide).expect("list");
    assert!(got.iter().all(|c| (20_050..=20_200).contains(&c.not_after)), "{got:?}");
    assert!(got.iter().filter(|c| c.device_serial.as_deref() == Some(dev.as_str())).count() == 2);
    let by_profile = |p: &str| CertQuery { profile: Some(p.into()), ..q(None, None, None) };
    assert_eq!(store.list_certificates(&by_profile("device")).expect("list").len(), 3);
    assert!(store.list_certificates(&by_profile("admin")).expect("list").is_empty());
}

/// 16 threads race for one token: exactly one wins.
pub fn concurrent_token_race(store: &(dyn Store + 'static)) {
    let h = new_token(store, "RACE-1", 5_000);
    let before = store.count_certificates().expect("count");
    let results: Vec<Result<(), StoreError>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16)
            .map(|_| {
                let h = h.clone();
                s.spawn(move || store.record_issuance(issuance(cert("RACE-1"), vec![consume(&h, "RACE-1", 1_500)])))
            })
            .collect();
        hs.into_iter().map(|j| j.join().expect("thread")).collect()
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "exactly one winner: {results:?}");
    assert!(results.iter().all(|r| matches!(r, Ok(()) | Err(StoreError::TokenUsed { .. }))), "{results:?}");
    assert_eq!(store.count_certificates().expect("count"), before + 1);
}

/// 8 threads x 200 issuances: all recorded, the chain has exactly that many more entries.
pub fn concurrent_issuance(store: &(dyn Store + 'static)) {
    let before = store.count_certificates().expect("count");
    let audit = audit_len(store);
    std::thread::scope(|s| {
        for t in 0..8 {
            s.spawn(move || {
                for _ in 0..200 {
                    store.record_issuance(issuance(cert(&format!("CC-{t}")), vec![])).expect("issue");
                }
            });
        }
    });
    assert_eq!(store.count_certificates().expect("count"), before + 1600);
    assert_eq!(audit_len(store), audit + 1600, "one entry each, no gaps");
}

/// A batch `id` of `quota` over `serials`, open from 0 until 10_000.
pub fn batch(store: &dyn Store, id: &str, quota: u64, serials: &[String]) {
    batch_of(store, id, quota, serials, BatchProfile::Device);
}

/// [`batch`] with a profile (a Matter DAC batch's ids).
fn batch_of(store: &dyn Store, id: &str, quota: u64, serials: &[String], profile: BatchProfile) {
    let b = BatchRecord {
        id: id.into(),
        product: "widget".into(),
        quota,
        issued: 0,
        refused: 0,
        flagged: 0,
        valid_from: 0,
        valid_until: 10_000,
        status: BatchStatus::Open,
        created_at: 1,
        allowlist: 0,
        profile,
        template: None,
        tpm_attestation: false,
    };
    store.create_batch(b, serials.to_vec(), event("batch.create", id)).expect("create batch");
}

/// A batch's profile and Matter ids are kept as given and read back by
/// `batch` and `list_batches`; a batch made without one is a device batch.
pub fn batch_profiles_round_trip(store: &dyn Store) {
    let plain = unique("BP-");
    batch(store, &plain, 1, &[format!("{plain}-0")]);
    assert_eq!(store.batch(&plain).expect("read").expect("exists").profile, BatchProfile::Device);
    let matter = unique("BM-");
    let profile = BatchProfile::MatterDac { vendor_id: 0xFFF1, product_id: 0x8000 };
    batch_of(store, &matter, 1, &[format!("{matter}-0")], profile);
    assert_eq!(store.batch(&matter).expect("read").expect("exists").profile, profile);
    let listed = store.list_batches().expect("list");
    assert_eq!(listed.iter().find(|b| b.id == matter).expect("listed").profile, profile);
    assert_eq!(listed.iter().find(|b| b.id == plain).expect("listed").profile, BatchProfile::Device);
    // The largest ids survive the round trip (no sign or width trouble on either backend).
    let top = unique("BT-");
    let profile = BatchProfile::MatterDac { vendor_id: 0xFFF4, product_id: 0xFFFF };
    batch_of(store, &top, 1, &[format!("{top}-0")], profile);
    assert_eq!(store.batch(&top).expect("read").expect("exists").profile, profile);
}

/// The certificate template a batch or a token names is kept as given and
/// read back (`batch`, `list_batches`, `token`); one made without names none.
pub fn templates_round_trip(store: &dyn Store) {
    let b = unique("BTPL-");
    let rec = BatchRecord {
        id: b.clone(),
        product: "thermo".into(),
        quota: 1,
        issued: 0,
        refused: 0,
        flagged: 0,
        valid_from: 0,
        valid_until: 10_000,
        status: BatchStatus::Open,
        created_at: 1,
        allowlist: 0,
        profile: BatchProfile::Device,
        template: Some("sensor-v2".into()),
        tpm_attestation: true,
    };
    store.create_batch(rec, vec![format!("{b}-0")], event("batch.create", &b)).expect("create batch");
    assert_eq!(store.batch(&b).expect("read").expect("exists").template.as_deref(), Some("sensor-v2"));
    let listed = store.list_batches().expect("list");
    assert_eq!(listed.iter().find(|x| x.id == b).expect("listed").template.as_deref(), Some("sensor-v2"));
    // The TPM-attestation requirement is kept with the batch, like its template.
    assert!(store.batch(&b).expect("read").expect("exists").tpm_attestation);
    assert!(listed.iter().find(|x| x.id == b).expect("listed").tpm_attestation);
    let plain = unique("BNT-");
    batch(store, &plain, 1, &[format!("{plain}-0")]);
    assert_eq!(store.batch(&plain).expect("read").expect("exists").template, None);
    assert!(!store.batch(&plain).expect("read").expect("exists").tpm_attestation);
    let h = unique("7e");
    let t = TokenRecord {
        token_hash: h.clone(),
        device_serial: "TPL-1".into(),
        created_at: 1_000,
        expires_at: 2_000,
        used_at: None,
        cert_serial: None,
        template: Some("sensor-v2".into()),
    };
    store.create_token(t.clone(), event("token.create", "TPL-1")).expect("create token");
    assert_eq!(store.token(&h).expect("read"), Some(t));
    let plain = new_token(store, "TPL-2", 2_000);
    assert_eq!(store.token(&plain).expect("read").expect("exists").template, None);
}

/// A station `name` authorised for `batches`.
pub fn station(store: &dyn Store, name: &str, batches: &[&str]) -> CertRecord {
    let mut c = cert(name);
    c.profile = "station".into();
    c.device_serial = None;
    let st = StationRecord {
        name: name.into(),
        cert_serial: c.serial.clone(),
        batches: batches.iter().map(|b| b.to_string()).collect(),
        status: StationStatus::Active,
        created_at: 1,
    };
    store.add_station(st, c.clone(), event("station.add", name)).expect("add station");
    c
}

pub(crate) fn birth(batch: &str, station: &str, serial: &str, now: i64) -> Vec<Precondition> {
    vec![Precondition::Birth { batch: batch.into(), station: station.into(), device_serial: serial.into(), now }]
}

/// Batches and stations: reads, the happy path, and every refusal writing nothing.
pub fn factory_births_and_refusals(store: &dyn Store) {
    let b = unique("FB-");
    let other = unique("FO-");
    let serials: Vec<String> = (0..3).map(|i| format!("{b}-{i}")).collect();
    batch(store, &b, 2, &serials);
    batch(store, &other, 5, &[format!("{other}-0")]);
    let dup = BatchRecord { id: b.clone(), ..store.batch(&b).expect("read").expect("exists") };
    assert_eq!(store.create_batch(dup, vec![], event("x", "y")), Err(StoreError::BatchExists { batch: b.clone() }));
    let got = store.batch(&b).expect("read").expect("exists");
    assert_eq!((got.quota, got.issued, got.allowlist, got.status), (2, 0, 3, BatchStatus::Open));
    let st = unique("ST-");
    let st_cert = station(store, &st, &[&b]);
    assert_eq!(store.station(&st).expect("read").expect("exists").batches, vec![b.clone()]);
    assert_eq!(store.station_by_cert(&st_cert.serial).expect("read").expect("exists").name, st);
    assert_eq!(store.certificate(&st_cert.serial).expect("read").expect("recorded").profile, "station");
    let unknown_batch = StationRecord {
        name: unique("SX-"),
        cert_serial: unique("5e"),
        batches: vec!["no-such-batch".into()],
        status: StationStatus::Active,
        created_at: 1,
    };
    assert_eq!(
        store.add_station(unknown_batch, cert("SX"), event("station.add", "SX")),
        Err(StoreError::BatchUnknown { batch: "no-such-batch".into() })
    );

    let ok = |serial: &str| store.record_issuance(issuance(cert(serial), birth(&b, &st, serial, 100)));
    assert_eq!(store.born(&serials[0]).expect("read"), None);
    let first = cert(&serials[0]);
    let first_serial = first.serial.clone();
    store.record_issuance(issuance(first, birth(&b, &st, &serials[0], 100))).expect("first birth");
    assert_eq!(
        store.born(&serials[0]).expect("read"),
        Some(Born { cert_serial: first_serial, batch: b.clone(), station: st.clone(), born_at: 100 })
    );
    assert_eq!(store.unborn_serials(&b, 10).expect("unborn"), serials[1..].to_vec());

    let refusals: Vec<(Vec<Precondition>, StoreError)> = vec![
        (birth(&b, "nobody", &serials[1], 100), StoreError::StationUnknown { station: "nobody".into() }),
        (birth("nothing", &st, &serials[1], 100), StoreError::BatchUnknown { batch: "nothing".into() }),
        (
            birth(&other, &st, &format!("{other}-0"), 100),
            StoreError::StationNotAuthorized { station: st.clone(), batch: other.clone() },
        ),
        (
            birth(&b, &st, &serials[1], 10_000),
            StoreError::BatchOutsideWindow { batch: b.clone(), from: 0, until: 10_000 },
        ),
        (
            birth(&b, &st, "not-listed", 100),
            StoreError::SerialNotAllowed { batch: b.clone(), serial: "not-listed".into() },
        ),
        (birth(&b, &st, &serials[0], 100), StoreError::AlreadyBorn { serial: serials[0].clone(), cert: String::new() }),
    ];
    for (pre, want) in refusals {
        let before = (store.batch(&b).expect("read"), store.count_certificates().expect("count"), audit_len(store));
        let err = store.record_issuance(issuance(cert("R"), pre)).expect_err("refused");
        match (&err, &want) {
            (StoreError::AlreadyBorn { serial: a, .. }, StoreError::AlreadyBorn { serial: w, .. }) => assert_eq!(a, w),
            _ => assert_eq!(err, want),
        }
        let after = (store.batch(&b).expect("read"), store.count_certificates().expect("count"), audit_len(store));
        assert_eq!(before, after, "{want}: nothing written");
    }
    ok(&serials[1]).expect("second birth");
    assert_eq!(ok(&serials[2]), Err(StoreError::QuotaExhausted { batch: b.clone(), quota: 2 }), "quota of 2 used up");
    let before = store.batch(&b).expect("read").expect("exists").refused;
    store.record_refusal(Some(&b), event("refuse.birth", "x")).expect("refusal");
    assert_eq!(store.batch(&b).expect("read").expect("exists").refused, before + 1);

    store.close_batch(&other, event("batch.close", &other)).expect("close");
    assert_eq!(store.batch(&other).expect("read").expect("exists").status, BatchStatus::Closed);
    let st2 = unique("ST-");
    station(store, &st2, &[&other]);
    assert_eq!(
        store.record_issuance(issuance(cert("C"), birth(&other, &st2, &format!("{other}-0"), 100))),
        Err(StoreError::BatchClosed { batch: other.clone() })
    );
    store.revoke_station(&st2, 200, event("station.revoke", &st2)).expect("revoke");
    assert!(matches!(store.station(&st2).expect("read").expect("exists").status, StationStatus::Revoked { at: 200 }));
    let st2_cert = store.station(&st2).expect("read").expect("exists").cert_serial;
    assert!(matches!(
        store.certificate(&st2_cert).expect("read").expect("exists").status,
        CertStatus::Revoked { reason: 5, .. }
    ));
    assert_eq!(
        store.record_issuance(issuance(cert("C"), birth(&other, &st2, &format!("{other}-0"), 100))),
        Err(StoreError::StationRevoked { station: st2.clone() })
    );
    assert_eq!(store.revoke_station(&st2, 300, event("x", "y")), Err(StoreError::StationRevoked { station: st2 }));

    // An active station whose certificate was revoked alone, or whose key was
    // blocked (the certificate spared), makes nothing: its birth is refused in
    // the transaction that would record it, and writes nothing.
    let (st3, st4) = (unique("ST-"), unique("ST-"));
    let st3_cert = station(store, &st3, &[&other]);
    let st4_cert = station(store, &st4, &[&other]);
    store.revoke(&st3_cert.serial, 1, 200, event("revoke", &st3_cert.serial)).expect("revoke");
    let block = vec![blocked(&st4_cert.spki_sha256)];
    store.block_keys(key_block(block, vec![], true, vec!["station".into()])).expect("block");
    assert_eq!(store.certificate(&st4_cert.serial).expect("read").expect("recorded").status, CertStatus::Good);
    let why = format!("its key {} is blocked: found in fw.bin", st4_cert.spki_sha256);
    for (name, serial, why) in [(&st3, &st3_cert.serial, "it is revoked".to_string()), (&st4, &st4_cert.serial, why)] {
        let before = (store.batch(&other).expect("read"), store.count_certificates().expect("count"), audit_len(store));
        assert_eq!(
            store.record_issuance(issuance(cert("C"), birth(&other, name, &format!("{other}-0"), 100))),
            Err(StoreError::StationCertificate { station: name.clone(), serial: serial.clone(), why })
        );
        let after = (store.batch(&other).expect("read"), store.count_certificates().expect("count"), audit_len(store));
        assert_eq!(before, after, "nothing written");
    }
}

/// 40 requests with distinct allowed serials race for a quota of 5: exactly 5 are born.
pub fn quota_race(store: &(dyn Store + 'static)) {
    let b = unique("QR-");
    let serials: Vec<String> = (0..40).map(|i| format!("{b}-{i}")).collect();
    batch(store, &b, 5, &serials);
    let st = unique("ST-");
    station(store, &st, &[&b]);
    let results: Vec<Result<(), StoreError>> = std::thread::scope(|s| {
        let hs: Vec<_> = serials
            .iter()
            .map(|serial| {
                let (b, st) = (b.clone(), st.clone());
                s.spawn(move || store.record_issuance(issuance(cert(serial), birth(&b, &st, serial, 100))))
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5, "exactly the quota: {results:?}");
    assert!(results.iter().all(|r| matches!(r, Ok(()) | Err(StoreError::QuotaExhausted { .. }))), "{results:?}");
    let got = store.batch(&b).expect("read").expect("exists");
    assert_eq!(got.issued, 5);
    assert_eq!(store.unborn_serials(&b, 100).expect("unborn").len(), 35);
}

/// 16 requests for one serial race: one birth, the others are clones refused.
pub fn clone_race(store: &(dyn Store + 'static)) {
    let b = unique("CR-");
    let serial = format!("{b}-0");
    batch(store, &b, 100, std::slice::from_ref(&serial));
    let st = unique("ST-");
    station(store, &st, &[&b]);
    let results: Vec<Result<(), StoreError>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16)
            .map(|_| {
                let (b, st, serial) = (b.clone(), st.clone(), serial.clone());
                s.spawn(move || store.record_issuance(issuance(cert(&serial), birth(&b, &st, &serial, 100))))
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "one birth: {results:?}");
    assert!(results.iter().all(|r| matches!(r, Ok(()) | Err(StoreError::AlreadyBorn { .. }))), "{results:?}");
    assert_eq!(store.batch(&b).expect("read").expect("exists").issued, 1);
}

/// Delegations and production record uploads: births, the three flags, replays.
pub fn offline_sync(store: &dyn Store) {
    let b = unique("OB-");
    let listed: Vec<String> = (0..3).map(|i| format!("{b}-{i}")).collect();
    batch(store, &b, 2, &listed);
    let st = unique("ST-");
    let st_cert = station(store, &st, &[&b]);
    let mut ca = cert("delegate");
    ca.profile = "delegated-ca".into();
    ca.device_serial = None;
    store.add_delegation(&st, &b, ca.clone(), event("station.delegate", &st)).expect("delegate");
    assert_eq!(store.delegation(&st, &b).expect("read"), Some(ca.serial.clone()));
    let mut again = cert("delegate");
    again.device_serial = None;
    assert_eq!(
        store.add_delegation(&st, &b, again, event("x", "y")),
        Err(StoreError::DelegationExists { station: st.clone(), batch: b.clone() })
    );
    let other = unique("OX-");
    batch(store, &other, 1, &[format!("{other}-0")]);
    let mut foreign = cert("delegate");
    foreign.device_serial = None;
    assert_eq!(
        store.add_delegation(&st, &other, foreign, event("x", "y")),
        Err(StoreError::StationNotAuthorized { station: st.clone(), batch: other.clone() }),
        "a station gets a delegated CA only for its own batches"
    );
    assert_eq!(store.delegation(&st, &other).expect("read"), None);
    assert_eq!(store.sync_state(&st, &b).expect("state"), (0, crate::GENESIS_HASH.to_string()));

    let entry = |serial: &str| SyncEntry {
        device_serial: serial.into(),
        cert: cert(serial),
        outside_delegation: false,
        key_not_canonical: false,
    };
    let entries = vec![entry(&listed[0]), entry(&listed[0]), entry("NOT-LISTED"), entry(&listed[1]), entry(&listed[2])];
    let serials: Vec<String> = entries.iter().map(|e| e.cert.serial.clone()).collect();
    let upload = |from: u64, prev: &str, to: u64, head: &str, entries: Vec<SyncEntry>| SyncUpload {
        station: st.clone(),
        batch: b.clone(),
        from_seq: from,
        from_head: prev.into(),
        to_seq: to,
        to_head: head.into(),
        entries,
        now: 500,
        audit: event("factory.sync", &b),
    };
    let out = store.apply_sync(upload(1, crate::GENESIS_HASH, 5, "h5", entries.clone())).expect("sync");
    assert_eq!(
        out,
        SyncOutcome {
            born: 2,
            flagged: vec![
                (serials[1].clone(), crate::Flag::Clone),
                (serials[2].clone(), crate::Flag::OffAllowlist),
                (serials[4].clone(), crate::Flag::Overbuild),
            ],
        }
    );
    let got = store.batch(&b).expect("read").expect("exists");
    assert_eq!((got.issued, got.flagged), (2, 3));
    assert_eq!(store.flagged(&b).expect("flags").len(), 3);
    for (i, serial) in serials.iter().enumerate() {
        let rec = store.certificate(serial).expect("read").expect("every certificate is recorded");
        let flagged = [1, 2, 4].contains(&i);
        assert_eq!(matches!(rec.status, CertStatus::Revoked { .. }), flagged, "entry {i}");
    }
    assert_eq!(store.sync_state(&st, &b).expect("state"), (5, "h5".to_string()));

    // A replay (or an upload that skips ahead) is refused and writes nothing.
    let (certs, audit) = (store.count_certificates().expect("count"), audit_len(store));
    let fresh = vec![entry(&listed[2])];
    for (from, prev) in [(1, crate::GENESIS_HASH), (5, "h4"), (7, "h6"), (6, "wrong")] {
        let err = store.apply_sync(upload(from, prev, from, "hx", fresh.clone())).expect_err("out of order");
        assert_eq!(err, StoreError::SyncOutOfOrder { expected_seq: 6, got_seq: from });
    }
    assert_eq!((store.count_certificates().expect("count"), audit_len(store)), (certs, audit));
    // The next entry continues the chain.
    let out = store.apply_sync(upload(6, "h5", 6, "h6", fresh)).expect("continue");
    assert_eq!(out.flagged.len(), 1, "the quota is used up: overbuild");
    // A serial on the batch's allowlist but outside the delegated CA's permitted names: off-allowlist.
    let outside = SyncEntry { outside_delegation: true, ..entry(&listed[2]) };
    let out = store.apply_sync(upload(7, "h6", 7, "h7", vec![outside.clone()])).expect("continue");
    assert_eq!(out.flagged, vec![(outside.cert.serial.clone(), crate::Flag::OffAllowlist)]);

    // A station whose certificate was revoked, or which was revoked, after it
    // was let in: its upload is refused in the transaction that would apply
    // it, and writes nothing.
    store.revoke(&st_cert.serial, 1, 600, event("revoke", &st_cert.serial)).expect("revoke");
    let (certs, audit) = (store.count_certificates().expect("count"), audit_len(store));
    let late = vec![entry(&format!("{b}-late"))];
    let why = "it is revoked".to_string();
    assert_eq!(
        store.apply_sync(upload(8, "h7", 8, "h8", late.clone())),
        Err(StoreError::StationCertificate { station: st.clone(), serial: st_cert.serial.clone(), why })
    );
    assert_eq!((store.count_certificates().expect("count"), audit_len(store)), (certs, audit));
    store.revoke_station(&st, 700, event("station.revoke", &st)).expect("revoke station");
    let (certs, audit) = (store.count_certificates().expect("count"), audit_len(store));
    assert_eq!(
        store.apply_sync(upload(8, "h7", 8, "h8", late)),
        Err(StoreError::StationRevoked { station: st.clone() })
    );
    assert_eq!((store.count_certificates().expect("count"), audit_len(store)), (certs, audit));
    assert_eq!(store.sync_state(&st, &b).expect("state"), (7, "h7".to_string()));
}

/// Revocation: once, of a known certificate; listed per CA; CRL numbers only grow.
/// A certificate's template round-trips; a CA's latest notAfter counts its
/// good certificates only.
pub fn templates_and_latest_not_after(store: &dyn Store) {
    let ca = unique("CA-");
    assert_eq!(store.latest_not_after(&ca).expect("read"), None, "a CA that issued nothing");
    let mut a = cert("LN-1");
    (a.ca, a.not_after, a.template) = (ca.clone(), 5_000, Some("sensor".into()));
    let mut b = cert("LN-2");
    (b.ca, b.not_after) = (ca.clone(), 9_000);
    let mut other = cert("LN-3");
    (other.ca, other.not_after) = (unique("CA-"), 20_000);
    for c in [&a, &b, &other] {
        store.record_issuance(issuance(c.clone(), vec![])).expect("issue");
    }
    assert_eq!(store.certificate(&a.serial).expect("read").expect("there").template.as_deref(), Some("sensor"));
    assert_eq!(store.certificate(&b.serial).expect("read").expect("there").template, None);
    assert_eq!(store.latest_not_after(&ca).expect("read"), Some(9_000));
    store.revoke(&b.serial, 1, 1_234, event("revoke", &b.serial)).expect("revoke");
    assert_eq!(store.latest_not_after(&ca).expect("read"), Some(5_000), "a revoked certificate needs no CA");
}

pub fn revocation(store: &dyn Store) {
    let ca = unique("CA-");
    let mut c = cert("RV-1");
    c.ca = ca.clone();
    store.record_issuance(issuance(c.clone(), vec![])).expect("issue");
    assert_eq!(store.revocation_mark(&ca).expect("mark"), (0, 0));
    store.revoke(&c.serial, 1, 1_234, event("revoke", &c.serial)).expect("revoke");
    assert_eq!(
        store.certificate(&c.serial).expect("read").expect("there").status,
        CertStatus::Revoked { at: 1_234, reason: 1 }
    );
    assert_eq!(
        store.revoke(&c.serial, 1, 1_300, event("revoke", "x")),
        Err(StoreError::CertRevoked { serial: c.serial.clone() })
    );
    assert_eq!(
        store.revoke("00", 1, 1_300, event("revoke", "x")),
        Err(StoreError::CertUnknown { serial: "00".into() })
    );
    assert_eq!(
        store.revoked(&ca).expect("list"),
        vec![RevokedCert { serial: c.serial.clone(), revoked_at: 1_234, reason: 1, not_after: c.not_after }]
    );
    assert_eq!(store.revocation_mark(&ca).expect("mark"), (1, 1_234));
    let a = store.next_crl_number(&ca, event("crl", &ca)).expect("number");
    let b = store.next_crl_number(&ca, event("crl", &ca)).expect("number");
    assert_eq!((a, b), (1, 2));
}

/// Manufacturers are unique by name and by key; claims are idempotent; an
/// issuance that needs ownership passes only while the device is owned, and a
/// refused one writes nothing.
pub fn ownership(store: &dyn Store) {
    let m = ManufacturerRecord {
        name: unique("mfg-"),
        cert_der: vec![0x30, 0x00],
        spki_sha256: unique("f0"),
        added_at: 1_000,
    };
    store.add_manufacturer(m.clone(), event("trust.add", &m.name)).expect("add manufacturer");
    assert!(store.manufacturers().expect("list").contains(&m));
    let before = audit_len(store);
    let same_key = ManufacturerRecord { name: unique("mfg-"), ..m.clone() };
    assert!(
        matches!(store.add_manufacturer(same_key, event("trust.add", "x")), Err(StoreError::ManufacturerExists { .. })),
        "the same key twice is refused"
    );
    let same_name = ManufacturerRecord { spki_sha256: unique("f0"), ..m.clone() };
    assert!(matches!(
        store.add_manufacturer(same_name, event("trust.add", "x")),
        Err(StoreError::ManufacturerExists { .. })
    ));
    assert_eq!(audit_len(store), before, "refused additions write nothing");

    let (a, b) = (unique("OWN-"), unique("OWN-"));
    let c = cert(&a);
    assert!(matches!(
        store.record_issuance(issuance(c.clone(), vec![Precondition::Owned { device_serial: a.clone() }])),
        Err(StoreError::NotOwned { .. })
    ));
    assert_eq!(store.certificate(&c.serial).expect("read"), None, "nothing recorded for a device not owned");
    let bound = |s: &str, birth: &str| Claim {
        device_serial: s.to_string(),
        manufacturer_spki: "ab".repeat(32),
        birth_sha256: birth.repeat(32),
    };
    assert_eq!(
        store
            .claim_devices(vec![bound(&a, "a1"), bound(&b, "b1")], "claim", 1_000, event("claim", "2"))
            .expect("claim"),
        2
    );
    assert_eq!(
        store.claim_devices(vec![bound(&a, "a1")], "claim", 2_000, event("claim", "1")).expect("claim again"),
        0
    );
    let o = store.ownership(&a).expect("read").expect("owned");
    assert_eq!((o.status, o.since, o.via.as_str()), (OwnershipStatus::Owned, 1_000, "claim"));
    assert_eq!((o.birth_sha256, o.manufacturer_spki), (Some("a1".repeat(32)), Some("ab".repeat(32))));
    // Another birth for a claimed serial: the whole claim is refused, the new serial in it too.
    let (fresh, audit_before) = (unique("OWN-"), audit_len(store));
    assert!(matches!(
        store.claim_devices(vec![bound(&fresh, "c1"), bound(&a, "ff")], "claim", 2_500, event("claim", "2")),
        Err(StoreError::ClaimConflict { .. })
    ));
    assert_eq!(store.ownership(&fresh).expect("read"), None, "a refused claim writes nothing");
    assert_eq!(store.ownership(&a).expect("read").expect("row").birth_sha256, Some("a1".repeat(32)));
    assert_eq!(audit_len(store), audit_before);
    store
        .record_issuance(issuance(c.clone(), vec![Precondition::Owned { device_serial: a.clone() }]))
        .expect("an owned device is issued to");

    store.release_device(&a, OwnershipStatus::Revoked, 3_000, event("device.revoke", &a)).expect("revoke");
    let c2 = cert(&a);
    assert!(matches!(
        store.record_issuance(issuance(c2.clone(), vec![Precondition::Owned { device_serial: a.clone() }])),
        Err(StoreError::DeviceReleased { status: "revoked", .. })
    ));
    assert_eq!(store.certificate(&c2.serial).expect("read"), None);
    assert!(
        matches!(
            store.release_device(&a, OwnershipStatus::Transferred, 4_000, event("x", &a)),
            Err(StoreError::DeviceReleased { .. })
        ),
        "a revoked device cannot be handed on"
    );
    assert_eq!(store.claim_devices(vec![bound(&a, "a1")], "claim", 5_000, event("claim", "1")).expect("claim"), 0);
    assert_eq!(
        store.ownership(&a).expect("read").expect("row").status,
        OwnershipStatus::Revoked,
        "a claim does not undo a revocation"
    );
    store.release_device(&b, OwnershipStatus::Transferred, 4_000, event("voucher", &b)).expect("transfer");
    assert_eq!(store.ownership(&b).expect("read").expect("row").changed_at, Some(4_000));
    assert!(matches!(
        store.release_device(&unique("NONE-"), OwnershipStatus::Revoked, 1, event("x", "y")),
        Err(StoreError::NotOwned { .. })
    ));
}

/// Artifacts only move forward; a voucher claim owns the device and publishes
/// the voucher together, and never revives a revoked device.
pub fn artifacts(store: &dyn Store) {
    let kind = unique("bundle-");
    let art =
        |v: u64| Artifact { kind: kind.clone(), version: v, body: vec![v as u8; 3], published_at: 1_000 + v as i64 };
    assert_eq!(store.artifact(&kind).expect("read"), None);
    store.publish_artifact(art(2), event("bundle.publish", &kind)).expect("publish 2");
    let before = audit_len(store);
    for v in [1, 2] {
        assert!(
            matches!(
                store.publish_artifact(art(v), event("bundle.publish", &kind)),
                Err(StoreError::NotNewer { latest: 2, .. })
            ),
            "version {v} after 2 is refused"
        );
    }
    assert_eq!(audit_len(store), before, "refusals write nothing");
    store.publish_artifact(art(5), event("bundle.publish", &kind)).expect("publish 5");
    assert_eq!(store.artifact(&kind).expect("read"), Some(art(5)), "the latest");

    let dev = unique("VO-");
    let voucher =
        |v: u64| Artifact { kind: format!("voucher/{dev}"), version: v, body: vec![1, 2, 3], published_at: 7_000 };
    let held = |h: Option<&[u8]>| Precondition::VoucherHeld { device_serial: dev.clone(), sha256: h.map(sha256_hex) };
    store.own_by_voucher(&dev, "voucher:ab", voucher(1), held(None), event("claim", &dev)).expect("own by voucher");
    let o = store.ownership(&dev).expect("read").expect("row");
    assert_eq!((o.status, o.via.as_str()), (OwnershipStatus::Owned, "voucher:ab"));
    store.release_device(&dev, OwnershipStatus::Transferred, 8_000, event("voucher.issue", &dev)).expect("transfer");
    store
        .own_by_voucher(&dev, "voucher:cd", voucher(3), held(Some(&[1, 2, 3])), event("claim", &dev))
        .expect("back again by a longer voucher");
    assert_eq!(store.ownership(&dev).expect("read").expect("row").status, OwnershipStatus::Owned);
    // The held voucher unchanged does not lift the version rule.
    assert!(matches!(
        store.own_by_voucher(&dev, "voucher:ef", voucher(2), held(Some(&[1, 2, 3])), event("claim", &dev)),
        Err(StoreError::NotNewer { .. })
    ));
    // A precondition for another device is a caller's bug, refused.
    let other = Precondition::VoucherHeld { device_serial: unique("VO-"), sha256: None };
    assert!(matches!(
        store.own_by_voucher(&dev, "voucher:ef", voucher(9), other, event("claim", &dev)),
        Err(StoreError::Database(_))
    ));
    store.release_device(&dev, OwnershipStatus::Revoked, 9_000, event("device.revoke", &dev)).expect("revoke");
    let before = audit_len(store);
    assert!(matches!(
        store.own_by_voucher(&dev, "voucher:gh", voucher(4), held(Some(&[1, 2, 3])), event("claim", &dev)),
        Err(StoreError::DeviceReleased { status: "revoked", .. })
    ));
    assert_eq!(store.artifact(&format!("voucher/{dev}")).expect("read").expect("row").version, 3, "nothing published");
    assert_eq!(audit_len(store), before);
}

/// Voucher claims from 8 threads, each checked against the same held voucher
/// and each extending it differently (other octets, other lengths), race to
/// be stored: exactly one is, the others are refused as `VoucherChanged` (not
/// merely as not newer: the longest would pass the version rule) and write
/// nothing; the audit has one claim. Then the same from no voucher held.
pub fn voucher_claims_racing_against_one_held_voucher_store_one_and_no_fork(store: &(dyn Store + 'static)) {
    let dev = unique("VR-");
    let kind = format!("voucher/{dev}");
    let body = |i: u64| format!("voucher {dev} fork {i}").into_bytes();
    let held = |h: Option<&[u8]>| Precondition::VoucherHeld { device_serial: dev.clone(), sha256: h.map(sha256_hex) };
    let race = |base: u64, pre: Precondition| -> Vec<(u64, Result<(), StoreError>)> {
        std::thread::scope(|s| {
            let hs: Vec<_> = (1..=8u64)
                .map(|i| {
                    let (dev, kind, pre) = (dev.clone(), kind.clone(), pre.clone());
                    let art = Artifact { kind, version: base + i, body: body(base + i), published_at: 7_000 };
                    s.spawn(move || {
                        let via = format!("voucher:{}", sha256_hex(&art.body));
                        (base + i, store.own_by_voucher(&dev, &via, art, pre, event("device.claim", &dev)))
                    })
                })
                .collect();
            hs.into_iter().map(|j| j.join().expect("thread")).collect()
        })
    };
    let mut held_body: Option<Vec<u8>> = None;
    for base in [0, 10] {
        let before = audit_len(store);
        let results = race(base, held(held_body.as_deref()));
        let won: Vec<u64> = results.iter().filter(|(_, r)| r.is_ok()).map(|(v, _)| *v).collect();
        assert_eq!(won.len(), 1, "exactly one claim stored: {results:?}");
        assert!(
            results.iter().all(|(_, r)| matches!(r, Ok(()) | Err(StoreError::VoucherChanged { .. }))),
            "the others are refused as the held voucher changed: {results:?}"
        );
        let stored = store.artifact(&kind).expect("read").expect("a voucher is held");
        assert_eq!((stored.version, &stored.body), (won[0], &body(won[0])), "the winner is what is held");
        assert_eq!(audit_len(store), before + 1, "one audit entry: the winner's");
        let last = store.audit_entries(before + 1, 10).expect("entries");
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].event.action, "device.claim");
        let o = store.ownership(&dev).expect("read").expect("row");
        assert_eq!((o.status, o.via), (OwnershipStatus::Owned, format!("voucher:{}", sha256_hex(&body(won[0])))));
        held_body = Some(stored.body);
    }
    // A claim checked against a voucher held before: refused, naming both.
    let before = audit_len(store);
    let late = Artifact { kind: kind.clone(), version: 99, body: body(99), published_at: 7_000 };
    match store.own_by_voucher(&dev, "voucher:late", late, held(None), event("device.claim", &dev)) {
        Err(StoreError::VoucherChanged { expected: None, held: Some(h), .. }) => {
            assert_eq!(Some(h), held_body.as_deref().map(sha256_hex));
        }
        other => panic!("a stale claim must be refused as VoucherChanged: {other:?}"),
    }
    assert_eq!(store.artifact(&kind).expect("read").map(|a| a.body), held_body, "nothing published");
    assert_eq!(audit_len(store), before, "nothing audited");
}

fn renewal(old: &str, device: &str, now: i64) -> (CertRecord, Issuance) {
    let mut c = cert(device);
    c.replaces = Some(old.into());
    let pre = vec![Precondition::Supersede { serial: old.into(), now }];
    (c.clone(), issuance(c, pre))
}

fn device_revocation(device: &str, reason: u8, at: i64) -> DeviceRevocation {
    DeviceRevocation {
        device_serial: device.into(),
        reason,
        at,
        actor: "test".into(),
        detail: format!("reason={reason}"),
    }
}

/// A renewal supersedes its predecessor in its own transaction: the old one
/// is revoked (reason superseded) and points at its successor; a second
/// renewal of the same certificate, of an unknown or of a revoked one, is
/// refused and writes nothing.
pub fn renewal_supersedes_once(store: &dyn Store) {
    let old = cert("SUP-1");
    store.record_issuance(issuance(old.clone(), vec![])).expect("issue");
    let (new, r) = renewal(&old.serial, "SUP-1", 1_500);
    store.record_issuance(r).expect("renew");
    let o = store.certificate(&old.serial).expect("read").expect("there");
    assert_eq!(o.status, CertStatus::Revoked { at: 1_500, reason: 4 }, "superseded at the renewal");
    assert_eq!(o.replaced_by.as_deref(), Some(new.serial.as_str()), "the old one names its successor");
    let n = store.certificate(&new.serial).expect("read").expect("there");
    assert_eq!((n.status, n.replaced_by, n.replaces.as_deref()), (CertStatus::Good, None, Some(old.serial.as_str())));

    let (certs, audit) = (store.count_certificates().expect("count"), audit_len(store));
    let (again, r) = renewal(&old.serial, "SUP-1", 1_600);
    assert_eq!(
        store.record_issuance(r),
        Err(StoreError::Superseded { serial: old.serial.clone(), by: new.serial.clone() })
    );
    let (_, r) = renewal("00", "SUP-1", 1_600);
    assert_eq!(store.record_issuance(r), Err(StoreError::CertUnknown { serial: "00".into() }));
    let mut revoked = cert("SUP-1");
    revoked.status = CertStatus::Revoked { at: 1_200, reason: 1 };
    store.record_issuance(issuance(revoked.clone(), vec![])).expect("revoked");
    let (certs, audit) = (certs + 1, audit + 1);
    let (_, r) = renewal(&revoked.serial, "SUP-1", 1_600);
    assert_eq!(store.record_issuance(r), Err(StoreError::CertRevoked { serial: revoked.serial.clone() }));
    assert_eq!(
        (store.count_certificates().expect("count"), audit_len(store)),
        (certs, audit),
        "refusals write nothing"
    );
    assert!(store.certificate(&again.serial).expect("read").is_none());
    assert_eq!(store.certificate(&new.serial).expect("read").expect("there").status, CertStatus::Good);
    assert_eq!(store.certificate(&revoked.serial).expect("read").expect("there").replaced_by, None);
}

/// 16 threads renew one certificate at once: exactly one successor.
pub fn concurrent_renewals_of_one_certificate(store: &(dyn Store + 'static)) {
    let old = cert("SUP-2");
    store.record_issuance(issuance(old.clone(), vec![])).expect("issue");
    let results: Vec<Result<String, StoreError>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16)
            .map(|_| {
                let old = old.serial.clone();
                s.spawn(move || {
                    let (c, r) = renewal(&old, "SUP-2", 1_500);
                    store.record_issuance(r).map(|()| c.serial)
                })
            })
            .collect();
        hs.into_iter().map(|j| j.join().expect("thread")).collect()
    });
    let won: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "exactly one renewal: {results:?}");
    assert!(
        results.iter().all(|r| r.is_ok() || matches!(r, Err(StoreError::Superseded { by, .. }) if by == won[0])),
        "{results:?}"
    );
    let q = CertQuery { device_serial: Some("SUP-2".into()), ..Default::default() };
    let good: Vec<_> =
        store.list_certificates(&q).expect("list").into_iter().filter(|c| c.status == CertStatus::Good).collect();
    assert_eq!(good.len(), 1, "one good certificate: the successor");
    assert_eq!(&good[0].serial, won[0]);
}

/// `revoke_device` revokes every good certificate and the ownership in one
/// transaction, with an audit entry each; with nothing to revoke it writes nothing.
pub fn revoke_device_in_one_transaction(store: &dyn Store) {
    let d = unique("RD-");
    let certs: Vec<CertRecord> = (0..3).map(|_| cert(&d)).collect();
    for c in &certs {
        store.record_issuance(issuance(c.clone(), vec![])).expect("issue");
    }
    let mut gone = cert(&d);
    gone.status = CertStatus::Revoked { at: 1_100, reason: 1 };
    store.record_issuance(issuance(gone.clone(), vec![])).expect("revoked one");
    let claim = Claim { device_serial: d.clone(), manufacturer_spki: "ab".repeat(32), birth_sha256: "cd".repeat(32) };
    store.claim_devices(vec![claim], "claim", 1_000, event("claim", &d)).expect("claim");
    let audit = audit_len(store);
    let out = store.revoke_device(device_revocation(&d, 1, 1_700)).expect("revoke device");
    let mut want: Vec<String> = certs.iter().map(|c| c.serial.clone()).collect();
    let mut got = out.serials.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "every good certificate, not the revoked one");
    assert!(out.released, "the owned device is revoked as a device too");
    assert_eq!(audit_len(store), audit + 4, "one entry per certificate and one for the device");
    for c in &certs {
        assert_eq!(
            store.certificate(&c.serial).expect("read").expect("there").status,
            CertStatus::Revoked { at: 1_700, reason: 1 }
        );
    }
    assert_eq!(store.certificate(&gone.serial).expect("read").expect("there").status, gone.status, "left as it was");
    assert_eq!(store.ownership(&d).expect("read").expect("there").status, OwnershipStatus::Revoked);
    let audit = audit_len(store);
    assert_eq!(
        store.revoke_device(device_revocation(&d, 1, 1_800)),
        Err(StoreError::NothingToRevoke { device: d.clone() })
    );
    assert_eq!(audit_len(store), audit, "nothing written");
    // A device only known by its certificates (not owned): they are revoked, nothing else.
    let e = unique("RD-");
    let c = cert(&e);
    store.record_issuance(issuance(c.clone(), vec![])).expect("issue");
    let out = store.revoke_device(device_revocation(&e, 0, 1_700)).expect("revoke");
    assert_eq!((out.serials, out.released), (vec![c.serial], false));
    assert!(store.ownership(&e).expect("read").is_none());
}

/// Renew `first`, then its successor, and so on, counting each in `renewed`,
/// until the store refuses one as revoked (or 10,000 renewals): the chain of serials.
fn renew_until_revoked(store: &dyn Store, first: &str, device: &str, renewed: &AtomicU64) -> Vec<String> {
    let mut chain = vec![first.to_string()];
    for _ in 0..10_000 {
        let (c, r) = renewal(chain.last().map_or(first, String::as_str), device, 1_500);
        match store.record_issuance(r) {
            Ok(()) => {
                renewed.fetch_add(1, Ordering::SeqCst);
                chain.push(c.serial);
            }
            Err(StoreError::CertRevoked { .. }) => break,
            Err(e) => panic!("renewal: {e}"),
        }
    }
    chain
}

/// Wait until `renewed` counts `n`. A renewer that panics never counts:
/// fail, bounded, rather than wait forever.
fn until_renewed(renewed: &AtomicU64, n: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while renewed.load(Ordering::SeqCst) < n {
        assert!(std::time::Instant::now() < deadline, "{n} renewals were not committed within 120 s");
        std::thread::yield_now();
    }
}

fn hand_over(device: &str, version: u64, at: i64) -> HandOver {
    HandOver {
        device_serial: device.into(),
        voucher: Artifact {
            kind: format!("voucher/{device}"),
            version,
            body: vec![version as u8; 8],
            published_at: at,
        },
        keep_cas: vec!["birth".into()],
        at,
        actor: "test".into(),
        detail: format!("entries={version}"),
        to: "ef".repeat(32),
    }
}

/// `hand_over` while four threads renew the device's operational
/// certificates: it publishes the voucher, revokes every good certificate but
/// the births (its birth CA's, a delegated CA's) and transfers the ownership
/// in one transaction, so that no renewal chain keeps a good certificate (a
/// renewal needs a good predecessor). A second hand-over with a voucher that
/// is not newer is refused and writes nothing: no certificate revoked, no
/// audit entry, the ownership as it was.
pub fn a_hand_over_is_one_transaction_under_renewals(store: &(dyn Store + 'static)) {
    let d = unique("HO-");
    let mut birth = cert(&d);
    birth.ca = "birth".into();
    let mut offline = cert(&d);
    offline.ca = "delegated:line-1:B1".into();
    let firsts: Vec<CertRecord> = (0..4).map(|_| cert(&d)).collect();
    for c in firsts.iter().chain([&birth, &offline]) {
        store.record_issuance(issuance(c.clone(), vec![])).expect("issue");
    }
    let claim = Claim { device_serial: d.clone(), manufacturer_spki: "ab".repeat(32), birth_sha256: "cd".repeat(32) };
    store.claim_devices(vec![claim], "claim", 1_000, event("claim", &d)).expect("claim");
    let renewed = AtomicU64::new(0);
    let (chains, out) = std::thread::scope(|s| {
        let chains: Vec<_> = firsts
            .iter()
            .map(|first| {
                let (d, renewed) = (d.clone(), &renewed);
                s.spawn(move || renew_until_revoked(store, &first.serial, &d, renewed))
            })
            .collect();
        until_renewed(&renewed, 20);
        let out = store.hand_over(hand_over(&d, 1, 1_900)).expect("hand over");
        (chains.into_iter().map(|j| j.join().expect("thread")).collect::<Vec<_>>(), out)
    });
    assert!(out.released, "owned, now transferred");
    assert_eq!(out.revoked.len(), 4, "the head of each renewal chain: {out:?}");
    for serial in chains.iter().flatten() {
        let c = store.certificate(serial).expect("read").expect("there");
        assert!(c.status != CertStatus::Good, "renewal chain certificate {serial} still good after the hand-over");
    }
    for serial in &out.revoked {
        let c = store.certificate(serial).expect("read").expect("there");
        assert_eq!(c.status, CertStatus::Revoked { at: 1_900, reason: 3 }, "affiliationChanged");
    }
    for kept in [&birth, &offline] {
        assert_eq!(store.certificate(&kept.serial).expect("read").expect("there").status, CertStatus::Good);
    }
    assert_eq!(store.ownership(&d).expect("read").expect("there").status, OwnershipStatus::Transferred);
    assert_eq!(store.artifact(&format!("voucher/{d}")).expect("read").expect("published").version, 1);
    let tail = store.audit_entries(audit_len(store) - 5, 6).expect("audit");
    let actions: Vec<&str> = tail.iter().map(|e| e.event.action.as_str()).collect();
    assert_eq!(actions, ["voucher.issue", "revoke", "revoke", "revoke", "revoke", "device.transfer"]);

    // Not newer: refused whole, the revocation it made before its voucher's
    // refusal rolled back with it.
    let fresh = cert(&d);
    store.record_issuance(issuance(fresh.clone(), vec![])).expect("issue");
    let audit = audit_len(store);
    assert!(matches!(store.hand_over(hand_over(&d, 1, 2_000)), Err(StoreError::NotNewer { .. })));
    assert_eq!(audit_len(store), audit, "nothing audited");
    assert_eq!(store.certificate(&fresh.serial).expect("read").expect("there").status, CertStatus::Good);
    assert!(store.revoked("operational").expect("read").iter().all(|r| r.serial != fresh.serial));
    assert_eq!(store.artifact(&format!("voucher/{d}")).expect("read").expect("there").published_at, 1_900);
}

/// A commissioning ([`Precondition::Commission`]) revokes, in the
/// transaction that records its certificate, every other good certificate of
/// the device but its births (its birth CA's, a delegated CA's), with reason
/// superseded, and names them in its audit entry; one refused (device not
/// owned) writes nothing. A commissioning for a key the device holds a good
/// certificate for is refused ([`StoreError::Commissioned`], naming it) and
/// writes nothing. Commissionings racing with fresh keys leave one good
/// operational certificate.
pub fn a_commissioning_supersedes_the_devices_other_certificates_but_its_births(store: &(dyn Store + 'static)) {
    let d = unique("CO-");
    let mut birth = cert(&d);
    birth.ca = "birth".into();
    let mut offline = cert(&d);
    offline.ca = "delegated:line-1:B1".into();
    let (op1, op2, gone) = (cert(&d), cert(&d), cert(&d));
    for c in [&birth, &offline, &op1, &op2, &gone] {
        store.record_issuance(issuance(c.clone(), vec![])).expect("issue");
    }
    store.revoke(&gone.serial, 1, 1_100, event("revoke", &gone.serial)).expect("revoke");
    let commission = |c: &CertRecord, now: i64| {
        let pre = Precondition::Commission { device_serial: d.clone(), keep_cas: vec!["birth".into()], now };
        let mut i = issuance(c.clone(), vec![pre]);
        i.audit.detail = "birth=b1".into();
        store.record_issuance(i)
    };
    let status = |c: &CertRecord| store.certificate(&c.serial).expect("read").expect("there").status;

    // Not owned: refused, nothing revoked or audited.
    let (audit, c1) = (audit_len(store), cert(&d));
    assert!(matches!(commission(&c1, 1_200), Err(StoreError::NotOwned { .. })));
    assert_eq!(audit_len(store), audit, "a refused commissioning audits nothing");
    assert_eq!(store.certificate(&c1.serial).expect("read"), None);
    assert_eq!((status(&op1), status(&op2)), (CertStatus::Good, CertStatus::Good), "and revokes nothing");

    let claim = Claim { device_serial: d.clone(), manufacturer_spki: "ab".repeat(32), birth_sha256: "cd".repeat(32) };
    store.claim_devices(vec![claim], "claim", 1_000, event("claim", &d)).expect("claim");
    commission(&c1, 1_500).expect("commission");
    for c in [&op1, &op2] {
        assert_eq!(status(c), CertStatus::Revoked { at: 1_500, reason: 4 }, "superseded");
    }
    assert_eq!(status(&gone), CertStatus::Revoked { at: 1_100, reason: 1 }, "a revoked one is left as it was");
    for c in [&birth, &offline, &c1] {
        assert_eq!(status(c), CertStatus::Good, "births and the new certificate stay good");
    }
    let tail = store.audit_entries(audit_len(store) - 2, 3).expect("audit");
    let actions: Vec<(&str, &str)> = tail.iter().map(|e| (e.event.action.as_str(), e.event.target.as_str())).collect();
    assert_eq!(
        actions,
        [("revoke", op1.serial.as_str()), ("revoke", op2.serial.as_str()), ("issue", c1.serial.as_str())]
    );
    let want = format!("birth=b1 superseded={},{}", op1.serial, op2.serial);
    assert_eq!(tail[2].event.detail, want, "the commissioning names what it superseded");

    // The same key again (a lost answer): refused, naming its certificate; nothing written.
    let audit = audit_len(store);
    let again = CertRecord { spki_sha256: c1.spki_sha256.clone(), ..cert(&d) };
    match commission(&again, 1_600) {
        Err(StoreError::Commissioned { serial, .. }) => assert_eq!(serial, c1.serial),
        other => panic!("the same key commissions nothing new: {other:?}"),
    }
    assert_eq!(audit_len(store), audit);
    assert_eq!(store.certificate(&again.serial).expect("read"), None);
    assert_eq!(status(&c1), CertStatus::Good);

    // Racing commissionings with fresh keys (threads, or nodes): one good operational certificate.
    let racers: Vec<CertRecord> = (0..8).map(|_| cert(&d)).collect();
    std::thread::scope(|s| {
        for c in &racers {
            s.spawn(move || commission(c, 1_700).expect("commission"));
        }
    });
    let good: Vec<String> = store
        .list_certificates(&CertQuery { device_serial: Some(d.clone()), ..Default::default() })
        .expect("list")
        .into_iter()
        .filter(|c| c.status == CertStatus::Good && c.ca == "operational")
        .map(|c| c.serial)
        .collect();
    assert_eq!(good.len(), 1, "one good operational certificate after racing commissionings: {good:?}");
    assert!(racers.iter().any(|c| c.serial == good[0]));
    for c in [&birth, &offline] {
        assert_eq!(status(c), CertStatus::Good);
    }
}

/// `revoke_device` while other threads renew the device's certificates (four
/// renewal chains) and issue new ones: afterwards no renewal chain has a good
/// certificate (each renewal needs a good predecessor, and the revocation saw
/// every one committed before it), and every certificate whose issuance was
/// committed before the revocation (by audit order) is revoked.
pub fn revoke_device_races_renewals_and_issuance(store: &(dyn Store + 'static)) {
    use std::sync::atomic::AtomicBool;
    let d = unique("RR-");
    let from = audit_len(store) + 1;
    let firsts: Vec<CertRecord> = (0..4).map(|_| cert(&d)).collect();
    for c in &firsts {
        store.record_issuance(issuance(c.clone(), vec![])).expect("issue");
    }
    let renewed = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let (renewals, issued): (Vec<Vec<String>>, Vec<String>) = std::thread::scope(|s| {
        let chains: Vec<_> = firsts
            .iter()
            .map(|first| {
                let (d, renewed) = (d.clone(), &renewed);
                s.spawn(move || renew_until_revoked(store, &first.serial, &d, renewed))
            })
            .collect();
        let fresh = {
            let (d, stop) = (d.clone(), &stop);
            s.spawn(move || {
                let mut out = Vec::new();
                while !stop.load(Ordering::SeqCst) && out.len() < 10_000 {
                    let c = cert(&d);
                    store.record_issuance(issuance(c.clone(), vec![])).expect("issue");
                    out.push(c.serial);
                }
                out
            })
        };
        until_renewed(&renewed, 40);
        let out = store.revoke_device(device_revocation(&d, 1, 1_900)).expect("revoke device");
        assert!(!out.serials.is_empty());
        stop.store(true, Ordering::SeqCst);
        (chains.into_iter().map(|j| j.join().expect("thread")).collect(), fresh.join().expect("thread"))
    });
    for chain in &renewals {
        for serial in chain {
            let c = store.certificate(serial).expect("read").expect("there");
            assert!(c.status != CertStatus::Good, "renewal chain certificate {serial} still good after revoke_device");
        }
    }
    // Audit order is commit order: find the revocation, then every issuance before it.
    let entries = store.audit_entries(from, u32::MAX).expect("audit");
    let revoked_at = entries
        .iter()
        .find(|e| e.event.action == "revoke" && e.event.at == 1_900)
        .map(|e| e.seq)
        .expect("the revocation is audited");
    let mut before = 0;
    for e in entries.iter().filter(|e| e.event.action == "issue" && e.seq < revoked_at) {
        if issued.contains(&e.event.target) || renewals.iter().any(|c| c.contains(&e.event.target)) {
            before += 1;
            let c = store.certificate(&e.event.target).expect("read").expect("there");
            assert!(
                c.status != CertStatus::Good,
                "{} was issued before the revocation committed and is still good",
                c.serial
            );
        }
    }
    assert!(before >= 44, "the race ran: {before} issuances before the revocation");
}

pub(crate) fn key_block(
    keys: Vec<crate::BlockedKey>,
    tokens: Vec<String>,
    revoke: bool,
    spare: Vec<String>,
) -> crate::KeyBlock {
    crate::KeyBlock {
        keys,
        tokens,
        reason: "found in fw.bin".into(),
        at: 3_000,
        actor: "test".into(),
        revoke,
        spare_profiles: spare,
    }
}

pub(crate) fn blocked(spki: &str) -> crate::BlockedKey {
    crate::BlockedKey {
        spki_sha256: spki.into(),
        reason: "found in fw.bin".into(),
        source: "firmware scan".into(),
        blocked_at: 3_000,
        blocked_by: "test".into(),
    }
}

/// [`crate::Certificates::presented`] answers, in one read, what the certificate,
/// blocked-key and station reads answer one by one: for a device's certificate, a
/// station's with several batches or none, a blocked key, a revoked station, an
/// unknown serial.
pub fn a_presented_certificate_is_read_as_its_separate_reads_say(store: &dyn Store) {
    let separately = |serial: &str, station: bool| {
        store.certificate(serial).expect("read").map(|record| crate::Presented {
            key_blocked: store.blocked_key(&record.spki_sha256).expect("read"),
            station: station.then(|| store.station_by_cert(serial).expect("read")).flatten(),
            record,
        })
    };
    let check = |serial: &str| {
        for station in [false, true] {
            assert_eq!(
                store.presented(serial, station).expect("read"),
                separately(serial, station),
                "{serial} {station}"
            );
        }
    };
    let device = cert(&unique("PR-"));
    store.record_issuance(issuance(device.clone(), vec![])).expect("issue");
    let (b1, b2) = (unique("PB-"), unique("PB-"));
    for b in [&b2, &b1] {
        batch(store, b, 5, &[]);
    }
    let name = unique("PS-");
    let busy = station(store, &name, &[&b2, &b1]);
    let idle = station(store, &unique("PS-"), &[]);
    for c in [&device, &busy, &idle] {
        check(&c.serial);
    }
    let got = store.presented(&busy.serial, true).expect("read").expect("recorded");
    let mut want = vec![b1.clone(), b2.clone()];
    want.sort();
    assert_eq!(
        got.station.as_ref().map(|s| s.batches.clone()),
        Some(want),
        "the station's batches, once each, in order"
    );
    assert_eq!(store.presented(&busy.serial, false).expect("read").expect("recorded").station, None, "not asked");
    assert_eq!(
        store.presented(&idle.serial, true).expect("read").expect("recorded").station.map(|s| s.batches),
        Some(vec![])
    );
    assert_eq!(store.presented(&device.serial, true).expect("read").expect("recorded").station, None);
    // A block on the device's key, and on the station's; a revoked station.
    store
        .block_keys(key_block(vec![blocked(&device.spki_sha256), blocked(&busy.spki_sha256)], vec![], false, vec![]))
        .expect("block");
    store.revoke_station(&name, 4_000, event("station.revoke", &name)).expect("revoke station");
    for c in [&device, &busy, &idle] {
        check(&c.serial);
    }
    let got = store.presented(&busy.serial, true).expect("read").expect("recorded");
    assert_eq!(got.key_blocked.map(|b| b.spki_sha256), Some(busy.spki_sha256.clone()));
    assert!(matches!(got.station.map(|s| s.status), Some(StationStatus::Revoked { at: 4_000 })));
    assert_eq!(store.presented(&unique("5e"), true).expect("read"), None);
    assert_eq!(store.presented(&unique("5e"), false).expect("read"), None);
}

/// A key certified for one device is refused for another (and for a device
/// when a station holds it), writing nothing; the same device may renew
/// with it; certificates are found by key.
pub fn a_key_is_certified_for_one_device_only(store: &dyn Store) {
    let first = cert(&unique("K1-"));
    store.record_issuance(issuance(first.clone(), vec![])).expect("first");
    let renewal = CertRecord { serial: unique("5e"), ..first.clone() };
    store.record_issuance(issuance(renewal.clone(), vec![])).expect("the same device renews with its key");
    let (certs, audit) = (store.count_certificates().expect("count"), audit_len(store));
    let clone = CertRecord { serial: unique("5e"), device_serial: Some(unique("K2-")), ..first.clone() };
    assert_eq!(
        store.record_issuance(issuance(clone, vec![])),
        Err(StoreError::KeyInUse {
            spki_sha256: first.spki_sha256.clone(),
            device: first.device_serial.clone(),
            serial: first.serial.clone(),
        })
    );
    let st = station(store, &unique("KS-"), &[]);
    let mut with_station_key = cert(&unique("K3-"));
    with_station_key.spki_sha256 = st.spki_sha256.clone();
    assert!(matches!(
        store.record_issuance(issuance(with_station_key, vec![])),
        Err(StoreError::KeyInUse { device: None, .. })
    ));
    assert_eq!((store.count_certificates().expect("count"), audit_len(store) - 1), (certs + 1, audit));
    let by_key: Vec<String> =
        store.certificates_by_key(&first.spki_sha256).expect("read").into_iter().map(|c| c.serial).collect();
    let mut want = vec![first.serial, renewal.serial];
    want.sort();
    let mut got = by_key.clone();
    got.sort();
    assert_eq!(got, want);
    assert!(store.certificates_by_key("00").expect("read").is_empty());
}

/// A blocked key: refused for a device, a station, a delegated CA; a
/// station's offline birth with it, with another device's key or with a key
/// not in its canonical form is recorded, flagged and revoked.
pub fn blocked_keys_are_refused_on_every_path(store: &dyn Store) {
    let key = unique("bb");
    let done = store.block_keys(key_block(vec![blocked(&key)], vec![], true, vec![])).expect("block");
    assert_eq!((done.blocked, done.revoked.len()), (vec![key.clone()], 0));
    assert_eq!(store.blocked_key(&key).expect("read"), Some(blocked(&key)));
    assert!(store.blocked_keys().expect("list").contains(&blocked(&key)));
    let refused = Err(StoreError::KeyBlocked { spki_sha256: key.clone(), reason: "found in fw.bin".into() });
    let (certs, audit) = (store.count_certificates().expect("count"), audit_len(store));
    let mut c = cert(&unique("KB-"));
    c.spki_sha256 = key.clone();
    assert_eq!(store.record_issuance(issuance(c.clone(), vec![])), refused);
    let b = unique("KBB-");
    let listed = vec![format!("{b}-0"), format!("{b}-1"), format!("{b}-2")];
    batch(store, &b, 10, &listed);
    let mut st_cert = cert("station");
    st_cert.device_serial = None;
    st_cert.spki_sha256 = key.clone();
    let name = unique("KBS-");
    let st = StationRecord {
        name: name.clone(),
        cert_serial: st_cert.serial.clone(),
        batches: vec![b.clone()],
        status: StationStatus::Active,
        created_at: 1,
    };
    assert_eq!(store.add_station(st, st_cert, event("station.add", &name)), refused);
    assert_eq!(store.station(&name).expect("read"), None, "nothing of the station is written");
    let st = unique("KBS-");
    station(store, &st, &[&b]);
    let mut ca = cert("delegate");
    (ca.profile, ca.device_serial, ca.spki_sha256) = ("delegated-ca".into(), None, key.clone());
    assert_eq!(store.add_delegation(&st, &b, ca, event("station.delegate", &st)), refused);
    assert_eq!(store.delegation(&st, &b).expect("read"), None);
    assert_eq!((store.count_certificates().expect("count"), audit_len(store) - 2), (certs + 1, audit));

    // Born offline with the blocked key, and with another device's key: flagged, revoked (keyCompromise).
    let other = cert(&unique("KO-"));
    store.record_issuance(issuance(other.clone(), vec![])).expect("other device");
    let mut a = cert(&listed[0]);
    a.spki_sha256 = key.clone();
    let mut s2 = cert(&listed[1]);
    s2.spki_sha256 = other.spki_sha256.clone();
    // And with a key in another encoding (the station's authority found it not canonical):
    // its fingerprint is nobody's, so it is flagged for what it is.
    let odd = cert(&listed[2]);
    let mut entries = synced(&[&a, &s2, &odd]);
    entries[2].key_not_canonical = true;
    let out = store
        .apply_sync(SyncUpload {
            station: st.clone(),
            batch: b.clone(),
            from_seq: 1,
            from_head: crate::GENESIS_HASH.into(),
            to_seq: 3,
            to_head: "h3".into(),
            entries,
            now: 500,
            audit: event("factory.sync", &b),
        })
        .expect("sync");
    assert_eq!(
        out.flagged,
        vec![
            (a.serial.clone(), crate::Flag::BlockedKey),
            (s2.serial.clone(), crate::Flag::SharedKey),
            (odd.serial.clone(), crate::Flag::NonCanonicalKey)
        ]
    );
    for c in [&a, &s2, &odd] {
        let rec = store.certificate(&c.serial).expect("read").expect("recorded");
        assert_eq!(rec.status, CertStatus::Revoked { at: 500, reason: 1 });
    }
    let flags: Vec<crate::Flag> = store.flagged(&b).expect("flags").into_iter().map(|(_, f)| f).collect();
    assert_eq!(flags.len(), 3);
    assert!(flags.contains(&crate::Flag::BlockedKey) && flags.contains(&crate::Flag::SharedKey), "{flags:?}");
    assert!(flags.contains(&crate::Flag::NonCanonicalKey), "{flags:?}");
    assert_eq!(store.batch(&b).expect("read").expect("batch").issued, 0);
}

/// The certificate a renewal supersedes may be a device's while the new one
/// is none's: that device's summary moves too (its certificate has a
/// successor now: it is certified no longer), as [`run_all`]'s check of the
/// summaries against a rebuild sees.
pub fn superseding_moves_the_superseded_devices_summary(store: &dyn Store) {
    let old = cert(&unique("SD-"));
    store.record_issuance(issuance(old.clone(), vec![])).expect("device certificate");
    let mut new = cert("server");
    (new.profile, new.device_serial) = ("server".into(), None);
    let pre = vec![Precondition::Supersede { serial: old.serial.clone(), now: 1_500 }];
    store.record_issuance(issuance(new.clone(), pre)).expect("supersede");
    assert_eq!(
        store.certificate(&old.serial).expect("read").expect("there").replaced_by,
        Some(new.serial),
        "superseded"
    );
}

/// A key other devices hold (a station's offline births may record a shared
/// key): an issuance for a third device names the oldest holder, by issuedAt
/// then serial compared bytewise; once the key is blocked, the block is what
/// is refused, even though the key is in use.
pub fn a_key_held_by_other_devices_names_the_oldest_and_a_block_comes_first(store: &dyn Store) {
    let first = cert(&unique("KH-"));
    store.record_issuance(issuance(first.clone(), vec![])).expect("first holder");
    let b = unique("KHB-");
    let listed = vec![format!("{b}-0"), format!("{b}-1"), format!("{b}-2"), format!("{b}-3")];
    batch(store, &b, 10, &listed);
    let st = unique("KHS-");
    station(store, &st, &[&b]);
    // Born offline before the first holder's issuance, the same second; by
    // serial, bytewise "B" comes before "a" (a locale's order puts "a" first).
    let base = unique("5e");
    let born = |device: &str, serial: String, issued_at: i64| CertRecord {
        serial,
        issued_at,
        spki_sha256: first.spki_sha256.clone(),
        ..cert(device)
    };
    let late = born(&listed[0], format!("{base}-0"), 950);
    let lower = born(&listed[1], format!("{base}-a"), 900);
    let upper = born(&listed[2], format!("{base}-B"), 900);
    let entries = synced(&[&late, &lower, &upper]);
    store
        .apply_sync(SyncUpload {
            station: st.clone(),
            batch: b.clone(),
            from_seq: 1,
            from_head: crate::GENESIS_HASH.into(),
            to_seq: 3,
            to_head: "h3".into(),
            entries,
            now: 500,
            audit: event("factory.sync", &b),
        })
        .expect("sync");
    let (certs, audit) = (store.count_certificates().expect("count"), audit_len(store));
    let third = cert(&unique("KH3-"));
    let third = CertRecord { spki_sha256: first.spki_sha256.clone(), ..third };
    assert_eq!(
        store.record_issuance(issuance(third.clone(), vec![])),
        Err(StoreError::KeyInUse {
            spki_sha256: first.spki_sha256.clone(),
            device: upper.device_serial.clone(),
            serial: upper.serial.clone(),
        })
    );
    // Born on the line with the key: refused the same way, the birth's own
    // refusals first, and nothing of the birth is written.
    let birth = |serial: &str| {
        vec![Precondition::Birth { batch: b.clone(), station: st.clone(), device_serial: serial.into(), now: 600 }]
    };
    let online = CertRecord { spki_sha256: first.spki_sha256.clone(), ..cert(&listed[3]) };
    let in_use = Err(StoreError::KeyInUse {
        spki_sha256: first.spki_sha256.clone(),
        device: upper.device_serial.clone(),
        serial: upper.serial.clone(),
    });
    assert_eq!(store.record_issuance(issuance(online.clone(), birth(&listed[3]))), in_use);
    let off_list = format!("{b}-9");
    let stray = CertRecord { spki_sha256: first.spki_sha256.clone(), ..cert(&off_list) };
    assert_eq!(
        store.record_issuance(issuance(stray, birth(&off_list))),
        Err(StoreError::SerialNotAllowed { batch: b.clone(), serial: off_list.clone() })
    );
    assert_eq!(store.batch(&b).expect("read").expect("batch").issued, 0);
    // A holder's own device is not another: the next oldest is named.
    let own = CertRecord { serial: unique("5e"), ..upper.clone() };
    assert_eq!(
        store.record_issuance(issuance(own, vec![])),
        Err(StoreError::KeyInUse {
            spki_sha256: first.spki_sha256.clone(),
            device: lower.device_serial.clone(),
            serial: lower.serial.clone(),
        })
    );
    assert_eq!((store.count_certificates().expect("count"), audit_len(store)), (certs, audit));
    store.block_keys(key_block(vec![blocked(&first.spki_sha256)], vec![], false, vec![])).expect("block");
    let blocked =
        Err(StoreError::KeyBlocked { spki_sha256: first.spki_sha256.clone(), reason: "found in fw.bin".into() });
    assert_eq!(store.record_issuance(issuance(third, vec![])), blocked);
    assert_eq!(store.record_issuance(issuance(online, birth(&listed[3]))), blocked);
    assert_eq!(store.batch(&b).expect("read").expect("batch").issued, 0);
}

/// Blocking a key revokes its good certificates (keyCompromise), but those of
/// spared profiles, each audited; blocking it again revokes nothing more.
pub fn blocking_revokes_the_keys_certificates_once(store: &dyn Store) {
    let dev = cert(&unique("KR-"));
    store.record_issuance(issuance(dev.clone(), vec![])).expect("issue");
    let renewal = CertRecord { serial: unique("5e"), ..dev.clone() };
    store.record_issuance(issuance(renewal.clone(), vec![])).expect("renew");
    let mut ca = cert("ca");
    (ca.profile, ca.device_serial) = ("issuing-ca".into(), None);
    store.record_issuance(issuance(ca.clone(), vec![])).expect("ca");
    let untouched = cert(&unique("KU-"));
    store.record_issuance(issuance(untouched.clone(), vec![])).expect("issue");
    let audit = audit_len(store);
    let events = store.last_event_seq().expect("last event");
    let block = |keys: Vec<crate::BlockedKey>, revoke: bool| key_block(keys, vec![], revoke, vec!["issuing-ca".into()]);
    // Without revoke: blocked, the certificates reported as left alone.
    let done = store.block_keys(block(vec![blocked(&dev.spki_sha256)], false)).expect("block");
    assert_eq!(done.revoked, Vec::<String>::new());
    assert_eq!(done.spared.len(), 2);
    let done = store
        .block_keys(block(vec![blocked(&dev.spki_sha256), blocked(&ca.spki_sha256)], true))
        .expect("block and revoke");
    assert_eq!(done.already, vec![dev.spki_sha256.clone()]);
    assert_eq!(done.blocked, vec![ca.spki_sha256.clone()]);
    let mut revoked = done.revoked.clone();
    revoked.sort();
    let mut want = vec![dev.serial.clone(), renewal.serial.clone()];
    want.sort();
    assert_eq!(revoked, want);
    assert_eq!(done.spared, vec![ca.serial.clone()]);
    for s in &want {
        let rec = store.certificate(s).expect("read").expect("recorded");
        assert_eq!(rec.status, CertStatus::Revoked { at: 3_000, reason: 1 });
    }
    // Each revocation is an event for the webhooks (keyCompromise); the spared CA's is not.
    let mut evs: Vec<(String, String)> = events_since(store, events)
        .into_iter()
        .map(|(k, subject, d)| {
            assert_eq!(d["reason_code"], 1);
            (k, subject)
        })
        .collect();
    evs.sort();
    let cr = crate::EVENT_CERT_REVOKED.to_string();
    assert_eq!(evs, want.iter().map(|s| (cr.clone(), s.clone())).collect::<Vec<_>>());
    assert_eq!(store.certificate(&ca.serial).expect("read").expect("ca").status, CertStatus::Good);
    assert_eq!(store.certificate(&untouched.serial).expect("read").expect("other").status, CertStatus::Good);
    // One key.block for each new key, one revoke for each certificate.
    assert_eq!(audit_len(store), audit + 1 + 1 + 2);
    let again = store.block_keys(block(vec![blocked(&dev.spki_sha256)], true)).expect("again");
    assert_eq!((again.blocked.len(), again.already.len(), again.revoked.len()), (0, 1, 0));
    assert_eq!(audit_len(store), audit + 4, "blocking again writes nothing");
}

/// Sixteen devices racing to certify one key: one certificate, fifteen
/// clone refusals.
pub fn clones_racing_with_one_key_get_one_certificate(store: &(dyn Store + 'static)) {
    let key = unique("cc");
    let results: Vec<Result<(), StoreError>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16)
            .map(|i| {
                let key = key.clone();
                s.spawn(move || {
                    let mut c = cert(&format!("{key}-{i}"));
                    c.spki_sha256 = key;
                    store.record_issuance(issuance(c, vec![]))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(results.iter().all(|r| matches!(r, Ok(()) | Err(StoreError::KeyInUse { .. }))), "{results:?}");
    assert_eq!(store.certificates_by_key(&key).expect("read").len(), 1);
}

/// A token withdrawn (found in a firmware image) is refused with the reason,
/// and writes nothing; a used, an unknown or an already withdrawn token is
/// left as it is.
pub fn a_withdrawn_token_enrolls_nothing(store: &dyn Store) {
    let (d, used_d) = (unique("WT-"), unique("WU-"));
    let (fresh, used) = (new_token(store, &d, 5_000), new_token(store, &used_d, 5_000));
    store.record_issuance(issuance(cert(&used_d), vec![consume(&used, &used_d, 1_500)])).expect("spend");
    let audit = audit_len(store);
    let done = store
        .block_keys(key_block(vec![], vec![fresh.clone(), used.clone(), "00".repeat(32)], false, vec![]))
        .expect("withdraw");
    assert_eq!(done.withdrawn, vec![d.clone()]);
    assert_eq!(audit_len(store), audit + 1, "one token.withdraw");
    let again = store.block_keys(key_block(vec![], vec![fresh.clone()], false, vec![])).expect("again");
    assert!(again.withdrawn.is_empty());
    let (certs, audit) = (store.count_certificates().expect("count"), audit_len(store));
    assert_eq!(
        store.record_issuance(issuance(cert(&d), vec![consume(&fresh, &d, 1_600)])),
        Err(StoreError::TokenWithdrawn { at: 3_000, reason: "found in fw.bin".into() })
    );
    assert_eq!((store.count_certificates().expect("count"), audit_len(store)), (certs, audit));
    assert_eq!(store.token(&fresh).expect("read").expect("kept").used_at, None);
}

/// The certificates expiring in a window: current ones (good, not renewed)
/// whose notAfter is in `[from, until)`, nothing else.
pub fn expiring_counts_current_certificates_in_the_window(store: &dyn Store) {
    // A window of its own, far from every other check's notAfter (2_000).
    let base = 4_000_000_000 + i64::from(std::process::id() % 1_000_000) * 1_000;
    let (from, until) = (base, base + 100);
    let before = store.count_expiring(from, until).expect("count");
    let at = |not_after: i64| {
        let mut c = cert("EXP-1");
        c.not_after = not_after;
        c
    };
    for c in [at(base), at(base + 99), at(base + 100), at(base - 1)] {
        store.record_issuance(issuance(c, vec![])).expect("issue");
    }
    assert_eq!(store.count_expiring(from, until).expect("count"), before + 2, "from is in, until is out");
    let mut revoked = at(base + 10);
    revoked.status = CertStatus::Revoked { at: 1_200, reason: 1 };
    store.record_issuance(issuance(revoked, vec![])).expect("issue");
    assert_eq!(store.count_expiring(from, until).expect("count"), before + 2, "a revoked one is not counted");
    let old = at(base + 20);
    store.record_issuance(issuance(old.clone(), vec![])).expect("issue");
    assert_eq!(store.count_expiring(from, until).expect("count"), before + 3);
    let (mut new, _) = renewal(&old.serial, "EXP-1", 1_500);
    new.not_after = base + 500;
    let pre = vec![Precondition::Supersede { serial: old.serial.clone(), now: 1_500 }];
    store.record_issuance(issuance(new, pre)).expect("renew");
    assert_eq!(store.count_expiring(from, until).expect("count"), before + 2, "a renewed one is not counted");
    assert_eq!(store.count_expiring(until, from).expect("count"), 0, "an empty window counts nothing");
}

/// The probe reads the schema version; the writer's stats count every
/// transaction's size and its commit.
pub fn health_probe_and_writer_stats(store: &dyn Store) {
    assert!(store.probe().expect("probe") >= 9, "the schema version, read from the database");
    let stats = store.writer_stats();
    let (batches, commits) = (stats.batch_size.snapshot(), stats.commit_seconds.snapshot());
    store.append_audit(event("stats", "x")).expect("append");
    let (b, c) = (stats.batch_size.snapshot(), stats.commit_seconds.snapshot());
    assert_eq!(b.count, batches.count + 1, "one more transaction");
    assert!(b.sum >= batches.sum + 1.0, "of at least one operation");
    assert_eq!(c.count, commits.count + 1, "one more commit timed");
    assert!(c.sum > commits.sum, "a commit takes some time");
}

/// A console login link is spent once: of sixteen callers racing with it, one
/// gets the link (and its audit entry); the others, a replay and an expired or
/// unknown link are refused and record nothing.
pub fn a_console_link_opens_one_session_once(store: &(dyn Store + 'static)) {
    let link = |hash: &str, expires_at: i64| crate::ConsoleLink {
        link_hash: hash.into(),
        admin: "alice".into(),
        role: "admin".into(),
        created_at: 1_000,
        expires_at,
        used_at: None,
    };
    let login = || AuditEvent {
        at: 1_500,
        actor: "admin:alice".into(),
        action: "console.login".into(),
        target: "console".into(),
        detail: String::new(),
    };
    let (live, old) = (unique("cl"), unique("cl"));
    store.create_console_link(link(&live, 2_000), login()).expect("create");
    store.create_console_link(link(&old, 1_200), login()).expect("create expired");
    assert_eq!(store.create_console_link(link(&live, 2_000), login()), Err(StoreError::TokenExists));
    let audit = audit_len(store);
    let results: Vec<Result<crate::ConsoleLink, StoreError>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16).map(|_| s.spawn(|| store.use_console_link(&live, 1_500, login()))).collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    assert_eq!((won[0].admin.as_str(), won[0].role.as_str(), won[0].used_at), ("alice", "admin", Some(1_500)));
    assert!(results.iter().all(|r| matches!(r, Ok(_) | Err(StoreError::TokenUsed { used_at: 1_500 }))), "{results:?}");
    assert_eq!(audit_len(store), audit + 1, "one console.login");
    assert_eq!(store.use_console_link(&live, 1_600, login()), Err(StoreError::TokenUsed { used_at: 1_500 }));
    assert_eq!(store.use_console_link(&old, 1_500, login()), Err(StoreError::TokenExpired { expires_at: 1_200 }));
    assert_eq!(store.use_console_link(&unique("cl"), 1_500, login()), Err(StoreError::TokenUnknown));
    assert_eq!(audit_len(store), audit + 1, "refusals record nothing");
    assert_eq!(store.console_link(&live).expect("read").expect("kept").used_at, Some(1_500));
    assert_eq!(store.console_link(&unique("cl")).expect("read"), None);
}

// The fleet console (issue #18).

/// A clock far from every other check's certificates (which expire by 20_000),
/// not on a whole hour: the expiry buckets meet inside hours.
const FLEET_NOW: i64 = 1_700_000_000 + 1_234;

fn day(n: i64) -> i64 {
    n * crate::DAY
}

fn states_delta(a: &crate::DeviceStates, b: &crate::DeviceStates) -> [i64; 7] {
    let v = |s: &crate::DeviceStates| {
        [s.born, s.commissioned, s.active, s.expiring, s.expired, s.revoked, s.total].map(|n| n as i64)
    };
    let (a, b) = (v(a), v(b));
    std::array::from_fn(|i| b[i] - a[i])
}

fn fleet_cert(device: &str, issued_at: i64, not_after: i64) -> CertRecord {
    CertRecord { issued_at, not_before: issued_at, not_after, ..cert(device) }
}

/// The summaries the writes kept equal a rebuild from the registry, at
/// several clocks (every check of the suite is followed by this one).
pub fn fleet_matches_rebuild(store: &dyn Store) {
    let nows = [0, 1_500, 30_000, FLEET_NOW, FLEET_NOW + day(20)];
    let kept: Vec<_> = nows.iter().map(|n| store.fleet_overview(*n, 400).expect("overview")).collect();
    store.rebuild_fleet().expect("rebuild");
    let rebuilt: Vec<_> = nows.iter().map(|n| store.fleet_overview(*n, 400).expect("overview")).collect();
    for ((k, r), now) in kept.iter().zip(&rebuilt).zip(nows) {
        assert_eq!(k, r, "the summaries kept by the writes equal the registry's at {now}");
        let s = &k.states;
        assert_eq!(s.total, s.born + s.commissioned + s.active + s.expiring + s.expired + s.revoked);
        assert_eq!(k.expiring_per_day.len(), 400);
        assert_eq!(k.expiring_per_day[..30].iter().sum::<u64>(), s.expiring, "the first 30 days are the expiring");
    }
}

/// Every state counted exactly, through every kind of write that moves a
/// device between states; the expiry timeline's buckets to the second; the
/// per-day series.
pub fn fleet_overview_counts_every_state(store: &dyn Store) {
    let now = FLEET_NOW;
    let o0 = store.fleet_overview(now, 365).expect("overview");
    assert_eq!(o0.expiring_per_day.len(), 365);
    assert_eq!(o0.issued_per_day.len(), 30);
    assert_eq!(o0.issued_per_day[29].day, crate::day_of(now), "today last");
    assert_eq!(o0.issued_per_day[0].day, crate::day_of(now) - day(29), "oldest first");
    let dev = |s: &str| unique(&format!("FL{s}-"));
    // born: a birth on the line, nothing else.
    let (b_id, st) = (unique("flb-"), unique("fls-"));
    let (born, born2) = (dev("born"), dev("born"));
    batch(store, &b_id, 10, &[born.clone(), born2.clone()]);
    station(store, &st, &[&b_id]);
    store
        .record_issuance(issuance(fleet_cert(&born, now, now + day(3650)), birth(&b_id, &st, &born, 5_000)))
        .expect("birth");
    // commissioned: born, then claimed.
    store
        .record_issuance(issuance(fleet_cert(&born2, now, now + day(3650)), birth(&b_id, &st, &born2, 5_000)))
        .expect("birth");
    let claim = |d: &str| Claim { device_serial: d.into(), manufacturer_spki: "f0".into(), birth_sha256: "b1".into() };
    store.claim_devices(vec![claim(&born2)], "claim", now, event("device.claim", &born2)).expect("claim");
    let o = store.fleet_overview(now, 365).expect("overview");
    assert_eq!(states_delta(&o0.states, &o.states), [1, 1, 0, 0, 0, 0, 2], "a birth; a claimed birth");
    // active, expiring, expired, with one renewal of the active one.
    let (active, expiring, expired, revoked) = (dev("act"), dev("exp"), dev("old"), dev("rev"));
    let a1 = fleet_cert(&active, now - day(2), now + day(40));
    store.record_issuance(issuance(a1.clone(), vec![])).expect("enroll");
    let (mut a2, _) = renewal(&a1.serial, &active, now);
    a2 = CertRecord { issued_at: now - day(1), not_before: now - day(1), not_after: now + day(100), ..a2 };
    let pre = vec![Precondition::Supersede { serial: a1.serial.clone(), now: now - day(1) }];
    store.record_issuance(issuance(a2.clone(), pre)).expect("renew");
    // Expires 10 days from now to the second: bucket 10; one second before: bucket 9.
    store.record_issuance(issuance(fleet_cert(&expiring, now, now + day(10)), vec![])).expect("expiring");
    let edge = dev("edge");
    store.record_issuance(issuance(fleet_cert(&edge, now, now + day(10) - 1), vec![])).expect("edge");
    store.record_issuance(issuance(fleet_cert(&expired, now - day(400), now - 1), vec![])).expect("expired");
    let r1 = fleet_cert(&revoked, now, now + day(200));
    store.record_issuance(issuance(r1.clone(), vec![])).expect("to revoke");
    let o = store.fleet_overview(now, 365).expect("overview");
    assert_eq!(states_delta(&o0.states, &o.states), [1, 1, 2, 2, 1, 0, 7]);
    let before = |d: usize| o.expiring_per_day[d] - o0.expiring_per_day[d];
    assert_eq!((before(9), before(10), before(11)), (1, 1, 0), "buckets to the second");
    assert_eq!((before(40), before(99), before(100), before(200)), (0, 0, 1, 1), "the renewal's, not the old one's");
    // The clock alone moves them: 11 days later the two expiring ones have expired.
    let later = store.fleet_overview(now + day(11), 365).expect("overview");
    let later0 = o0.states.expired + 3;
    assert_eq!(later.states.expired, later0, "expired with time");
    // revoked: the current certificate revoked; a claimed device revoked.
    store.revoke(&r1.serial, 1, now, event("revoke", &r1.serial)).expect("revoke");
    store.revoke_device(device_revocation(&born2, 1, now)).expect("revoke device");
    let o = store.fleet_overview(now, 365).expect("overview");
    assert_eq!(states_delta(&o0.states, &o.states), [1, 0, 1, 2, 1, 2, 7], "revoked: a certificate, a device");
    // A renewal is counted once as issued and once as renewed; births are not issued.
    let today = |v: &[crate::DayCount]| v[29].count;
    let yesterday = |v: &[crate::DayCount]| v[28].count;
    assert_eq!(today(&o.issued_per_day) - today(&o0.issued_per_day), 3, "3 enrolled today");
    assert_eq!(yesterday(&o.issued_per_day) - yesterday(&o0.issued_per_day), 1, "the renewal, yesterday");
    assert_eq!(yesterday(&o.renewed_per_day) - yesterday(&o0.renewed_per_day), 1);
    assert_eq!(today(&o.renewed_per_day), today(&o0.renewed_per_day));
    // Refusals: one by one, and summed up (counts what it sums).
    let refusal = |actor: &str, detail: &str| AuditEvent {
        at: now,
        actor: actor.into(),
        action: "refuse.enroll".into(),
        target: String::new(),
        detail: detail.into(),
    };
    store.record_refusal(Some(&b_id), refusal("station:x", "quota")).expect("refusal");
    store.record_refusal(None, refusal("device:*", "5 refusals (HTTP 403) between a and b, summed up")).expect("sum");
    store.append_audit(AuditEvent { action: "enroll".into(), ..refusal("device:x", "") }).expect("not a refusal");
    let o = store.fleet_overview(now, 365).expect("overview");
    assert_eq!(today(&o.refused_per_day) - today(&o0.refused_per_day), 6);
    // Batches and stations.
    let p = store.batch_progress().expect("progress");
    let p = p.iter().find(|p| p.batch.id == b_id).expect("the batch");
    assert_eq!((p.born, p.refusals, p.flags, p.batch.quota), (2, 1, 0, 10));
    let a = store.stations_activity().expect("stations");
    let a = a.iter().find(|a| a.name == st).expect("the station");
    assert_eq!(
        (a.births, a.last_activity, a.revoked_at, a.batches.clone()),
        (2, Some(5_000), None, vec![b_id.clone()])
    );
    // Revocations per CA.
    let stats = store.revocation_stats().expect("stats");
    let op = stats.iter().find(|c| c.ca == "operational").expect("operational");
    assert!(op.revoked >= 3 && op.last_revocation_at.is_some_and(|t| t >= now), "{op:?}");
    let n = store.next_crl_number("fleet-ca", event("crl.issue", "fleet-ca")).expect("crl number");
    let stats = store.revocation_stats().expect("stats");
    let ca = stats.iter().find(|c| c.ca == "fleet-ca").expect("a CA with only a CRL number");
    assert_eq!((ca.revoked, ca.crl_number, ca.last_revocation_at), (0, n, None));
    fleet_matches_rebuild(store);
}

/// The audit log searched: by action prefix, actor and target, newest
/// first, paged backwards; the page is capped.
pub fn audit_search_pages_and_filters(store: &(dyn Store + 'static)) {
    use crate::AuditFilter;
    let (action, actor) = (unique("fleettest."), unique("admin:"));
    for i in 0..5 {
        let t = if i % 2 == 0 { "even" } else { "odd" };
        store
            .append_audit(AuditEvent { actor: actor.clone(), target: format!("{action}/{t}"), ..event(&action, "") })
            .expect("append");
    }
    let f = |limit: u32, before: Option<u64>| AuditFilter {
        action_prefix: Some(action[..action.len() - 3].to_string()),
        actor: Some(actor.clone()),
        limit,
        before_seq: before,
        ..Default::default()
    };
    let p1 = store.audit_search(&f(2, None)).expect("page 1");
    assert_eq!(p1.len(), 2);
    assert!(p1[0].seq > p1[1].seq, "newest first");
    let p2 = store.audit_search(&f(2, Some(p1[1].seq))).expect("page 2");
    let p3 = store.audit_search(&f(2, Some(p2[1].seq))).expect("page 3");
    assert_eq!((p2.len(), p3.len()), (2, 1));
    let all: Vec<u64> = p1.iter().chain(&p2).chain(&p3).map(|e| e.seq).collect();
    assert!(all.windows(2).all(|w| w[0] > w[1]), "pages follow each other: {all:?}");
    assert!(p1.iter().chain(&p2).chain(&p3).all(|e| e.event.actor == actor && e.event.action == action));
    assert!(store.audit_search(&f(0, None)).expect("none").is_empty());
    let odd = AuditFilter { target: Some(format!("{action}/odd")), limit: 10, ..Default::default() };
    assert_eq!(store.audit_search(&odd).expect("by target").len(), 2);
    let other = AuditFilter { action_prefix: Some(format!("{action}x")), limit: 10, ..Default::default() };
    assert!(store.audit_search(&other).expect("no match").is_empty());
    // The cap: more than a page exists, a page is all that comes.
    std::thread::scope(|sc| {
        for _ in 0..16 {
            sc.spawn(|| {
                for _ in 0..63 {
                    store.append_audit(event("fleettest.cap", "")).expect("append");
                }
            });
        }
    });
    let cap = AuditFilter { action_prefix: Some("fleettest.cap".into()), limit: 5_000, ..Default::default() };
    assert_eq!(store.audit_search(&cap).expect("capped").len(), crate::MAX_AUDIT_PAGE as usize);
    let all = store.audit_search(&AuditFilter { limit: u32::MAX, ..Default::default() }).expect("unfiltered");
    assert_eq!(all.len(), crate::MAX_AUDIT_PAGE as usize);
    assert_eq!(all[0].seq, audit_len(store), "the newest first");
}

/// The events recorded after `from`: (kind, subject, data as JSON).
fn events_since(store: &dyn Store, from: u64) -> Vec<(String, String, serde_json::Value)> {
    store
        .events_after(from, 10_000)
        .expect("events")
        .into_iter()
        .map(|e| (e.kind, e.subject, serde_json::from_str(&e.data).expect("event data is JSON")))
        .collect()
}

/// Each change a webhook reports writes its event in its own transaction;
/// a change refused (rolled back) writes none. Seqs grow one by one.
pub fn events_are_recorded_with_their_change_and_only_then(store: &dyn Store) {
    let start = store.last_event_seq().expect("last seq");
    // A certificate revoked.
    let c = cert(&unique("EV-"));
    store.record_issuance(issuance(c.clone(), vec![])).expect("issue");
    store.revoke(&c.serial, 1, 1_500, event("revoke", &c.serial)).expect("revoke");
    // Refused changes: no event.
    assert!(store.revoke(&c.serial, 1, 1_600, event("revoke", &c.serial)).is_err());
    assert!(store.revoke("5eunknown", 1, 1_600, event("revoke", "x")).is_err());
    let nobody = unique("EV-NOBODY-");
    let rev = |d: &str| DeviceRevocation {
        device_serial: d.into(),
        reason: 0,
        at: 1_700,
        actor: "test".into(),
        detail: String::new(),
    };
    assert!(matches!(store.revoke_device(rev(&nobody)), Err(StoreError::NothingToRevoke { .. })));
    assert!(store.revoke_station(&unique("EV-NO-STATION-"), 1_700, event("x", "y")).is_err());
    assert_eq!(events_since(store, start).len(), 1, "refusals recorded no event");
    // A device revoked: each certificate, then the device.
    let d = unique("EV-D-");
    let (d1, d2) = (cert(&d), cert(&d));
    store.record_issuance(issuance(d1.clone(), vec![])).expect("issue");
    store.record_issuance(issuance(d2.clone(), vec![])).expect("issue");
    store.revoke_device(rev(&d)).expect("revoke device");
    // A station revoked.
    let b = unique("EV-B-");
    let listed = vec![format!("{b}-0")];
    batch(store, &b, 1, &listed);
    let st = unique("EV-ST-");
    let st_cert = station(store, &st, &[&b]);
    store.revoke_station(&st, 1_800, event("station.revoke", &st)).expect("revoke station");
    // A sync flags a clone and an overbuild (a second station, same batch).
    let st2 = unique("EV-ST2-");
    station(store, &st2, &[&b]);
    let entry = |serial: &str| SyncEntry {
        device_serial: serial.into(),
        cert: cert(serial),
        outside_delegation: false,
        key_not_canonical: false,
    };
    let sync = |entries: Vec<SyncEntry>, from: u64| SyncUpload {
        station: st2.clone(),
        batch: b.clone(),
        from_seq: from,
        from_head: if from == 1 { crate::GENESIS_HASH.to_string() } else { "h1".into() },
        to_seq: from + entries.len() as u64 - 1,
        to_head: "h1".into(),
        entries,
        now: 1_900,
        audit: event("sync", &b),
    };
    let out = store.apply_sync(sync(vec![entry(&listed[0]), entry(&listed[0])], 1)).expect("sync");
    assert_eq!(out.flagged.len(), 1);
    // Out of order: refused, no event.
    assert!(store.apply_sync(sync(vec![entry(&listed[0])], 7)).is_err());

    let evs = events_since(store, start);
    let kinds: Vec<&str> = evs.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            crate::EVENT_CERT_REVOKED,
            crate::EVENT_CERT_REVOKED,
            crate::EVENT_CERT_REVOKED,
            crate::EVENT_DEVICE_REVOKED,
            crate::EVENT_STATION_REVOKED,
            crate::EVENT_BATCH_FLAGGED,
        ]
    );
    assert_eq!(evs[0].1, c.serial);
    assert_eq!(evs[0].2["reason_code"], 1);
    assert_eq!(evs[0].2["device_serial"], serde_json::json!(c.device_serial));
    assert_eq!(evs[0].2["revoked_at"], "1970-01-01T00:25:00Z");
    assert_eq!((evs[1].1.as_str(), evs[2].1.as_str()), (d1.serial.as_str(), d2.serial.as_str()));
    assert_eq!(evs[3].1, d);
    assert_eq!(evs[3].2["certificates"], serde_json::json!([d1.serial, d2.serial]));
    assert_eq!(evs[4].1, st);
    assert_eq!(evs[4].2["cert_serial"], st_cert.serial.as_str());
    assert_eq!(evs[5].2["flag"], "clone");
    assert_eq!(evs[5].2["cert_serial"], out.flagged[0].0.as_str());
    assert_eq!(evs[5].2["station"], st2.as_str());
    let seqs: Vec<u64> = store.events_after(start, 100).expect("events").iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (start + 1..=start + 6).collect::<Vec<_>>(), "seqs grow one by one");
    assert_eq!(store.last_event_seq().expect("last"), start + 6);
    assert_eq!(store.events_after(start, 2).expect("page").len(), 2, "a page holds at most its limit");
}

/// Each webhook has its own cursor; one owner at a time holds its lease
/// (until it ends or is released); a cursor never moves back.
pub fn webhook_cursors_are_per_webhook_and_leased_to_one_owner(store: &dyn Store) {
    let (a, b) = (unique("hook-a-"), unique("hook-b-"));
    let last = store.last_event_seq().expect("last");
    assert_eq!(store.webhook_cursor(&a).expect("cursor"), None);
    assert_eq!(store.lease_webhook(&a, "node1", 100, 160).expect("lease"), Some(last), "a new webhook starts now");
    assert_eq!(store.lease_webhook(&a, "node2", 150, 210).expect("lease"), None, "held by node1 until 160");
    assert_eq!(store.lease_webhook(&b, "node2", 150, 210).expect("lease"), Some(last), "another webhook is free");
    // Something happens: both see it after their cursors.
    let c = cert(&unique("EVC-"));
    store.record_issuance(issuance(c.clone(), vec![])).expect("issue");
    store.revoke(&c.serial, 0, 1_000, event("revoke", &c.serial)).expect("revoke");
    let seq = store.last_event_seq().expect("last");
    assert_eq!(seq, last + 1);
    store.advance_webhook(&a, "node1", seq, 170).expect("advance a");
    assert_eq!(store.webhook_cursor(&a).expect("cursor"), Some(seq));
    assert_eq!(store.webhook_cursor(&b).expect("cursor"), Some(last), "b's cursor is its own");
    assert_eq!(
        store.advance_webhook(&a, "node2", seq, 170),
        Err(StoreError::WebhookLeaseLost { webhook: a.clone() }),
        "only the lease holder advances"
    );
    store.advance_webhook(&a, "node1", last, 170).expect("advance back is a no-op");
    assert_eq!(store.webhook_cursor(&a).expect("cursor"), Some(seq), "never back");
    // The lease ended (170 < 171): node2 takes it, node1 has lost it.
    assert_eq!(store.lease_webhook(&a, "node2", 171, 230).expect("lease"), Some(seq));
    assert_eq!(store.advance_webhook(&a, "node1", seq, 240), Err(StoreError::WebhookLeaseLost { webhook: a.clone() }));
    // Released: anyone may take it at once.
    store.release_webhook(&a, "node2").expect("release");
    assert_eq!(store.lease_webhook(&a, "node1", 172, 232).expect("lease"), Some(seq));
    store.release_webhook(&a, "node2").expect("releasing a lease one does not hold changes nothing");
    assert_eq!(store.lease_webhook(&a, "node2", 173, 233).expect("lease"), None);
}

/// Current certificates expiring within the threshold get one event per
/// threshold, read in pages from a resume point; revoked and renewed ones,
/// expired ones and those beyond the window get none.
pub fn expiring_certificates_are_announced_once_per_threshold_in_pages(store: &dyn Store) {
    // A time no other check uses.
    let now: i64 = 4_000_000_000;
    let day = 86_400;
    let start = store.last_event_seq().expect("last");
    let dev = unique("EXP-");
    let mk = |not_after: i64| {
        let mut c = cert(&dev);
        c.not_after = not_after;
        store.record_issuance(issuance(c.clone(), vec![])).expect("issue");
        c
    };
    let soon: Vec<CertRecord> = (1..=5).map(|i| mk(now + i * day)).collect();
    let _expired = mk(now - day);
    let _far = mk(now + 40 * day);
    let revoked = mk(now + 2 * day);
    store.revoke(&revoked.serial, 0, now, event("revoke", &revoked.serial)).expect("revoke");
    let old = mk(now + 3 * day);
    let mut renewal = cert(&dev);
    renewal.not_after = now + 300 * day;
    store
        .record_issuance(issuance(renewal, vec![Precondition::Supersede { serial: old.serial.clone(), now }]))
        .expect("renew");
    let after_setup = store.last_event_seq().expect("last");
    assert_eq!(after_setup, start + 1, "only the revocation so far");
    // Pages of 2: the window (now, now + 30 days] holds 7 certificates, 5 current.
    let mut scan = ExpiringScan { now, within_days: 30, after: None, limit: 2 };
    let mut recorded = 0;
    let mut pages = 0;
    loop {
        let n = store.note_expiring(scan.clone()).expect("note");
        recorded += n.recorded;
        pages += 1;
        match n.next {
            Some(next) => scan.after = Some(next),
            None => break,
        }
        assert!(pages < 10, "the pages end");
    }
    assert_eq!(recorded, 5);
    assert_eq!(pages, 4, "7 rows in pages of 2");
    let evs = events_since(store, after_setup);
    let serials: Vec<&str> = evs.iter().map(|(_, s, _)| s.as_str()).collect();
    let want: Vec<&str> = soon.iter().map(|c| c.serial.as_str()).collect();
    assert_eq!(serials, want, "in notAfter order, the current ones only");
    assert!(evs.iter().all(|(k, _, d)| k == crate::EVENT_CERT_EXPIRING && d["within_days"] == 30));
    // Again: nothing new. Another threshold: announced again, at it.
    let n = store.note_expiring(ExpiringScan { now, within_days: 30, after: None, limit: 100 }).expect("again");
    assert_eq!(n, ExpiringNoted { recorded: 0, next: None });
    let n = store.note_expiring(ExpiringScan { now, within_days: 2, after: None, limit: 100 }).expect("7 days");
    assert_eq!(n.recorded, 2, "the two current certificates within 2 days");
    assert_eq!(store.last_event_seq().expect("last"), after_setup + 7);
}

/// Production-record entries for `certs`, each inside its delegation.
fn synced(certs: &[&CertRecord]) -> Vec<SyncEntry> {
    certs
        .iter()
        .map(|c| SyncEntry {
            device_serial: c.device_serial.clone().expect("device"),
            cert: (*c).clone(),
            outside_delegation: false,
            key_not_canonical: false,
        })
        .collect()
}
