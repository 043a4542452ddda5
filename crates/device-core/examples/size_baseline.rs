//! The `size` example without the crate: the same reading of files and
//! printing, so that the difference of the two is what the crate adds
//! (docs/device-core.md, "Code size"). Not a tool.

fn main() {
    let args: Vec<Vec<u8>> = std::env::args().skip(1).map(|p| std::fs::read(p).unwrap_or_default()).collect();
    for a in &args {
        let r: Result<usize, String> = if a.is_empty() { Err(String::from("empty")) } else { Ok(a.len()) };
        println!("{r:?} {:?}", core::str::from_utf8(a).map(str::len));
    }
}
