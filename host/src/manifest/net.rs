//! One entry of a connector's `net` grant, parsed: an address, a CIDR block
//! or a host name, and a port or a range of ports.
//!
//! It lives in the manifest because the manifest check parses every entry
//! once and reports a bad one where it is written; the grants keep the
//! parsed rules and ask them about each address a plugin uses.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

use ipnet::IpNet;

/// One entry of the `net` grant: an address or a name, and ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRule {
    target: NetTarget,
    ports: RangeInclusive<u16>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NetTarget {
    /// An address or a CIDR block (an address is a /32 or /128).
    Net(IpNet),
    /// A name the host resolves at connect time.
    Name(String),
}

impl fmt::Display for NetRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl NetRule {
    /// Parses `host:port`, `ip:port`, `cidr:port` or `[ipv6]:port`, where
    /// the port may be a range `low-high`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let (host, ports) = if let Some(rest) = t.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{text:?} opens `[` without closing it"))?;
            let ports = after
                .strip_prefix(':')
                .ok_or_else(|| format!("{text:?} has no port after `]`"))?;
            (inside, ports)
        } else {
            t.rsplit_once(':')
                .ok_or_else(|| format!("{text:?} has no port"))?
        };
        let port = |p: &str| -> Result<u16, String> {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("{p:?} in {text:?} is not a port (1-65535)")),
                Ok(n) => Ok(n),
            }
        };
        let ports = match ports.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (port(lo)?, port(hi)?);
                if lo > hi {
                    return Err(format!("the port range in {text:?} runs backwards"));
                }
                lo..=hi
            }
            None => {
                let p = port(ports)?;
                p..=p
            }
        };
        let target = if host.contains('/') {
            NetTarget::Net(
                host.parse::<IpNet>()
                    .map_err(|e| format!("{host:?} in {text:?} is not a CIDR block: {e}"))?
                    .trunc(),
            )
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            NetTarget::Net(IpNet::from(ip))
        } else {
            let valid = !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|l| {
                    !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !valid {
                return Err(format!(
                    "{host:?} in {text:?} is neither an address nor a host name"
                ));
            }
            NetTarget::Name(host.to_ascii_lowercase())
        };
        Ok(NetRule {
            target,
            ports,
            text: t.to_owned(),
        })
    }

    /// Does this rule allow `addr`? A name is resolved now, so the address
    /// must be one the name points to at the moment of the connection.
    pub async fn allows(&self, addr: SocketAddr) -> bool {
        if !self.ports.contains(&addr.port()) {
            return false;
        }
        let ip = addr.ip().to_canonical();
        match &self.target {
            NetTarget::Net(net) => net.contains(&ip),
            NetTarget::Name(name) => {
                match tokio::net::lookup_host((name.as_str(), addr.port())).await {
                    Ok(mut resolved) => resolved.any(|a| a.ip().to_canonical() == ip),
                    Err(e) => {
                        tracing::warn!(rule = %self.text, error = %e, "cannot resolve a granted name; refusing the connection");
                        false
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn net_rules_parse() {
        for ok in [
            "db.internal:5432",
            "10.0.0.0/8:9092-9094",
            "[::1]:6379",
            "127.0.0.1:80",
            "[fd00::/8]:1-65535",
        ] {
            NetRule::parse(ok).unwrap();
        }
        for bad in [
            "db",
            "db:0",
            "db:99999",
            "10.0.0.0/33:1",
            "a b:1",
            "1.2.3.4:9-1",
            "[::1:80",
        ] {
            assert!(NetRule::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[tokio::test]
    async fn net_rules_match_addresses_ports_and_blocks() {
        let r = NetRule::parse("10.0.0.0/8:9092-9094").unwrap();
        assert!(r.allows("10.1.2.3:9093".parse().unwrap()).await);
        assert!(!r.allows("10.1.2.3:9095".parse().unwrap()).await);
        assert!(!r.allows("11.0.0.1:9092".parse().unwrap()).await);
        let r = NetRule::parse("127.0.0.1:80").unwrap();
        assert!(r.allows("[::ffff:127.0.0.1]:80".parse().unwrap()).await);
        let r = NetRule::parse("localhost:8080").unwrap();
        assert!(r.allows("127.0.0.1:8080".parse().unwrap()).await);
        assert!(
            !r.allows("10.0.0.1:8080".parse().unwrap()).await,
            "a name allows only what it resolves to"
        );
    }
}
