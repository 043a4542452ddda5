//! Durations on the command line: `90s`, `30m`, `1h`, `7d`, or plain seconds.

/// Parse a duration into seconds.
pub fn parse_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration (try 90s, 30m, 1h, 7d)"))?;
    n.checked_mul(mult).filter(|v| *v > 0).ok_or_else(|| format!("{s:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse_secs("1h"), Ok(3600));
        assert_eq!(parse_secs("90"), Ok(90));
        assert_eq!(parse_secs("2d"), Ok(172_800));
        assert!(parse_secs("0s").is_err());
        assert!(parse_secs("h").is_err());
        assert!(parse_secs("-1m").is_err());
    }
}
