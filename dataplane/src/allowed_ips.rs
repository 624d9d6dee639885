//! AllowedIPs: longest-prefix match from an address to a peer, for IPv4 and IPv6.
//! Backed by `ip_network_table` (a tree-bitmap trie), which boringtun already depends on.

use ip_network::IpNetwork;
use ip_network_table::IpNetworkTable;
use std::net::IpAddr;

pub struct AllowedIps<T> {
    table: IpNetworkTable<T>,
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        AllowedIps {
            table: IpNetworkTable::new(),
        }
    }
}

impl<T> AllowedIps<T> {
    /// Adds a prefix; a later insert of the same prefix replaces the earlier value,
    /// as `wg set` moves an AllowedIP from one peer to another.
    pub fn insert(&mut self, net: IpNetwork, value: T) {
        self.table.insert(net, value);
    }

    /// The value of the longest prefix containing `addr`.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<&T> {
        self.table.longest_match(addr).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        let (v4, v6) = self.table.len();
        v4 + v6
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wgconfig::parse_prefix;

    #[test]
    fn longest_prefix_wins_v4_and_v6() {
        let mut t = AllowedIps::default();
        t.insert(parse_prefix("0.0.0.0/0").unwrap(), 1);
        t.insert(parse_prefix("10.0.0.0/8").unwrap(), 2);
        t.insert(parse_prefix("10.1.2.3/32").unwrap(), 3);
        t.insert(parse_prefix("fd00::/8").unwrap(), 4);
        t.insert(parse_prefix("fd00::1/128").unwrap(), 5);
        fn l(t: &AllowedIps<i32>, s: &str) -> Option<i32> {
            t.lookup(s.parse().unwrap()).copied()
        }
        assert_eq!(l(&t, "192.0.2.1"), Some(1));
        assert_eq!(l(&t, "10.9.9.9"), Some(2));
        assert_eq!(l(&t, "10.1.2.3"), Some(3));
        assert_eq!(l(&t, "fd00::2"), Some(4));
        assert_eq!(l(&t, "fd00::1"), Some(5));
        assert_eq!(l(&t, "2001:db8::1"), None);
        t.insert(parse_prefix("10.0.0.0/8").unwrap(), 7);
        assert_eq!(l(&t, "10.9.9.9"), Some(7));
        assert_eq!(t.len(), 5);
    }
}
