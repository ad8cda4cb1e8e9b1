//! Which address a call came from, and which bucket it counts against.
//!
//! Behind proxies the TCP peer is the last proxy, so the client's address has to come from
//! `X-Forwarded-For`. Every proxy appends the address it saw, and a client can put anything it
//! likes at the start of the list, so only the entries written by proxies we trust are believed:
//! with `hops` trusted proxies the client is the `hops`-th entry from the right. The header is
//! read at all only when the TCP peer itself is one of the trusted proxies; anyone else reaching
//! keyward directly is their own address, whatever they send.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

/// How far keyward trusts the proxies in front of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyTrust {
    /// Proxies that append to `X-Forwarded-For` between the client and keyward (the REST
    /// sidecar is one, an ingress in front of it another). 0: the header is ignored.
    pub hops: usize,
    /// Only a TCP peer inside one of these networks may speak for a client.
    pub proxies: Vec<IpNet>,
}

impl ProxyTrust {
    /// The client's address: the TCP `peer`, or, when the peer is a trusted proxy, the entry of
    /// `forwarded_for` (the header's values in order, each a comma-separated list) that the
    /// outermost trusted proxy appended. An entry that is not an address falls back to the peer.
    pub fn client_address<'a>(
        &self,
        peer: Option<IpAddr>,
        forwarded_for: impl IntoIterator<Item = &'a str>,
    ) -> Option<IpAddr> {
        let peer = peer.map(canonical);
        let trusted_peer = peer.is_some_and(|p| self.proxies.iter().any(|n| n.contains(&p)));
        if self.hops == 0 || !trusted_peer {
            return peer;
        }
        let entries: Vec<&str> = forwarded_for
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        // Fewer entries than trusted hops: the client reached an inner proxy directly, and every
        // entry there was written by a trusted proxy; the leftmost is the client.
        let index = entries.len().saturating_sub(self.hops);
        entries
            .get(index)
            .and_then(|e| parse_entry(e))
            .map(canonical)
            .or(peer)
    }
}

/// An `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Ok(socket) = entry.parse::<std::net::SocketAddr>() {
        return Some(socket.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .and_then(|e| e.parse().ok())
}

/// IPv4 addresses written as IPv6 (`::ffff:1.2.3.4`) are the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The key per-address limits count against: the address for IPv4, its /64 network for IPv6
/// (one subscriber gets a whole /64, so per-address limits on IPv6 would never bite).
pub fn rate_limit_key(address: IpAddr) -> String {
    match canonical(address) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let network = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{network}/64")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust(hops: usize) -> ProxyTrust {
        ProxyTrust {
            hops,
            proxies: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn without_trusted_hops_the_peer_is_the_client() {
        let got = trust(0).client_address(ip("127.0.0.1"), ["203.0.113.9"]);
        assert_eq!(got, ip("127.0.0.1"));
    }

    #[test]
    fn a_peer_outside_the_trusted_networks_cannot_speak_for_anyone() {
        let got = trust(1).client_address(ip("198.51.100.4"), ["203.0.113.9"]);
        assert_eq!(got, ip("198.51.100.4"));
    }

    #[test]
    fn the_entry_of_the_outermost_trusted_proxy_wins_over_what_the_client_wrote() {
        // Client forged two entries; the sidecar appended the peer it saw.
        let header = ["6.6.6.6, 7.7.7.7, 192.0.2.10"];
        assert_eq!(
            trust(1).client_address(ip("127.0.0.1"), header),
            ip("192.0.2.10")
        );
        // Behind an ingress (which appended the client) and the sidecar (which appended the
        // ingress), two hops.
        let header = ["6.6.6.6, 192.0.2.77, 10.0.0.5"];
        assert_eq!(
            trust(2).client_address(ip("127.0.0.1"), header),
            ip("192.0.2.77")
        );
        // Several header values count as one list, in order.
        let values = ["6.6.6.6", "192.0.2.77, 10.0.0.5"];
        assert_eq!(
            trust(2).client_address(ip("127.0.0.1"), values),
            ip("192.0.2.77")
        );
    }

    #[test]
    fn short_lists_garbage_and_ports() {
        assert_eq!(
            trust(2).client_address(ip("127.0.0.1"), ["192.0.2.1"]),
            ip("192.0.2.1")
        );
        assert_eq!(
            trust(1).client_address(ip("127.0.0.1"), ["not-an-ip"]),
            ip("127.0.0.1")
        );
        assert_eq!(
            trust(1).client_address(ip("127.0.0.1"), []),
            ip("127.0.0.1")
        );
        assert_eq!(
            trust(1).client_address(ip("127.0.0.1"), ["192.0.2.1:443"]),
            ip("192.0.2.1")
        );
        assert_eq!(
            trust(1).client_address(ip("127.0.0.1"), ["[2001:db8::1]:443"]),
            ip("2001:db8::1")
        );
        assert_eq!(
            trust(1).client_address(ip("127.0.0.1"), ["[2001:db8::1]"]),
            ip("2001:db8::1")
        );
        assert_eq!(trust(1).client_address(None, ["192.0.2.1"]), None);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_is_ipv4() {
        let a = rate_limit_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = rate_limit_key("2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap());
        let c = rate_limit_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(a, "2001:db8:1:2::/64");
        assert_ne!(a, c);
        assert_eq!(
            rate_limit_key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1"
        );
        assert_eq!(rate_limit_key("192.0.2.1".parse().unwrap()), "192.0.2.1");
        // A mapped peer is trusted like the IPv4 address it is.
        let got = trust(1).client_address(ip("::ffff:127.0.0.1"), ["192.0.2.3"]);
        assert_eq!(got, ip("192.0.2.3"));
    }
}
