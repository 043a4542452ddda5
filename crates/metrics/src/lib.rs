//! iotpki metrics: counters, gauges and histograms, with labels, and the
//! Prometheus text exposition format (version 0.0.4) they are scraped in.
//!
//! Written here rather than taken from `prometheus-client`: that crate keys a
//! labelled family by a hashed, owned label set behind a lock on every
//! observation, and brings its own encoder traits; we need a handful of
//! metrics whose label values all come from short closed sets (the
//! authority's issuance paths and refusal families, route templates, status
//! classes, listener kinds), and nothing but std (the store links this crate).
//!
//! On the hot path an observation is one or two relaxed atomic adds: a
//! [`Counter`] or [`Gauge`] held directly is an atomic; a [`Family`] (one
//! series per label set) finds its series under a read lock by comparing a
//! few short strings, and only the first observation of a label set takes the
//! write lock. A family holds at most its `max_series` label sets: past that,
//! every new label set is counted under `other`, so a bug that put free text
//! in a label cannot grow the scrape without bound.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The content type of [`Text`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Seconds: from 1 ms to 10 s (request latencies).
pub const SECONDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Seconds: from 100 µs to 1 s (a database commit, an fsync).
pub const COMMIT_SECONDS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// Powers of two up to 512 (group-commit batch sizes).
pub const BATCH_SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// A count that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Zero.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// One more.
    pub fn inc(&self) {
        self.add(1);
    }

    /// `n` more.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Zero.
    pub const fn new() -> Self {
        Self(AtomicI64::new(0))
    }

    /// One more.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// One less.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// Set to `v`.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The value now.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Observations counted in buckets by upper bound, with their sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), the last one for above every bound.
    counts: Box<[AtomicU64]>,
    /// The sum's f64 bits.
    sum: AtomicU64,
}

/// A histogram as read: cumulative buckets ending with `+Inf`, the sum and the count.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound, observations at or below it), ascending, the last bound `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations (the `+Inf` bucket's count).
    pub count: u64,
}

impl Histogram {
    /// Empty, with these upper bounds (ascending; `+Inf` is implied).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum: AtomicU64::new(0) }
    }

    /// Count `v` (a NaN is not counted).
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        let i = self.bounds.iter().position(|b| v <= *b).unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let mut cur = self.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(cur) + v).to_bits();
            match self.sum.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
    }

    /// Count a duration, in seconds.
    pub fn observe_duration(&self, d: std::time::Duration) {
        self.observe(d.as_secs_f64());
    }

    /// The buckets (cumulative), sum and count now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0u64;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            acc = acc.saturating_add(c.load(Ordering::Relaxed));
            buckets.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), acc));
        }
        HistogramSnapshot { buckets, sum: f64::from_bits(self.sum.load(Ordering::Relaxed)), count: acc }
    }
}

/// The label value every label set past a family's `max_series` is counted under.
pub const OVERFLOW: &str = "other";

type Series<M> = Vec<(Box<[Box<str>]>, Arc<M>)>;

/// One metric per label set: the label names are fixed, the values found as
/// they come (at most `max_series` sets, then [`OVERFLOW`]).
pub struct Family<M> {
    labels: &'static [&'static str],
    max_series: usize,
    make: fn() -> M,
    series: RwLock<Series<M>>,
}

impl<M> std::fmt::Debug for Family<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family").field("labels", &self.labels).finish_non_exhaustive()
    }
}

impl<M> Family<M> {
    /// A family with these label names, each new series made by `make`.
    pub fn new(labels: &'static [&'static str], max_series: usize, make: fn() -> M) -> Self {
        Self { labels, max_series: max_series.max(1), make, series: RwLock::new(Vec::new()) }
    }

    /// The label names.
    pub fn labels(&self) -> &'static [&'static str] {
        self.labels
    }

    /// The metric of the label set `values` (one value per label name; a
    /// missing one is empty), made when first asked for.
    pub fn with(&self, values: &[&str]) -> Arc<M> {
        let same = |k: &[Box<str>], vs: &[&str]| k.len() == vs.len() && k.iter().zip(vs).all(|(a, b)| a.as_ref() == *b);
        let padded: Vec<&str>;
        let values = if values.len() == self.labels.len() {
            values
        } else {
            padded = (0..self.labels.len()).map(|i| values.get(i).copied().unwrap_or("")).collect();
            &padded
        };
        {
            let s = self.series.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((_, m)) = s.iter().find(|(k, _)| same(k, values)) {
                return m.clone();
            }
        }
        let mut s = self.series.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, m)) = s.iter().find(|(k, _)| same(k, values)) {
            return m.clone();
        }
        let overflow: Vec<&str>;
        let values = if s.len() >= self.max_series {
            overflow = vec![OVERFLOW; self.labels.len()];
            if let Some((_, m)) = s.iter().find(|(k, _)| same(k, &overflow)) {
                return m.clone();
            }
            &overflow
        } else {
            values
        };
        let m = Arc::new((self.make)());
        s.push((values.iter().map(|v| Box::<str>::from(*v)).collect(), m.clone()));
        m
    }

    /// Every series (label values, metric), sorted by label values.
    pub fn series(&self) -> Vec<(Vec<String>, Arc<M>)> {
        let s = self.series.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<(Vec<String>, Arc<M>)> =
            s.iter().map(|(k, m)| (k.iter().map(|v| v.to_string()).collect(), m.clone())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

impl Family<Counter> {
    /// The count of the label set `values` now (0 when never counted).
    pub fn get(&self, values: &[&str]) -> u64 {
        let s = self.series.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        s.iter()
            .find(|(k, _)| k.len() == values.len() && k.iter().zip(values).all(|(a, b)| a.as_ref() == *b))
            .map_or(0, |(_, m)| m.get())
    }
}

/// The Prometheus text format (0.0.4), written metric by metric: each with
/// its `# HELP` and `# TYPE` lines, then its samples.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
}

/// Whether `s` is a valid metric or label name.
fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A label value as the text format quotes it: `\`, `"` and newline escaped.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value: integers without a fraction, `+Inf`, `-Inf`, `NaN`.
fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

impl Text {
    /// Nothing written yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// What was written.
    pub fn finish(self) -> String {
        self.out
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        debug_assert!(valid_name(name), "metric name {name}");
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                debug_assert!(valid_name(k), "label name {k}");
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label_value(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", value(v));
    }

    /// A counter without labels (`name` ends in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.header(name, help, "counter");
        self.sample(name, &[], v as f64);
    }

    /// A labelled counter, one sample per series (none yet: only the header).
    pub fn counters(&mut self, name: &str, help: &str, family: &Family<Counter>) {
        self.header(name, help, "counter");
        for (values, c) in family.series() {
            let labels: Vec<(&str, &str)> =
                family.labels.iter().copied().zip(values.iter().map(String::as_str)).collect();
            self.sample(name, &labels, c.get() as f64);
        }
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.header(name, help, "gauge");
        self.sample(name, &[], v);
    }

    /// A gauge with one label, one sample per (label value, value).
    pub fn gauges(&mut self, name: &str, help: &str, label: &str, samples: &[(String, f64)]) {
        self.header(name, help, "gauge");
        for (l, v) in samples {
            self.sample(name, &[(label, l)], *v);
        }
    }

    /// A gauge with labels (`samples`: label values in the order of `labels`, value).
    pub fn gauges_by(&mut self, name: &str, help: &str, labels: &[&str], samples: &[(Vec<&str>, f64)]) {
        self.header(name, help, "gauge");
        for (values, v) in samples {
            let l: Vec<(&str, &str)> = labels.iter().copied().zip(values.iter().copied()).collect();
            self.sample(name, &l, *v);
        }
    }

    fn histogram_samples(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        for (le, n) in &h.buckets {
            let le = value(*le);
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, *n as f64);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, h.count as f64);
    }

    /// A histogram without labels.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, help, "histogram");
        self.histogram_samples(name, &[], &h.snapshot());
    }

    /// A labelled histogram, one set of buckets per series.
    pub fn histograms(&mut self, name: &str, help: &str, family: &Family<Histogram>) {
        self.header(name, help, "histogram");
        for (values, h) in family.series() {
            let labels: Vec<(&str, &str)> =
                family.labels.iter().copied().zip(values.iter().map(String::as_str)).collect();
            self.histogram_samples(name, &labels, &h.snapshot());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn label_values_are_escaped_and_help_lines_too() {
        assert_eq!(escape_label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label_value("x\ny"), "x\\ny");
        let f: Family<Counter> = Family::new(&["path", "reason"], 8, Counter::new);
        f.with(&["en\"roll", "back\\slash\nnl"]).add(3);
        let mut t = Text::new();
        t.counters("iotpki_x_total", "a help\nwith \\ two lines", &f);
        let out = t.finish();
        assert_eq!(
            out,
            "# HELP iotpki_x_total a help\\nwith \\\\ two lines\n# TYPE iotpki_x_total counter\n\
             iotpki_x_total{path=\"en\\\"roll\",reason=\"back\\\\slash\\nnl\"} 3\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf_sum_and_count() {
        static B: &[f64] = &[0.5, 1.0, 2.0];
        let h = Histogram::new(B);
        for v in [0.1, 0.5, 0.7, 3.0, 100.0, f64::NAN] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.5, 2), (1.0, 3), (2.0, 3), (f64::INFINITY, 5)]);
        assert_eq!(s.count, 5, "a NaN is not counted");
        assert!((s.sum - 104.3).abs() < 1e-9, "{}", s.sum);
        let mut t = Text::new();
        t.histogram("iotpki_h_seconds", "h", &h);
        let out = t.finish();
        let want = "# HELP iotpki_h_seconds h\n# TYPE iotpki_h_seconds histogram\n\
                    iotpki_h_seconds_bucket{le=\"0.5\"} 2\n\
                    iotpki_h_seconds_bucket{le=\"1\"} 3\n\
                    iotpki_h_seconds_bucket{le=\"2\"} 3\n\
                    iotpki_h_seconds_bucket{le=\"+Inf\"} 5\n\
                    iotpki_h_seconds_sum 104.3\n\
                    iotpki_h_seconds_count 5\n";
        assert_eq!(out, want);
    }

    #[test]
    fn labelled_histograms_keep_their_labels_before_le() {
        let f: Family<Histogram> = Family::new(&["route", "code"], 8, || Histogram::new(&[1.0]));
        f.with(&["/ocsp", "2xx"]).observe(0.5);
        f.with(&["/crl/{*file}", "4xx"]).observe(2.0);
        let mut t = Text::new();
        t.histograms("iotpki_r_seconds", "r", &f);
        let out = t.finish();
        assert!(out.contains("iotpki_r_seconds_bucket{route=\"/crl/{*file}\",code=\"4xx\",le=\"1\"} 0\n"), "{out}");
        assert!(out.contains("iotpki_r_seconds_bucket{route=\"/crl/{*file}\",code=\"4xx\",le=\"+Inf\"} 1\n"), "{out}");
        assert!(out.contains("iotpki_r_seconds_count{route=\"/ocsp\",code=\"2xx\"} 1\n"), "{out}");
        assert!(out.contains("iotpki_r_seconds_sum{route=\"/ocsp\",code=\"2xx\"} 0.5\n"), "{out}");
    }

    #[test]
    fn a_family_holds_at_most_max_series_then_counts_under_other() {
        let f: Family<Counter> = Family::new(&["k"], 3, Counter::new);
        for i in 0..100 {
            f.with(&[&format!("v{i}")]).inc();
        }
        let s = f.series();
        assert_eq!(s.len(), 4, "three label sets and the overflow");
        assert_eq!(f.get(&["v0"]), 1);
        assert_eq!(f.get(&[OVERFLOW]), 97);
        // The same label set is one series, whichever thread asks first.
        let g: Arc<Family<Counter>> = Arc::new(Family::new(&["k"], 8, Counter::new));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| g.with(&["x"]).inc()))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(g.series().len(), 1);
        assert_eq!(g.get(&["x"]), 4000);
    }

    /// What the instrumentation of one enrollment costs, in the order it
    /// runs: the TLS listener's connection gauge up and down, the request
    /// timed under its route, the issuance counted, the store's batch size and
    /// timed commit, on 4 threads at once (the label sets exist already, as
    /// on a server that has run a while). Run it optimised:
    /// `cargo test -p iotpki-metrics --release -- --ignored --nocapture overhead`.
    #[test]
    #[ignore]
    fn overhead_of_one_enrollments_instrumentation() {
        struct M {
            issued: Family<Counter>,
            http: Family<Histogram>,
            open: Family<Gauge>,
            batch: Histogram,
            commit: Histogram,
        }
        let m = Arc::new(M {
            issued: Family::new(&["path"], 256, Counter::new),
            http: Family::new(&["route", "code"], 256, || Histogram::new(SECONDS)),
            open: Family::new(&["listener"], 16, Gauge::new),
            batch: Histogram::new(BATCH_SIZES),
            commit: Histogram::new(COMMIT_SECONDS),
        });
        // A server that has served a while: the families hold a few dozen series.
        for r in ["/ocsp", "/crl/{*file}", "/.well-known/est/cacerts", "/healthz", "/admin/v1/certificates"] {
            for c in ["2xx", "4xx", "5xx"] {
                m.http.with(&[r, c]).observe(0.001);
            }
        }
        for p in ["birth", "commission", "reenroll", "server.issue", "admin.add", "ocsp.signer", "enroll"] {
            m.issued.with(&[p]).inc();
        }
        let one = |m: &M| {
            let g = m.open.with(&["tls"]);
            g.inc();
            let t = std::time::Instant::now();
            m.issued.with(&["enroll"]).inc();
            m.batch.observe(3.0);
            let c = std::time::Instant::now();
            m.commit.observe_duration(c.elapsed());
            m.http.with(&["/.well-known/est/simpleenroll", "2xx"]).observe_duration(t.elapsed());
            g.dec();
        };
        const N: u32 = 2_000_000;
        for threads in [1u32, 4] {
            let start = std::time::Instant::now();
            let hs: Vec<_> = (0..threads)
                .map(|_| {
                    let m = m.clone();
                    std::thread::spawn(move || (0..N / threads).for_each(|_| one(&m)))
                })
                .collect();
            hs.into_iter().for_each(|h| h.join().unwrap());
            let per = start.elapsed() / N;
            println!("{threads} thread(s): {per:?} of instrumentation per enrollment (wall time / enrollments)");
        }
    }

    #[test]
    fn values_are_written_as_prometheus_reads_them() {
        assert_eq!(value(3.0), "3");
        assert_eq!(value(0.0025), "0.0025");
        assert_eq!(value(f64::INFINITY), "+Inf");
        assert_eq!(value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(value(f64::NAN), "NaN");
        assert!(valid_name("iotpki_store_up") && !valid_name("1x") && !valid_name("a-b"));
    }
}
