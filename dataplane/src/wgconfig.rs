//! The WireGuard configuration file (`wg-quick` style): `[Interface]` with PrivateKey,
//! ListenPort, Address, MTU; `[Peer]` with PublicKey, AllowedIPs, Endpoint,
//! PersistentKeepalive. wg-quick keys we do not act on (DNS, Table, PostUp, …) are
//! rejected by name rather than silently ignored, so a user never believes they applied.

use crate::config::{Config, IfAddr, PeerConfig, DEFAULT_MTU};
use ip_network::IpNetwork;
use ringscale_keys::{Key, PrivateKey};
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

#[derive(Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number; 0 when the error concerns the file as a whole.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

impl std::error::Error for ParseError {}

enum Section {
    None,
    Interface,
    Peer,
}

pub fn parse(text: &str) -> Result<Config, ParseError> {
    let err = |line: usize, message: String| ParseError { line, message };
    let mut section = Section::None;
    let mut private_key = None;
    let mut listen_port = 0u16;
    let mut addresses = Vec::new();
    let mut mtu = DEFAULT_MTU;
    let mut peers: Vec<(usize, PeerConfig, bool)> = Vec::new();
    let mut seen_interface = false;
    let mut interface_line = 0;

    for (idx, raw) in text.lines().enumerate() {
        let n = idx + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = match line.to_ascii_lowercase().as_str() {
                "[interface]" => {
                    if seen_interface {
                        return Err(err(n, "more than one [Interface] section".into()));
                    }
                    seen_interface = true;
                    interface_line = n;
                    Section::Interface
                }
                "[peer]" => {
                    peers.push((
                        n,
                        PeerConfig {
                            public_key: Key::default(),
                            allowed_ips: Vec::new(),
                            endpoint: None,
                            persistent_keepalive: None,
                        },
                        false,
                    ));
                    Section::Peer
                }
                _ => return Err(err(n, format!("unknown section {line}"))),
            };
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(err(n, format!("expected Key = Value, got {line:?}")));
        };
        let (key, value) = (key.trim(), value.trim());
        let lower = key.to_ascii_lowercase();
        match section {
            Section::None => return Err(err(n, format!("{key} outside of a section"))),
            Section::Interface => match lower.as_str() {
                "privatekey" => {
                    let k = PrivateKey::from_base64(value)
                        .map_err(|e| err(n, format!("invalid PrivateKey: {e}")))?;
                    private_key = Some(k);
                }
                "listenport" => {
                    listen_port = value
                        .parse()
                        .map_err(|_| err(n, format!("invalid ListenPort {value:?}")))?;
                }
                "address" => {
                    for a in list(value) {
                        addresses.push(parse_address(a).map_err(|m| err(n, m))?);
                    }
                }
                "mtu" => {
                    mtu = value
                        .parse()
                        .ok()
                        .filter(|m| (576..=65535).contains(m))
                        .ok_or_else(|| err(n, format!("invalid MTU {value:?} (576..65535)")))?;
                }
                _ => return Err(err(n, format!("unsupported [Interface] key {key}"))),
            },
            Section::Peer => {
                let (_, peer, has_key) = peers.last_mut().expect("a [Peer] section was pushed");
                match lower.as_str() {
                    "publickey" => {
                        peer.public_key = Key::from_base64(value)
                            .map_err(|e| err(n, format!("invalid PublicKey: {e}")))?;
                        *has_key = true;
                    }
                    "allowedips" => {
                        for a in list(value) {
                            let net = parse_prefix(a).map_err(|m| err(n, m))?;
                            peer.allowed_ips.push(net);
                        }
                    }
                    "endpoint" => {
                        peer.endpoint = Some(parse_endpoint(value).map_err(|m| err(n, m))?);
                    }
                    "persistentkeepalive" => {
                        let v = if value == "off" {
                            Ok(0)
                        } else {
                            value.parse::<u16>()
                        };
                        let v = v.map_err(|_| {
                            err(n, format!("invalid PersistentKeepalive {value:?}"))
                        })?;
                        peer.persistent_keepalive = (v > 0).then_some(v);
                    }
                    "presharedkey" => {
                        return Err(err(
                            n,
                            "PresharedKey is not supported (Tailscale never uses one)".into(),
                        ))
                    }
                    _ => return Err(err(n, format!("unsupported [Peer] key {key}"))),
                }
            }
        }
    }
    if !seen_interface {
        return Err(err(0, "no [Interface] section".into()));
    }
    let private_key =
        private_key.ok_or_else(|| err(interface_line, "[Interface] has no PrivateKey".into()))?;
    let mut out = Vec::with_capacity(peers.len());
    for (line, peer, has_key) in peers {
        if !has_key {
            return Err(err(line, "[Peer] has no PublicKey".into()));
        }
        if out
            .iter()
            .any(|p: &PeerConfig| p.public_key == peer.public_key)
        {
            return Err(err(line, "duplicate [Peer] PublicKey".into()));
        }
        out.push(peer);
    }
    Ok(Config {
        private_key,
        listen_port,
        addresses,
        mtu,
        peers: out,
        filter: None,
    })
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// A prefix with its host bits cleared is required, as `wg` requires.
pub fn parse_prefix(s: &str) -> Result<IpNetwork, String> {
    let (addr, len) = split_prefix(s)?;
    IpNetwork::new(addr, len).map_err(|_| format!("invalid prefix {s:?} (host bits set?)"))
}

/// An interface address: host bits may be set (10.0.0.1/24); no length means a host route.
fn parse_address(s: &str) -> Result<IfAddr, String> {
    let (addr, prefix_len) = split_prefix(s)?;
    Ok(IfAddr { addr, prefix_len })
}

fn split_prefix(s: &str) -> Result<(IpAddr, u8), String> {
    let (a, l) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = a.parse().map_err(|_| format!("invalid IP address {a:?}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match l {
        None => max,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|&l| l <= max)
            .ok_or_else(|| format!("invalid prefix length in {s:?}"))?,
    };
    Ok((addr, len))
}

fn parse_endpoint(s: &str) -> Result<SocketAddr, String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    // host:port with a name, resolved once at load time as wg does.
    s.to_socket_addrs()
        .map_err(|e| format!("invalid Endpoint {s:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("Endpoint {s:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
# a comment
[Interface]
PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=
ListenPort = 51820
Address = 10.0.0.1/24, fd00::1/64
MTU = 1280

[Peer]
PublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
AllowedIPs = 10.0.0.2/32, fd00::2/128, 192.168.0.0/16
Endpoint = 10.99.0.2:51820
PersistentKeepalive = 25
";

    #[test]
    fn parses_a_full_file() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.listen_port, 51820);
        assert_eq!(c.mtu, 1280);
        assert_eq!(c.addresses.len(), 2);
        assert_eq!(c.peers.len(), 1);
        let p = &c.peers[0];
        assert_eq!(p.allowed_ips.len(), 3);
        assert_eq!(p.endpoint, Some("10.99.0.2:51820".parse().unwrap()));
        assert_eq!(p.persistent_keepalive, Some(25));
    }

    #[test]
    fn errors_name_the_line() {
        let bad = GOOD.replace("ListenPort = 51820", "ListenPort = lots");
        assert_eq!(parse(&bad).unwrap_err().line, 4);
        let bad = GOOD.replace("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=", "short");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.line, 9);
        assert!(e.to_string().contains("PublicKey"), "{e}");
        let bad = GOOD.replace("192.168.0.0/16", "192.168.0.1/16");
        assert_eq!(parse(&bad).unwrap_err().line, 10);
        let bad = GOOD.replace("[Peer]", "[Pear]");
        assert_eq!(parse(&bad).unwrap_err().line, 8);
        let bad = GOOD.replace("MTU = 1280", "PostUp = rm -rf /");
        assert!(parse(&bad).unwrap_err().message.contains("PostUp"));
        assert_eq!(parse("").unwrap_err().line, 0);
    }
}
