//! The disco wire format (protocol.md §7.1, §7.2), parsed over byte slices:
//!
//! ```text
//! "TS💬" (6) ‖ sender disco public key (32) ‖ nonce (24) ‖ box(type ‖ version ‖ body)
//! ```
//!
//! Only the three messages path discovery needs are understood (Ping, Pong,
//! CallMeMaybe); the peer-relay types 4–9 parse as [`Message::Unknown`] and are ignored
//! by the caller, as a minimal Go client would.

use super::naclbox::{SharedKey, NONCE_LEN, TAG_LEN};
use ringscale_keys::Key;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

pub use ringscale_wire::disco::{looks_like_disco, HEADER_LEN, MAGIC};

/// Header, nonce and tag: the smallest packet that could hold a box.
pub const MIN_PACKET_LEN: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
pub const TX_ID_LEN: usize = 12;

const TYPE_PING: u8 = 0x01;
const TYPE_PONG: u8 = 0x02;
const TYPE_CALL_ME_MAYBE: u8 = 0x03;
/// One endpoint in CallMeMaybe and the source in Pong: IPv6 (IPv4 mapped) ‖ port.
const ADDR_LEN: usize = 18;
/// A CallMeMaybe from a sane peer lists a handful of endpoints; a bigger list is
/// truncated so a peer cannot make us ping thousands of addresses.
pub const MAX_CALL_ME_MAYBE_ENDPOINTS: usize = 32;

pub type TxId = [u8; TX_ID_LEN];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// "Are you there on this path?" `node_key` is the sender's node key (absent from
    /// clients older than 1.16); `padding` bytes of zeros follow it (path-MTU probes).
    Ping {
        tx_id: TxId,
        node_key: Option<Key>,
        padding: usize,
    },
    /// The answer to the Ping with the same `tx_id`; `src` is where the ping came from
    /// as the answering side saw it.
    Pong { tx_id: TxId, src: SocketAddr },
    /// "I just sent you pings to open my firewall; ping me back at these addresses."
    /// Only valid over DERP.
    CallMeMaybe { endpoints: Vec<SocketAddr> },
    /// A type we do not speak (peer relays, future messages): dropped by the caller.
    Unknown { kind: u8 },
}

/// Why a disco packet was not accepted. All are dropped; the variant goes to the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscoError {
    /// Shorter than header, nonce and tag.
    Truncated,
    /// Not the disco magic.
    NotDisco,
    /// The sender's disco key belongs to no peer we know.
    UnknownSender,
    /// The box does not open with that sender's key.
    BadBox,
    /// The plaintext is not a well-formed message.
    Malformed,
    /// A valid message that is not allowed where it arrived (a CallMeMaybe over UDP, a
    /// DERP packet whose disco key is not that DERP sender's).
    WrongPath,
    /// The message names a node key that does not belong to the sending disco key.
    WrongNodeKey,
}

impl fmt::Display for DiscoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiscoError::Truncated => "truncated disco packet",
            DiscoError::NotDisco => "not a disco packet",
            DiscoError::UnknownSender => "disco packet from an unknown disco key",
            DiscoError::BadBox => "disco packet does not decrypt",
            DiscoError::Malformed => "malformed disco message",
            DiscoError::WrongPath => "disco message not allowed on this path",
            DiscoError::WrongNodeKey => "disco ping names a node key not bound to its disco key",
        })
    }
}

impl std::error::Error for DiscoError {}

/// A disco packet with its cleartext header checked, before decryption.
#[derive(Clone, Copy, Debug)]
pub struct Sealed<'a> {
    pub sender: Key,
    nonce: [u8; NONCE_LEN],
    sealed: &'a [u8],
}

impl<'a> Sealed<'a> {
    pub fn parse(b: &'a [u8]) -> Result<Sealed<'a>, DiscoError> {
        if b.len() < MAGIC.len() || b[..MAGIC.len()] != MAGIC {
            return Err(DiscoError::NotDisco);
        }
        if b.len() < MIN_PACKET_LEN {
            return Err(DiscoError::Truncated);
        }
        let mut sender = [0u8; 32];
        sender.copy_from_slice(&b[MAGIC.len()..HEADER_LEN]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&b[HEADER_LEN..HEADER_LEN + NONCE_LEN]);
        Ok(Sealed {
            sender: Key(sender),
            nonce,
            sealed: &b[HEADER_LEN + NONCE_LEN..],
        })
    }

    /// Decrypts with the key shared with the sender and parses the message.
    pub fn open(&self, shared: &SharedKey) -> Result<Message, DiscoError> {
        let plain = shared
            .open(&self.nonce, self.sealed)
            .map_err(|_| DiscoError::BadBox)?;
        Message::parse(&plain)
    }
}

/// Seals `msg` from `sender` (our disco public key) with the key shared with the
/// recipient: a complete disco packet.
pub fn seal(sender: &Key, shared: &SharedKey, msg: &Message) -> Vec<u8> {
    let nonce = super::naclbox::random_nonce();
    let plain = msg.encode();
    let mut out = Vec::with_capacity(MIN_PACKET_LEN + plain.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&sender.0);
    out.extend_from_slice(&nonce);
    shared.seal_into(&nonce, &plain, &mut out);
    out
}

fn put_addr(out: &mut Vec<u8>, a: SocketAddr) {
    let ip = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out.extend_from_slice(&ip.octets());
    out.extend_from_slice(&a.port().to_be_bytes());
}

fn get_addr(b: &[u8]) -> SocketAddr {
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&b[..16]);
    let ip = Ipv6Addr::from(ip);
    let ip = match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    };
    SocketAddr::new(ip, u16::from_be_bytes([b[16], b[17]]))
}

impl Message {
    /// The plaintext: type ‖ version 0 ‖ body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            Message::Ping {
                tx_id,
                node_key,
                padding,
            } => {
                out.extend_from_slice(&[TYPE_PING, 0]);
                out.extend_from_slice(tx_id);
                if let Some(k) = node_key {
                    out.extend_from_slice(&k.0);
                    out.resize(out.len() + padding, 0);
                }
            }
            Message::Pong { tx_id, src } => {
                out.extend_from_slice(&[TYPE_PONG, 0]);
                out.extend_from_slice(tx_id);
                put_addr(&mut out, *src);
            }
            Message::CallMeMaybe { endpoints } => {
                out.extend_from_slice(&[TYPE_CALL_ME_MAYBE, 0]);
                for ep in endpoints {
                    put_addr(&mut out, *ep);
                }
            }
            Message::Unknown { kind } => out.extend_from_slice(&[*kind, 0]),
        }
        out
    }

    /// Parses a decrypted payload. Trailing bytes after a known body are ignored (room
    /// for future fields), as Go does.
    pub fn parse(b: &[u8]) -> Result<Message, DiscoError> {
        let [kind, _version, body @ ..] = b else {
            return Err(DiscoError::Malformed);
        };
        match *kind {
            TYPE_PING => {
                let tx_id: TxId = body
                    .get(..TX_ID_LEN)
                    .and_then(|t| t.try_into().ok())
                    .ok_or(DiscoError::Malformed)?;
                let rest = &body[TX_ID_LEN..];
                let (node_key, padding) = if rest.len() >= 32 {
                    let mut k = [0u8; 32];
                    k.copy_from_slice(&rest[..32]);
                    (Some(Key(k)), rest.len() - 32)
                } else {
                    (None, 0)
                };
                Ok(Message::Ping {
                    tx_id,
                    node_key,
                    padding,
                })
            }
            TYPE_PONG => {
                if body.len() < TX_ID_LEN + ADDR_LEN {
                    return Err(DiscoError::Malformed);
                }
                let mut tx_id = [0u8; TX_ID_LEN];
                tx_id.copy_from_slice(&body[..TX_ID_LEN]);
                Ok(Message::Pong {
                    tx_id,
                    src: get_addr(&body[TX_ID_LEN..]),
                })
            }
            TYPE_CALL_ME_MAYBE => {
                // Go: a version other than 0 or a length that is not a whole number of
                // endpoints gives an empty list rather than an error.
                let endpoints = if b[1] != 0 || body.len() % ADDR_LEN != 0 {
                    Vec::new()
                } else {
                    body.chunks_exact(ADDR_LEN)
                        .take(MAX_CALL_ME_MAYBE_ENDPOINTS)
                        .map(get_addr)
                        .collect()
                };
                Ok(Message::CallMeMaybe { endpoints })
            }
            other => Ok(Message::Unknown { kind: other }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_pair() -> (Key, SharedKey, SharedKey) {
        let (a, b) = (
            ringscale_keys::PrivateKey::from_bytes([7; 32]),
            ringscale_keys::PrivateKey::from_bytes([8; 32]),
        );
        (
            a.public(),
            SharedKey::new(&a, &b.public().0),
            SharedKey::new(&b, &a.public().0),
        )
    }

    #[test]
    fn ping_is_124_bytes_and_round_trips() {
        let (a_pub, a_to_b, b_from_a) = shared_pair();
        let ping = Message::Ping {
            tx_id: [9; 12],
            node_key: Some(Key([4; 32])),
            padding: 0,
        };
        let pkt = seal(&a_pub, &a_to_b, &ping);
        // protocol.md §7.2: 6 + 32 + 24 + 16 + 2 + 12 + 32.
        assert_eq!(pkt.len(), 124);
        assert!(looks_like_disco(&pkt));
        let sealed = Sealed::parse(&pkt).unwrap();
        assert_eq!(sealed.sender, a_pub);
        assert_eq!(sealed.open(&b_from_a).unwrap(), ping);
    }

    #[test]
    fn pong_addresses_are_v4_mapped_on_the_wire() {
        let src: SocketAddr = "192.0.2.7:41641".parse().unwrap();
        let pong = Message::Pong {
            tx_id: [1; 12],
            src,
        };
        let b = pong.encode();
        assert_eq!(b.len(), 2 + 12 + 18);
        assert_eq!(
            &b[14..30],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7]
        );
        assert_eq!(&b[30..], &41641u16.to_be_bytes());
        assert_eq!(Message::parse(&b).unwrap(), pong);
        let v6 = Message::Pong {
            tx_id: [1; 12],
            src: "[2001:db8::1]:5".parse().unwrap(),
        };
        assert_eq!(Message::parse(&v6.encode()).unwrap(), v6);
    }

    #[test]
    fn call_me_maybe_round_trips_and_tolerates_odd_lengths() {
        let eps: Vec<SocketAddr> = vec![
            "10.0.0.1:41641".parse().unwrap(),
            "[fd00::2]:41641".parse().unwrap(),
        ];
        let cmm = Message::CallMeMaybe {
            endpoints: eps.clone(),
        };
        let mut b = cmm.encode();
        assert_eq!(Message::parse(&b).unwrap(), cmm);
        b.push(0);
        assert_eq!(
            Message::parse(&b).unwrap(),
            Message::CallMeMaybe { endpoints: vec![] }
        );
    }

    #[test]
    fn old_pings_without_node_key_and_padded_pings_parse() {
        let mut b = vec![TYPE_PING, 0];
        b.extend_from_slice(&[3; 12]);
        assert_eq!(
            Message::parse(&b).unwrap(),
            Message::Ping {
                tx_id: [3; 12],
                node_key: None,
                padding: 0
            }
        );
        b.extend_from_slice(&[5; 32]);
        b.extend_from_slice(&[0; 100]);
        assert_eq!(
            Message::parse(&b).unwrap(),
            Message::Ping {
                tx_id: [3; 12],
                node_key: Some(Key([5; 32])),
                padding: 100
            }
        );
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        assert_eq!(Message::parse(&[]), Err(DiscoError::Malformed));
        assert_eq!(Message::parse(&[TYPE_PING]), Err(DiscoError::Malformed));
        assert_eq!(
            Message::parse(&[TYPE_PING, 0, 1, 2]),
            Err(DiscoError::Malformed)
        );
        assert_eq!(
            Message::parse(&[TYPE_PONG, 0, 1, 2, 3]),
            Err(DiscoError::Malformed)
        );
        assert_eq!(
            Message::parse(&[0x07, 0, 1]),
            Ok(Message::Unknown { kind: 7 })
        );
        // Every prefix of a valid packet, and every single-byte corruption, is refused
        // or at worst parses: nothing panics.
        let (a_pub, a_to_b, b_from_a) = shared_pair();
        let pkt = seal(
            &a_pub,
            &a_to_b,
            &Message::Pong {
                tx_id: [1; 12],
                src: "10.1.1.1:1".parse().unwrap(),
            },
        );
        for n in 0..pkt.len() {
            let r = Sealed::parse(&pkt[..n]).and_then(|s| s.open(&b_from_a));
            assert!(r.is_err(), "prefix of {n} bytes accepted");
        }
        for i in HEADER_LEN..pkt.len() {
            let mut bad = pkt.clone();
            bad[i] ^= 0x80;
            let r = Sealed::parse(&bad).unwrap().open(&b_from_a);
            assert_eq!(r, Err(DiscoError::BadBox), "corrupted byte {i} accepted");
        }
    }
}
