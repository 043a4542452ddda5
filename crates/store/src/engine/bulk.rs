//! A group commit's births, judged and written in bulk.
//!
//! One by one, a birth costs six statements in the group's transaction (its
//! checks, the quota, the birth, the certificate, the device's summary read
//! and written): on PostgreSQL each is a round trip to the backend. When every
//! operation of a group is a birth and no two of them share a device, a key or
//! a certificate serial, no birth of the group can change what another one's
//! checks read, but for the quota of a batch they share, which is counted in
//! memory. Then the group reads everything its births' rules need in one
//! statement (per [`MAX_SHIFT`]-bounded chunk), the device summaries in
//! another, judges each birth in order with the very rules the one-by-one path
//! uses ([`judge_birth`], [`key_free_in`], the fleet's summary), and writes the
//! births that passed in a few multi-row statements: chunks of powers of two
//! on SQLite (few shapes to prepare), of their exact size on PostgreSQL (one
//! round trip per table for a group of up to 64,
//! [`super::Writer::exact_chunks`]). A refused birth has written nothing. A
//! write that fails (a conflict no read showed) makes the group run again one
//! by one, with savepoints ([`Abort::Redo`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;

use super::fleet::{self, kept_and_summary_in, moved, summary_read, upsert_args, Deltas, Moved, UPSERT_DEVICES};
use super::writes::{
    cert_args, judge_birth, key_free_in, multi_insert, Abort, Tx, BIRTH_KEY_COL, BIRTH_READ_OF, CERT_TABLE,
};
use super::{Arg, Row, SqlExt as _};
use crate::ops::{Done, Op};
use crate::{Issuance, Precondition, StoreError};

/// Most rows in one statement: 2^`MAX_SHIFT`. A read's chunks are powers of
/// two, so that each has one of a few shapes (each is prepared once per
/// connection); so are a write's, unless the connection asks for exact sizes
/// ([`super::Writer::exact_chunks`]).
pub(super) const MAX_SHIFT: usize = 6;

/// Most rows in one statement.
pub(super) const MAX_ROWS: usize = 1 << MAX_SHIFT;

/// One birth of the group.
pub(super) struct Birth<'a> {
    issuance: &'a Issuance,
    batch: &'a str,
    station: &'a str,
    device: &'a str,
    now: i64,
}

/// The group's births, if the group can be judged in bulk: two operations
/// or more, each recording a certificate whose one precondition is the
/// birth of the certificate's own device, no two with the same device, key
/// or serial.
pub(super) fn births(ops: &[Op]) -> Option<Vec<Birth<'_>>> {
    if ops.len() < 2 {
        return None;
    }
    let (mut devices, mut keys, mut serials) = (HashSet::new(), HashSet::new(), HashSet::new());
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let Op::Issue(i) = op else { return None };
        let [Precondition::Birth { batch, station, device_serial, now }] = i.preconditions.as_slice() else {
            return None;
        };
        if i.cert.device_serial.as_deref() != Some(device_serial.as_str())
            || !devices.insert(device_serial.as_str())
            || !keys.insert(i.cert.spki_sha256.as_str())
            || !serials.insert(i.cert.serial.as_str())
        {
            return None;
        }
        out.push(Birth { issuance: i, batch, station, device: device_serial, now: *now });
    }
    Some(out)
}

/// `items` cut for writes: in chunks of powers of two, largest first, or
/// (`exact`) of [`MAX_ROWS`] and the rest.
fn chunks<T>(mut items: &[T], exact: bool) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let n = match exact {
            true => items.len().min(MAX_ROWS),
            false => 1 << (usize::BITS - 1 - items.len().leading_zeros()).min(MAX_SHIFT as u32),
        };
        let (chunk, rest) = items.split_at(n);
        items = rest;
        Some(chunk)
    })
}

/// `items` cut for reads: chunks of 2^[`MAX_SHIFT`], the last one filled up
/// to the next power of two with its last item again (a row read twice reads
/// the same), each with its shift.
fn padded<T>(items: &[T]) -> impl Iterator<Item = (usize, Vec<&T>)> {
    items.chunks(1 << MAX_SHIFT).map(|chunk| {
        let shift = chunk.len().next_power_of_two().trailing_zeros() as usize;
        let mut v: Vec<&T> = chunk.iter().collect();
        let last = v[v.len() - 1];
        v.resize(1 << shift, last);
        (shift, v)
    })
}

/// `WITH v(names) AS (VALUES ($1, ...), ...)` of 2^`shift` rows.
fn values(names: &[&str], shift: usize) -> String {
    let cols = names.len();
    let rows: Vec<String> = (0..1usize << shift)
        .map(|r| {
            let args: Vec<String> = (1..=cols).map(|c| format!("${}", r * cols + c)).collect();
            format!("({})", args.join(", "))
        })
        .collect();
    format!("WITH v({}) AS (VALUES {}) ", names.join(", "), rows.join(", "))
}

/// `BIRTH_READS[shift]`: [`BIRTH_READ_OF`] for 2^`shift` births (station,
/// batch, device, key each), with the device last ([`BIRTH_DEVICE_COL`]).
static BIRTH_READS: LazyLock<Vec<String>> = LazyLock::new(|| {
    (0..=MAX_SHIFT)
        .map(|shift| {
            values(&["vst", "vb", "vsn", "vspki"], shift)
                + &BIRTH_READ_OF
                    .replace("{st}", "v.vst")
                    .replace("{b}", "v.vb")
                    .replace("{sn}", "v.vsn")
                    .replace("{spki}", "v.vspki")
                    .replace("{more}", ", v.vsn")
                    .replace("{from}", "v")
        })
        .collect()
});

/// The column of a [`BIRTH_READS`] row naming its birth's device.
const BIRTH_DEVICE_COL: usize = 17;

/// `SUMMARY_READS[shift]`: the fleet summaries of 2^`shift` devices, with the device last.
static SUMMARY_READS: LazyLock<Vec<String>> = LazyLock::new(|| {
    (0..=MAX_SHIFT).map(|shift| values(&["vsn"], shift) + &summary_read("v.vsn", "v", ", v.vsn")).collect()
});

/// The column of a [`SUMMARY_READS`] row naming its device.
const SUMMARY_DEVICE_COL: usize = 11;

const BIRTH_TABLE: &str = "births (device_serial, cert_serial, batch_id, station, born_at)";

/// `BIRTH_INSERTS[n]`: the insert of `n` births (1 to [`MAX_ROWS`]; 0 is
/// never asked for).
static BIRTH_INSERTS: LazyLock<Vec<String>> =
    LazyLock::new(|| (0..=MAX_ROWS).map(|n| multi_insert(BIRTH_TABLE, n, 5)).collect());

/// `CERT_INSERTS[n]`: the insert of `n` certificates (1 to [`MAX_ROWS`]; 0 is
/// never asked for).
static CERT_INSERTS: LazyLock<Vec<String>> =
    LazyLock::new(|| (0..=MAX_ROWS).map(|n| multi_insert(CERT_TABLE, n, 16)).collect());

/// Rows read per device, by the column naming it.
fn by_device(rows: Vec<Row>, col: usize, out: &mut HashMap<String, Vec<Row>>) -> Result<(), StoreError> {
    for mut row in rows {
        let device = row.text(col)?;
        out.entry(device).or_default().push(row);
    }
    Ok(())
}

impl Tx<'_> {
    /// Judge and record `births` (from [`births`]), each operation's result in
    /// order.
    pub(super) fn births_in_bulk(&mut self, births: &[Birth<'_>]) -> Result<Vec<Result<Done, StoreError>>, Abort> {
        // A read that fails: the one-by-one run says whose failure it is.
        let redo = |_: StoreError| Abort::Redo;
        let mut checks = HashMap::with_capacity(births.len());
        for (shift, chunk) in padded(births) {
            let args: Vec<Arg<'_>> = chunk
                .iter()
                .flat_map(|b| {
                    [b.station.into(), b.batch.into(), b.device.into(), b.issuance.cert.spki_sha256.as_str().into()]
                })
                .collect();
            by_device(self.w.all(&BIRTH_READS[shift], &args).map_err(redo)?, BIRTH_DEVICE_COL, &mut checks)
                .map_err(redo)?;
        }
        let counted: Vec<&str> =
            births.iter().filter(|b| fleet::is_device_cert(&b.issuance.cert)).map(|b| b.device).collect();
        let mut summaries = HashMap::with_capacity(counted.len());
        for (shift, chunk) in padded(&counted) {
            let args: Vec<Arg<'_>> = chunk.iter().map(|d| (**d).into()).collect();
            by_device(self.w.all(&SUMMARY_READS[shift], &args).map_err(redo)?, SUMMARY_DEVICE_COL, &mut summaries)
                .map_err(redo)?;
        }

        // Judged in order, as one by one: the births before each one in the
        // group count against its batch's quota.
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        let mut results = Vec::with_capacity(births.len());
        let mut recorded: Vec<&Birth<'_>> = Vec::with_capacity(births.len());
        let mut upserts = Vec::new();
        for b in births {
            let mut deltas = Deltas::default();
            let judged = self.judge(b, &mut checks, &mut summaries, &counts, &mut deltas);
            match judged {
                Ok(up) => {
                    *counts.entry(b.batch).or_default() += 1;
                    self.tx_deltas.merge(deltas);
                    if let Some(s) = up {
                        upserts.push((b.device, s));
                    }
                    recorded.push(b);
                    results.push(Ok(Done::Unit));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if recorded.is_empty() {
            return Ok(results);
        }

        // Written: a failure here leaves the transaction changed, so the group
        // runs again one by one.
        let failed = |_: StoreError| Abort::Redo;
        for (batch, n) in &counts {
            let counted = self
                .w
                .run(
                    "UPDATE batches SET issued = issued + $2 WHERE id = $1 AND issued + $2 <= quota",
                    &[(*batch).into(), Arg::Int(*n)],
                )
                .map_err(failed)?;
            if counted != 1 {
                return Err(Abort::Redo);
            }
        }
        let exact = self.w.exact_chunks();
        for chunk in chunks(&recorded, exact) {
            let args: Vec<Arg<'_>> = chunk
                .iter()
                .flat_map(|b| {
                    let cert: &str = &b.issuance.cert.serial;
                    [b.device.into(), cert.into(), b.batch.into(), b.station.into(), Arg::Int(b.now)]
                })
                .collect();
            self.w.run(&BIRTH_INSERTS[chunk.len()], &args).map_err(failed)?;
            let args: Vec<Arg<'_>> = chunk.iter().flat_map(|b| cert_args(&b.issuance.cert, false)).collect();
            self.w.run(&CERT_INSERTS[chunk.len()], &args).map_err(failed)?;
        }
        for chunk in chunks(&upserts, exact) {
            let args: Vec<Arg<'_>> = chunk.iter().flat_map(|(d, s)| upsert_args(d, s)).collect();
            self.w.run(&UPSERT_DEVICES[chunk.len()], &args).map_err(failed)?;
        }
        Ok(results)
    }

    /// One birth's rules on what the group read, after the group's births
    /// `counts` (per batch): its audit entry appended, its device's summary
    /// moved in `deltas`; the summary to write, if it changed.
    fn judge(
        &mut self,
        b: &Birth<'_>,
        checks: &mut HashMap<String, Vec<Row>>,
        summaries: &mut HashMap<String, Vec<Row>>,
        counts: &BTreeMap<&str, i64>,
        deltas: &mut Deltas,
    ) -> Result<Option<fleet::Summary>, StoreError> {
        let mut rows = checks.remove(b.device).unwrap_or_default();
        let r = rows.first_mut().ok_or_else(|| StoreError::Database("the birth checks read no row".into()))?;
        let earlier = counts.get(b.batch).copied().unwrap_or(0);
        judge_birth(r, (b.batch, b.station, b.device), b.now, earlier)?;
        key_free_in(&mut rows, BIRTH_KEY_COL, &b.issuance.cert)?;
        let mut up = None;
        if fleet::is_device_cert(&b.issuance.cert) {
            let rows = summaries.remove(b.device).unwrap_or_default();
            let (old, new) = kept_and_summary_in(rows, Some(&b.issuance.cert))?;
            match moved(old, new, deltas) {
                Moved::Same => {}
                Moved::To(s) => up = Some(s),
                Moved::Gone => return Err(StoreError::Database("a device lost its summary at its birth".into())),
            }
        }
        let (head, entries) = (self.head.clone(), self.audit.len());
        if let Err(e) = self.append(&b.issuance.audit) {
            self.head = head;
            self.audit.truncate(entries);
            return Err(e);
        }
        Ok(up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_powers_of_two_largest_first_or_exact_and_cover_every_item() {
        let items: Vec<usize> = (0..203).collect();
        let sizes = |exact| chunks(&items, exact).map(<[usize]>::len).collect::<Vec<_>>();
        assert_eq!(sizes(false), vec![64, 64, 64, 8, 2, 1]);
        assert_eq!(sizes(true), vec![64, 64, 64, 11]);
        for exact in [false, true] {
            let flat: Vec<usize> = chunks(&items, exact).flat_map(|c| c.iter().copied()).collect();
            assert_eq!(flat, items);
            assert_eq!(chunks::<u8>(&[], exact).count(), 0);
        }
        assert_eq!(chunks(&items[..13], true).map(<[usize]>::len).collect::<Vec<_>>(), vec![13]);
        let got: Vec<(usize, Vec<usize>)> =
            padded(&items[..67]).map(|(s, c)| (s, c.into_iter().copied().collect())).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (6, (0..64).collect()));
        assert_eq!(got[1], (2, vec![64, 65, 66, 66]), "the last chunk filled up with its last item");
        assert_eq!(padded(&items[..1]).map(|(s, c)| (s, c.len())).collect::<Vec<_>>(), vec![(0, 1)]);
    }

    #[test]
    fn the_bulk_statements_number_their_arguments_in_order() {
        assert_eq!(values(&["a", "b"], 1), "WITH v(a, b) AS (VALUES ($1, $2), ($3, $4)) ");
        assert!(BIRTH_READS[2].contains("($13, $14, $15, $16))"), "{}", BIRTH_READS[2]);
        assert!(BIRTH_INSERTS[1].ends_with("VALUES ($1, $2, $3, $4, $5)"), "{}", BIRTH_INSERTS[1]);
        assert!(CERT_INSERTS[3].ends_with(", $48)"), "{}", CERT_INSERTS[3]);
        assert_eq!(UPSERT_DEVICES[13].matches('(').count(), 1 + 13 + 1, "the columns, 13 rows, the conflict's target");
    }
}
