//! STUN Binding (RFC 5389) as Tailscale uses it for endpoint discovery (protocol.md
//! §10), with no I/O: the 48-byte request Go sends, the success response with
//! XOR-MAPPED-ADDRESS (server side, for the test DERP server), and parsing of both.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
pub type TxId = [u8; 12];

const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
const BINDING_SUCCESS: [u8; 2] = [0x01, 0x01];
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// Some servers use the pre-RFC number for XOR-MAPPED-ADDRESS.
const ATTR_XOR_MAPPED_ADDRESS_ALT: u16 = 0x8020;
const ATTR_SOFTWARE: u16 = 0x8022;
const ATTR_FINGERPRINT: u16 = 0x8028;
const FINGERPRINT_XOR: u32 = 0x5354_554e;
const HEADER_LEN: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StunError {
    NotStun,
    NotBindingSuccess,
    Malformed,
    NoAddress,
}

impl fmt::Display for StunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StunError::NotStun => "not a STUN message",
            StunError::NotBindingSuccess => "not a STUN binding success response",
            StunError::Malformed => "malformed STUN attributes",
            StunError::NoAddress => "STUN response without a mapped address",
        })
    }
}

impl std::error::Error for StunError {}

/// CRC-32 (IEEE), bitwise: STUN fingerprints are a few per minute. Also the hash of
/// Go's PeerAPI port choice (cli's `peerapi_port`), a few per start.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn header(kind: [u8; 2], len: u16, tx: &TxId, out: &mut Vec<u8>) {
    out.extend_from_slice(&kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE);
    out.extend_from_slice(tx);
}

/// The Binding Request Go sends (net/stun `Request`): SOFTWARE "tailnode" and a
/// FINGERPRINT, 40 bytes. (protocol.md §10 says 48 bytes and length 0x1C; Go's code
/// has 12 + 8 = 20 attribute bytes.)
pub fn request(tx: &TxId) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    header(BINDING_REQUEST, 20, tx, &mut out);
    out.extend_from_slice(&ATTR_SOFTWARE.to_be_bytes());
    out.extend_from_slice(&8u16.to_be_bytes());
    out.extend_from_slice(b"tailnode");
    let fp = crc32(&out) ^ FINGERPRINT_XOR;
    out.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(&fp.to_be_bytes());
    out
}

fn check_header(b: &[u8]) -> Result<TxId, StunError> {
    if b.len() < HEADER_LEN || b[0] & 0xc0 != 0 || b[4..8] != MAGIC_COOKIE {
        return Err(StunError::NotStun);
    }
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    if HEADER_LEN + len > b.len() {
        return Err(StunError::Malformed);
    }
    let mut tx = [0u8; 12];
    tx.copy_from_slice(&b[8..20]);
    Ok(tx)
}

/// The transaction ID of a Binding Request (server side).
pub fn parse_request(b: &[u8]) -> Result<TxId, StunError> {
    let tx = check_header(b)?;
    if b[..2] != BINDING_REQUEST {
        return Err(StunError::NotStun);
    }
    Ok(tx)
}

fn xor_addr(addr: SocketAddr, tx: &TxId) -> Vec<u8> {
    let mut v = vec![0u8];
    let port = addr.port() ^ 0x2112;
    match addr.ip() {
        IpAddr::V4(ip) => {
            v.push(0x01);
            v.extend_from_slice(&port.to_be_bytes());
            for (i, o) in ip.octets().iter().enumerate() {
                v.push(o ^ MAGIC_COOKIE[i]);
            }
        }
        IpAddr::V6(ip) => {
            v.push(0x02);
            v.extend_from_slice(&port.to_be_bytes());
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE);
            key[4..].copy_from_slice(tx);
            for (i, o) in ip.octets().iter().enumerate() {
                v.push(o ^ key[i]);
            }
        }
    }
    v
}

/// A Binding Success telling the client it was seen at `addr` (server side).
pub fn response(tx: &TxId, addr: SocketAddr) -> Vec<u8> {
    let attr = xor_addr(addr, tx);
    let mut out = Vec::with_capacity(HEADER_LEN + 4 + attr.len());
    header(BINDING_SUCCESS, (4 + attr.len()) as u16, tx, &mut out);
    out.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
    out.extend_from_slice(&(attr.len() as u16).to_be_bytes());
    out.extend_from_slice(&attr);
    out
}

fn parse_addr(v: &[u8], xor: Option<&TxId>) -> Result<SocketAddr, StunError> {
    if v.len() < 4 {
        return Err(StunError::Malformed);
    }
    let mut port = u16::from_be_bytes([v[2], v[3]]);
    let mut key = [0u8; 16];
    if let Some(tx) = xor {
        port ^= 0x2112;
        key[..4].copy_from_slice(&MAGIC_COOKIE);
        key[4..].copy_from_slice(tx);
    }
    let ip = match (v[1], v.len()) {
        (0x01, 8) => {
            let o: [u8; 4] = core::array::from_fn(|i| v[4 + i] ^ key[i]);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        (0x02, 20) => {
            let o: [u8; 16] = core::array::from_fn(|i| v[4 + i] ^ key[i]);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err(StunError::Malformed),
    };
    Ok(SocketAddr::new(ip, port))
}

/// A Binding Success: its transaction ID and the address the server saw us at
/// (XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS).
pub fn parse_response(b: &[u8]) -> Result<(TxId, SocketAddr), StunError> {
    let tx = check_header(b)?;
    if b[..2] != BINDING_SUCCESS {
        return Err(StunError::NotBindingSuccess);
    }
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    let mut attrs = &b[HEADER_LEN..HEADER_LEN + len];
    let (mut xor, mut plain) = (None, None);
    while attrs.len() >= 4 {
        let kind = u16::from_be_bytes([attrs[0], attrs[1]]);
        let alen = u16::from_be_bytes([attrs[2], attrs[3]]) as usize;
        let value = attrs.get(4..4 + alen).ok_or(StunError::Malformed)?;
        match kind {
            ATTR_XOR_MAPPED_ADDRESS | ATTR_XOR_MAPPED_ADDRESS_ALT => {
                xor = Some(parse_addr(value, Some(&tx))?)
            }
            ATTR_MAPPED_ADDRESS => plain = Some(parse_addr(value, None)?),
            _ => {}
        }
        // Attributes are padded to 4 bytes.
        let padded = (4 + alen + 3) & !3;
        attrs = attrs.get(padded..).unwrap_or(&[]);
    }
    xor.or(plain).map(|a| (tx, a)).ok_or(StunError::NoAddress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_what_go_sends() {
        let tx = [7u8; 12];
        let r = request(&tx);
        assert_eq!(r.len(), 40);
        assert_eq!(&r[..4], &[0x00, 0x01, 0x00, 0x14]);
        assert_eq!(&r[4..8], &MAGIC_COOKIE);
        assert_eq!(&r[20..24], &[0x80, 0x22, 0x00, 0x08]);
        assert_eq!(&r[24..32], b"tailnode");
        assert_eq!(&r[32..36], &[0x80, 0x28, 0x00, 0x04]);
        let fp = u32::from_be_bytes(r[36..40].try_into().unwrap());
        assert_eq!(fp, crc32(&r[..32]) ^ FINGERPRINT_XOR);
        assert_eq!(parse_request(&r), Ok(tx));
        // The known CRC-32 check value.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn responses_round_trip_v4_and_v6() {
        let tx = [3u8; 12];
        for a in ["198.51.100.7:41641", "[2001:db8::7]:1"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(parse_response(&response(&tx, a)), Ok((tx, a)));
        }
        // RFC 5769 sample IPv4 response: 192.0.2.1:32853, with SOFTWARE, MAPPED and
        // FINGERPRINT/INTEGRITY attributes around the XOR-MAPPED-ADDRESS.
        let sample: Vec<u8> = [
            "0101003c2112a442b7e7a701bc34d686fa87dfae",
            "8022000b7465737420766563746f7220",
            "002000080001a147e112a643",
        ]
        .concat()
        .as_bytes()
        .chunks(2)
        .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap())
        .collect();
        let mut s = sample;
        // Fix up the length for the attributes kept here.
        let len = (s.len() - HEADER_LEN) as u16;
        s[2..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            parse_response(&s).map(|(_, a)| a),
            Ok("192.0.2.1:32853".parse().unwrap())
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(parse_response(&[]), Err(StunError::NotStun));
        assert_eq!(parse_response(&[0; 20]), Err(StunError::NotStun));
        let mut r = response(&[1; 12], "10.0.0.1:1".parse().unwrap());
        r.truncate(r.len() - 2);
        assert!(parse_response(&r).is_err());
        let mut r = response(&[1; 12], "10.0.0.1:1".parse().unwrap());
        r[25] = 0x09; // bad family
        assert_eq!(parse_response(&r), Err(StunError::Malformed));
        assert_eq!(parse_request(&r), Err(StunError::NotStun));
    }
}
