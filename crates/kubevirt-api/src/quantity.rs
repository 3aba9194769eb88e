//! Parsing of Kubernetes resource quantities (`4Gi`, `512M`, `100m`, `1.5e3`), enough to turn a
//! VMI's memory or a migration bandwidth into numbers.

/// Parses a quantity into its value in base units (bytes for memory, cores for CPU).
/// Returns `None` for malformed input.
pub fn parse_quantity(quantity: &str) -> Option<f64> {
    let q = quantity.trim();
    if q.is_empty() {
        return None;
    }
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Pi", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Ei", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suffix, factor) in SUFFIXES {
        if let Some(number) = q.strip_suffix(suffix) {
            // "1E" is exa, but "1e3" is an exponent: only digits may precede a suffix.
            return number
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(|v| v * factor);
        }
    }
    q.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Parses a quantity into whole bytes (negative values become 0).
pub fn parse_bytes(quantity: &str) -> Option<u64> {
    parse_quantity(quantity).map(|v| v.max(0.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_decimal_suffixes() {
        assert_eq!(parse_bytes("4Gi"), Some(4 * 1024 * 1024 * 1024));
        assert_eq!(parse_bytes("512Mi"), Some(512 * 1024 * 1024));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("64M"), Some(64_000_000));
        assert_eq!(parse_bytes("1073741824"), Some(1_073_741_824));
        assert_eq!(parse_quantity("100m"), Some(0.1));
        assert_eq!(
            parse_quantity("1.5Gi"),
            Some(1.5 * 1024.0 * 1024.0 * 1024.0)
        );
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("0Mi"), Some(0.0));
    }

    #[test]
    fn malformed() {
        assert_eq!(parse_quantity(""), None);
        assert_eq!(parse_quantity("Gi"), None);
        assert_eq!(parse_quantity("four"), None);
    }
}
