//! Kubernetes resource quantities (`500m`, `4Gi`, `1e3`) as numbers, for the downward API's
//! `resourceFieldRef`, which the kubelet resolves as `ceil(value / divisor)`.

/// The value of a quantity in base units (cores, bytes), or `None` if it is not one.
pub fn parse(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * factor)
}

/// `ceil(value / divisor)` as the downward API writes it. A divisor of 0 (what the API server
/// defaults an unset divisor to) means 1, as in the kubelet.
pub fn divide(value: &str, divisor: Option<&str>) -> Option<String> {
    let v = parse(value)?;
    let d = parse(divisor.unwrap_or("1"))?;
    let d = if d == 0.0 { 1.0 } else { d };
    if d < 0.0 {
        return None;
    }
    Some(format!("{}", (v / d).ceil() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse("4Gi"), Some(4.0 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(parse("500m"), Some(0.5));
        assert_eq!(parse("2"), Some(2.0));
        assert_eq!(parse("1e3"), Some(1000.0));
        assert_eq!(parse("64M"), Some(64e6));
        assert_eq!(parse("x"), None);
        assert_eq!(parse("1Zi"), None);
        assert_eq!(divide("256Mi", None).as_deref(), Some("268435456"));
        assert_eq!(divide("500m", None).as_deref(), Some("1"));
        assert_eq!(divide("500m", Some("1m")).as_deref(), Some("500"));
        assert_eq!(divide("1Gi", Some("1Mi")).as_deref(), Some("1024"));
        assert_eq!(divide("1Gi", Some("0")).as_deref(), Some("1073741824"));
        assert_eq!(divide("1Gi", Some("-1")), None);
    }
}
