//! The control URL (`--login-server`): scheme, host, port and path prefix, parsed by hand
//! because ts2021 needs only this much of a URL and the `url` crate would pull in IDNA
//! tables.

use std::fmt;
use std::net::IpAddr;

use super::Error;

/// How to reach the control server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain TCP: the Noise layer carries the security (the Go client does the same for
    /// `http://` URLs; in practice these point at private or loopback addresses).
    Http,
    /// TLS with certificate verification, for everything on the open internet.
    Https,
}

/// A parsed control URL such as `https://controlplane.tailscale.com` or
/// `http://10.99.0.1:8080`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlUrl {
    pub scheme: Scheme,
    /// Host name or IP address, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// Path prefix without trailing slash (usually empty); `/key` is appended to it.
    pub path: String,
}

impl ControlUrl {
    /// Parses `http(s)://host[:port][/path]`. Userinfo, query and fragment are refused:
    /// they have no meaning for a control server and usually signal a typo.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::InvalidUrl(format!("{text:?}: {why}"));
        let (scheme, rest) = match text.split_once("://") {
            Some((s, rest)) if s.eq_ignore_ascii_case("https") => (Scheme::Https, rest),
            Some((s, rest)) if s.eq_ignore_ascii_case("http") => (Scheme::Http, rest),
            Some((s, _)) => {
                return Err(bad(&format!(
                    "unsupported scheme {s:?}, want http or https"
                )))
            }
            None => return Err(bad("missing scheme, want http:// or https://")),
        };
        if rest.contains(['?', '#']) {
            return Err(bad("query and fragment are not allowed"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(bad("user information is not allowed"));
        }
        let default_port = match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        let (host, port_text) = if let Some(after) = authority.strip_prefix('[') {
            let (host, after) = after
                .split_once(']')
                .ok_or_else(|| bad("unterminated IPv6 literal"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("bad IPv6 literal"));
            }
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(
                        p.strip_prefix(':')
                            .ok_or_else(|| bad("junk after IPv6 literal"))?,
                    ),
                ),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        if !host.contains(':')
            && !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        {
            return Err(bad("bad host name"));
        }
        let port = match port_text {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("bad port"))?,
        };
        Ok(ControlUrl {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
            path: path.to_string(),
        })
    }

    /// `host[:port]` as it belongs in `Host:` and `:authority` (port omitted when default,
    /// IPv6 in brackets).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = match self.scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// True if the host is an IP literal in a loopback, private (RFC 1918, ULA) or
    /// link-local range — the addresses for which Go's client settles for plain HTTP.
    pub fn is_private_address(&self) -> bool {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => a.is_loopback() || a.is_private() || a.is_link_local(),
            Ok(IpAddr::V6(a)) => {
                a.is_loopback()
                    || (a.segments()[0] & 0xfe00) == 0xfc00
                    || (a.segments()[0] & 0xffc0) == 0xfe80
            }
            Err(_) => self.host == "localhost",
        }
    }
}

impl fmt::Display for ControlUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let u = ControlUrl::parse("https://controlplane.tailscale.com").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.path.as_str()),
            (Scheme::Https, "controlplane.tailscale.com", 443, "")
        );
        assert_eq!(u.authority(), "controlplane.tailscale.com");
        assert!(!u.is_private_address());

        let u = ControlUrl::parse("http://10.99.0.1:8080/").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.path.as_str()),
            (Scheme::Http, "10.99.0.1", 8080, "")
        );
        assert_eq!(u.authority(), "10.99.0.1:8080");
        assert!(u.is_private_address());

        let u = ControlUrl::parse("HTTPS://HS.Example.org:8443/headscale/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("hs.example.org", 8443, "/headscale")
        );
        assert_eq!(u.to_string(), "https://hs.example.org:8443/headscale");

        let u = ControlUrl::parse("http://[::1]:9000").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9000));
        assert_eq!(u.authority(), "[::1]:9000");
        assert!(u.is_private_address());
        assert!(ControlUrl::parse("http://[fd7a:115c::1]")
            .unwrap()
            .is_private_address());
        assert!(!ControlUrl::parse("http://[2001:db8::1]")
            .unwrap()
            .is_private_address());
        assert!(!ControlUrl::parse("http://8.8.8.8")
            .unwrap()
            .is_private_address());
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "controlplane.tailscale.com",
            "ftp://x",
            "https://",
            "https://:443",
            "https://host:0",
            "https://host:99999",
            "https://host:port",
            "https://user@host",
            "https://host/?x=1",
            "https://[::1",
            "https://[nope]:1",
            "https://ho st",
        ] {
            assert!(ControlUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
