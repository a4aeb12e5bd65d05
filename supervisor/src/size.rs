//! Byte sizes as people write and read them: the parser behind the size flags
//! (`--memory-limit 512M`, `--max-file-size 1GiB`) and the form sizes are printed in
//! (`peak memory 41.3 MiB`), both through `bytesize`.
//!
//! Every unit is binary here, as `ulimit` and container runtimes read them: `K`, `KB` and
//! `KiB` all mean 1024 bytes (and so on for M, G and T), since a limit written `512M` has
//! always meant 512 MiB to Warden. `bytesize` reads `K`/`KB` as 1000, so those spellings
//! are turned into their binary ones before it parses.

use bytesize::ByteSize;

/// `1048576`, `512K`, `512M`, `1G`, `1GiB`, `1.5G`, `2T` → bytes (binary multiples).
pub fn parse(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.parse::<f64>().is_err() {
        return Err(format!(
            "`{s}` is not a size: use bytes or a number with K, M, G or T, e.g. 512M"
        ));
    }
    let unit = unit.trim();
    let binary = match unit.to_ascii_lowercase().as_str() {
        "" => "B",
        "k" | "kb" => "KiB",
        "m" | "mb" => "MiB",
        "g" | "gb" => "GiB",
        "t" | "tb" => "TiB",
        // Decimal-only spellings bytesize would accept (P, E) are refused below with
        // the rest: no limit here is that large.
        "p" | "pb" | "e" | "eb" => "?",
        _ => unit,
    };
    format!("{number} {binary}")
        .parse::<ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("unknown size unit `{unit}` in `{s}`: use K, M, G or T"))
}

/// `bytes` in the largest binary unit that keeps a whole part: `0 B`, `512 B`,
/// `1.5 KiB`, `41.3 MiB`, `1.0 GiB`.
pub fn show(bytes: u64) -> String {
    ByteSize::b(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_bytes_and_binary_units_in_every_spelling() {
        for (text, bytes) in [
            ("42", 42),
            ("0", 0),
            ("42B", 42),
            ("42 b", 42),
            ("1.5k", 1536),
            ("512K", 512 << 10),
            ("512kb", 512 << 10),
            ("512KiB", 512 << 10),
            ("512M", 512 << 20),
            ("512 MB", 512 << 20),
            ("512mib", 512 << 20),
            ("512Mi", 512 << 20),
            ("1G", 1 << 30),
            ("1gb", 1 << 30),
            ("1GiB", 1 << 30),
            ("1.5G", 3 << 29),
            ("  256M  ", 256 << 20),
            ("2T", 2 << 40),
            ("2TiB", 2 << 40),
        ] {
            assert_eq!(parse(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn a_bad_value_says_what_was_wrong_and_what_to_write() {
        assert_eq!(
            parse("lots").unwrap_err(),
            "`lots` is not a size: use bytes or a number with K, M, G or T, e.g. 512M"
        );
        assert_eq!(
            parse("").unwrap_err(),
            "`` is not a size: use bytes or a number with K, M, G or T, e.g. 512M"
        );
        assert_eq!(
            parse("-1G").unwrap_err(),
            "`-1G` is not a size: use bytes or a number with K, M, G or T, e.g. 512M"
        );
        assert_eq!(
            parse("3X").unwrap_err(),
            "unknown size unit `X` in `3X`: use K, M, G or T"
        );
        assert_eq!(
            parse("1 gigabyte").unwrap_err(),
            "unknown size unit `gigabyte` in `1 gigabyte`: use K, M, G or T"
        );
        assert!(parse("1P").is_err(), "no limit is petabytes");
        assert!(parse("1.2.3M").is_err());
    }

    #[test]
    fn shows_the_largest_binary_unit() {
        assert_eq!(show(0), "0 B");
        assert_eq!(show(512), "512 B");
        assert_eq!(show(1536), "1.5 KiB");
        assert_eq!(show(43_305_779), "41.3 MiB");
        assert_eq!(show(1 << 30), "1.0 GiB");
    }
}
