//! The walker's fuzz harness, shared by the scan_* targets: the input is
//! walked as a stream with small limits through a sink that checks them.

use iotpki_scan::walk::{walk_reader, Limits, Sink};

pub const NAME: &str = "img";

pub fn limits() -> Limits {
    Limits {
        max_depth: 4,
        expanded_floor: 1 << 20,
        expansion_ratio: 0,
        max_file_bytes: 256 << 10,
        max_entries: 64,
        max_containers: 64,
        timeout: None,
        max_xz_memory: 16 << 20,
        max_squashfs_metadata: 4 << 20,
    }
}

/// Checks, stream by stream, what the limits promise.
struct Check {
    limits: Limits,
    open: Option<(String, u64)>,
    expanded: u64,
    delivered: u64,
}

impl Sink for Check {
    fn begin(&mut self, location: &str) {
        assert!(self.open.is_none(), "streams nest");
        // Member names are escaped, so each '!' or '|' is one level of nesting.
        let depth = location.matches(['!', '|']).count() as u32;
        assert!(depth <= self.limits.max_depth, "{location} deeper than {}", self.limits.max_depth);
        assert!(location.starts_with(NAME));
        self.open = Some((location.to_string(), 0));
    }
    fn data(&mut self, chunk: &[u8]) {
        let (loc, n) = self.open.as_mut().expect("data outside a stream");
        *n += chunk.len() as u64;
        self.delivered += chunk.len() as u64;
        if loc != NAME {
            self.expanded += chunk.len() as u64;
            assert!(*n <= self.limits.max_file_bytes, "{loc}: {n} bytes, over the per-file limit");
        }
    }
    fn end(&mut self) {
        assert!(self.open.take().is_some(), "end without begin");
    }
}

pub fn run(input: &[u8]) {
    // backhand panics on some corrupt squashfs (an index out of bounds while
    // reading a file's fragment) where we cannot check first: the walker
    // catches those (a last resort). libfuzzer-sys's hook aborts on every
    // panic, caught or not; this one only prints, and a panic that escapes
    // the walker still aborts (libfuzzer-sys catches it and aborts).
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| std::panic::set_hook(Box::new(|info| eprintln!("panic (an abort follows unless the walker caught it): {info}"))));
    let limits = limits();
    let mut sink = Check { limits: limits.clone(), open: None, expanded: 0, delivered: 0 };
    let report = walk_reader(NAME, input, &limits, &mut sink);
    assert!(sink.open.is_none());
    assert!(sink.expanded <= limits.expanded_budget(input.len() as u64), "{} bytes expanded", sink.expanded);
    assert_eq!(report.bytes_scanned, sink.delivered);
    assert!(report.containers <= limits.max_containers);
}

/// `data`, starting with `magic` (added when it is not already there).
#[allow(dead_code)] // not every target adds a magic
pub fn with_magic(magic: &[u8], data: &[u8]) -> Vec<u8> {
    if data.starts_with(magic) {
        data.to_vec()
    } else {
        [magic, data].concat()
    }
}
