//! `--source-ips`: the local addresses client sockets bind to, so one
//! address's ephemeral ports do not cap the connections.

use std::net::{IpAddr, Ipv4Addr};

/// The most addresses a range may name.
pub const MAX_SOURCE_IPS: u32 = 1024;

/// Parses `A`, `A-B` (IPv4, inclusive, B not below A) or a comma-separated
/// list of those.
pub fn parse_source_ips(s: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            None => out.push(
                part.parse::<IpAddr>()
                    .map_err(|_| format!("`{part}` is not an IP address"))?,
            ),
            Some((a, b)) => {
                let parse = |x: &str| {
                    x.trim()
                        .parse::<Ipv4Addr>()
                        .map_err(|_| format!("`{x}` is not an IPv4 address (ranges are IPv4 only)"))
                };
                let (a, b) = (u32::from(parse(a)?), u32::from(parse(b)?));
                if b < a {
                    return Err(format!("the range `{part}` ends before it starts"));
                }
                if b - a >= MAX_SOURCE_IPS {
                    return Err(format!(
                        "the range `{part}` names more than {MAX_SOURCE_IPS} addresses"
                    ));
                }
                out.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
            }
        }
        if out.len() > MAX_SOURCE_IPS as usize {
            return Err(format!("more than {MAX_SOURCE_IPS} source addresses"));
        }
    }
    if out.is_empty() {
        return Err("no source address given".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_lists() {
        let ips = parse_source_ips("127.0.0.1-127.0.0.16").unwrap();
        assert_eq!(ips.len(), 16);
        assert_eq!(ips[0].to_string(), "127.0.0.1");
        assert_eq!(ips[15].to_string(), "127.0.0.16");
        let ips = parse_source_ips("127.0.0.254-127.0.1.1").unwrap();
        assert_eq!(
            ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["127.0.0.254", "127.0.0.255", "127.0.1.0", "127.0.1.1"]
        );
        assert_eq!(parse_source_ips("127.0.0.1").unwrap().len(), 1);
        assert_eq!(
            parse_source_ips("::1, 127.0.0.2-127.0.0.3").unwrap().len(),
            3
        );
    }

    #[test]
    fn bad_ranges_are_refused() {
        assert!(parse_source_ips("").is_err());
        assert!(parse_source_ips("127.0.0.9-127.0.0.1")
            .unwrap_err()
            .contains("ends before"));
        assert!(parse_source_ips("127.0.0.1-localhost").is_err());
        assert!(parse_source_ips("10.0.0.0-10.1.0.0")
            .unwrap_err()
            .contains("more than"));
        assert!(parse_source_ips("::1-::2").is_err());
    }
}
