//! DERP frames (protocol.md §6.2, §6.3), with no I/O: `[type: 1][length: u32 BE]
//! [payload]`. Both our client and the test DERP server build and parse frames here.

use crate::disco::naclbox::{self, SharedKey};
use ringscale_keys::{Key, PrivateKey};
use std::fmt;

/// `"DERP🔑"`, at the start of the ServerKey frame.
pub const MAGIC: [u8; 8] = [0x44, 0x45, 0x52, 0x50, 0xf0, 0x9f, 0x94, 0x91];
/// Version 2: received packets carry their source key.
pub const PROTOCOL_VERSION: u32 = 2;
pub const HEADER_LEN: usize = 5;
/// Largest packet a SendPacket/RecvPacket may carry.
pub const MAX_PACKET_SIZE: usize = 64 << 10;
/// Largest frame a client accepts; anything bigger ends the connection.
pub const MAX_FRAME_SIZE: usize = 1 << 20;
/// Largest ClientInfo a server accepts.
pub const MAX_CLIENT_INFO_SIZE: usize = 256 << 10;

pub const SERVER_KEY: u8 = 0x01;
pub const CLIENT_INFO: u8 = 0x02;
pub const SERVER_INFO: u8 = 0x03;
pub const SEND_PACKET: u8 = 0x04;
pub const RECV_PACKET: u8 = 0x05;
pub const KEEP_ALIVE: u8 = 0x06;
pub const NOTE_PREFERRED: u8 = 0x07;
pub const PEER_GONE: u8 = 0x08;
pub const PING: u8 = 0x12;
pub const PONG: u8 = 0x13;
pub const HEALTH: u8 = 0x14;
pub const RESTARTING: u8 = 0x15;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The length field exceeds what this side accepts.
    TooLarge { kind: u8, len: usize },
    /// The payload is too short or otherwise not what the type requires.
    Malformed(&'static str),
    /// A NaCl box did not open.
    BadBox,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { kind, len } => {
                write!(f, "DERP frame type {kind:#04x} of {len} bytes is too large")
            }
            FrameError::Malformed(what) => write!(f, "malformed DERP frame: {what}"),
            FrameError::BadBox => f.write_str("DERP handshake box does not open"),
        }
    }
}

impl std::error::Error for FrameError {}

/// A frame header: type and payload length.
pub fn parse_header(h: &[u8; HEADER_LEN]) -> (u8, usize) {
    (h[0], u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize)
}

/// Appends one frame whose payload is the concatenation of `parts`.
pub fn encode_into(out: &mut Vec<u8>, kind: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.push(kind);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
}

pub fn encode(kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + parts.iter().map(|p| p.len()).sum::<usize>());
    encode_into(&mut out, kind, parts);
    out
}

fn key_at(b: &[u8], what: &'static str) -> Result<Key, FrameError> {
    let k: [u8; 32] = b
        .get(..32)
        .and_then(|k| k.try_into().ok())
        .ok_or(FrameError::Malformed(what))?;
    Ok(Key(k))
}

/// What a server sends a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerFrame {
    ServerKey(Key),
    /// Still sealed: opening needs our key and the server's.
    ServerInfo(Vec<u8>),
    RecvPacket {
        src: Key,
        packet: Vec<u8>,
    },
    KeepAlive,
    PeerGone {
        key: Key,
        reason: u8,
    },
    Ping([u8; 8]),
    Pong([u8; 8]),
    Health(String),
    Restarting {
        reconnect_in_ms: u32,
        try_for_ms: u32,
    },
    /// A type a client does not use (mesh frames, future ones): skipped.
    Other(u8),
}

impl ServerFrame {
    pub fn parse(kind: u8, p: &[u8]) -> Result<ServerFrame, FrameError> {
        Ok(match kind {
            SERVER_KEY => {
                if p.len() < MAGIC.len() + 32 || p[..MAGIC.len()] != MAGIC {
                    return Err(FrameError::Malformed("ServerKey without the DERP magic"));
                }
                ServerFrame::ServerKey(key_at(&p[MAGIC.len()..], "ServerKey")?)
            }
            SERVER_INFO => ServerFrame::ServerInfo(p.to_vec()),
            RECV_PACKET => {
                if p.len().saturating_sub(32) > MAX_PACKET_SIZE {
                    return Err(FrameError::TooLarge { kind, len: p.len() });
                }
                ServerFrame::RecvPacket {
                    src: key_at(p, "RecvPacket shorter than a key")?,
                    packet: p[32..].to_vec(),
                }
            }
            KEEP_ALIVE => ServerFrame::KeepAlive,
            PEER_GONE => ServerFrame::PeerGone {
                key: key_at(p, "PeerGone shorter than a key")?,
                reason: p.get(32).copied().unwrap_or(0),
            },
            PING | PONG => {
                let data: [u8; 8] = p
                    .get(..8)
                    .and_then(|d| d.try_into().ok())
                    .ok_or(FrameError::Malformed("ping without 8 bytes"))?;
                if kind == PING {
                    ServerFrame::Ping(data)
                } else {
                    ServerFrame::Pong(data)
                }
            }
            HEALTH => ServerFrame::Health(String::from_utf8_lossy(p).into_owned()),
            RESTARTING => {
                if p.len() < 8 {
                    return Err(FrameError::Malformed("Restarting shorter than 8 bytes"));
                }
                ServerFrame::Restarting {
                    reconnect_in_ms: u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
                    try_for_ms: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
                }
            }
            other => ServerFrame::Other(other),
        })
    }
}

/// What a client sends a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// The client's node key and its sealed JSON (nonce ‖ box).
    ClientInfo {
        key: Key,
        sealed: Vec<u8>,
    },
    SendPacket {
        dst: Key,
        packet: Vec<u8>,
    },
    NotePreferred(bool),
    Ping([u8; 8]),
    Pong([u8; 8]),
    Other(u8),
}

impl ClientFrame {
    pub fn parse(kind: u8, p: &[u8]) -> Result<ClientFrame, FrameError> {
        Ok(match kind {
            CLIENT_INFO => ClientFrame::ClientInfo {
                key: key_at(p, "ClientInfo shorter than a key")?,
                sealed: p[32..].to_vec(),
            },
            SEND_PACKET => {
                if p.len().saturating_sub(32) > MAX_PACKET_SIZE {
                    return Err(FrameError::TooLarge { kind, len: p.len() });
                }
                ClientFrame::SendPacket {
                    dst: key_at(p, "SendPacket shorter than a key")?,
                    packet: p[32..].to_vec(),
                }
            }
            NOTE_PREFERRED => ClientFrame::NotePreferred(p.first() == Some(&1)),
            PING | PONG => {
                let data: [u8; 8] = p
                    .get(..8)
                    .and_then(|d| d.try_into().ok())
                    .ok_or(FrameError::Malformed("ping without 8 bytes"))?;
                if kind == PING {
                    ClientFrame::Ping(data)
                } else {
                    ClientFrame::Pong(data)
                }
            }
            other => ClientFrame::Other(other),
        })
    }
}

/// The ServerKey frame a server opens with.
pub fn server_key_frame(server_public: &Key) -> Vec<u8> {
    encode(SERVER_KEY, &[&MAGIC, &server_public.0])
}

/// The client's ClientInfo frame: its node public key, then `{"version":2,
/// "CanAckPings":true}` sealed with its node private key to the server's key. Sealing
/// with the node key is what proves to the server that we own the key packets for us
/// are addressed to.
pub fn client_info_frame(node_private: &PrivateKey, server_public: &Key) -> Vec<u8> {
    let json = format!("{{\"version\":{PROTOCOL_VERSION},\"CanAckPings\":true}}");
    let shared = SharedKey::new(node_private, &server_public.0);
    let sealed = naclbox::seal_with_nonce(&shared, json.as_bytes());
    encode(CLIENT_INFO, &[&node_private.public().0, &sealed])
}

/// The server's ServerInfo frame for a client.
pub fn server_info_frame(server_private: &PrivateKey, client_public: &Key) -> Vec<u8> {
    let json = format!("{{\"version\":{PROTOCOL_VERSION}}}");
    let shared = SharedKey::new(server_private, &client_public.0);
    encode(
        SERVER_INFO,
        &[&naclbox::seal_with_nonce(&shared, json.as_bytes())],
    )
}

/// Opens a sealed ClientInfo or ServerInfo (nonce ‖ box) and returns its JSON.
pub fn open_info(
    our_private: &PrivateKey,
    their_public: &Key,
    sealed: &[u8],
) -> Result<serde_json::Value, FrameError> {
    let shared = SharedKey::new(our_private, &their_public.0);
    let plain = naclbox::open_with_nonce(&shared, sealed).map_err(|_| FrameError::BadBox)?;
    serde_json::from_slice(&plain).map_err(|_| FrameError::Malformed("info is not JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(frame: &[u8]) -> (u8, &[u8]) {
        let (kind, len) = parse_header(frame[..HEADER_LEN].try_into().unwrap());
        assert_eq!(len, frame.len() - HEADER_LEN);
        (kind, &frame[HEADER_LEN..])
    }

    #[test]
    fn handshake_frames_round_trip_and_prove_the_node_key() {
        let server = PrivateKey::from_bytes([0x51; 32]);
        let client = PrivateKey::from_bytes([0xc1; 32]);
        let f = server_key_frame(&server.public());
        let (kind, p) = split(&f);
        assert_eq!(
            ServerFrame::parse(kind, p).unwrap(),
            ServerFrame::ServerKey(server.public())
        );
        let f = client_info_frame(&client, &server.public());
        let (kind, p) = split(&f);
        let ClientFrame::ClientInfo { key, sealed } = ClientFrame::parse(kind, p).unwrap() else {
            panic!("not a ClientInfo");
        };
        assert_eq!(key, client.public());
        let info = open_info(&server, &key, &sealed).unwrap();
        assert_eq!(info["version"], 2);
        assert_eq!(info["CanAckPings"], true);
        // Someone claiming the client's key without its private key cannot seal.
        let impostor = client_info_frame(&PrivateKey::from_bytes([0xee; 32]), &server.public());
        let (kind, p) = split(&impostor);
        let ClientFrame::ClientInfo { sealed, .. } = ClientFrame::parse(kind, p).unwrap() else {
            panic!("not a ClientInfo");
        };
        assert_eq!(
            open_info(&server, &client.public(), &sealed),
            Err(FrameError::BadBox)
        );
        let f = server_info_frame(&server, &client.public());
        let (kind, p) = split(&f);
        let ServerFrame::ServerInfo(sealed) = ServerFrame::parse(kind, p).unwrap() else {
            panic!("not a ServerInfo");
        };
        assert_eq!(
            open_info(&client, &server.public(), &sealed).unwrap()["version"],
            2
        );
    }

    #[test]
    fn packets_and_control_frames_parse() {
        let src = Key([3; 32]);
        let f = encode(RECV_PACKET, &[&src.0, b"wireguard"]);
        let (kind, p) = split(&f);
        assert_eq!(
            ServerFrame::parse(kind, p).unwrap(),
            ServerFrame::RecvPacket {
                src,
                packet: b"wireguard".to_vec()
            }
        );
        assert_eq!(
            ServerFrame::parse(PING, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap(),
            ServerFrame::Ping([1, 2, 3, 4, 5, 6, 7, 8])
        );
        assert_eq!(
            ServerFrame::parse(0x42, b"future").unwrap(),
            ServerFrame::Other(0x42)
        );
        assert_eq!(
            ClientFrame::parse(NOTE_PREFERRED, &[1]).unwrap(),
            ClientFrame::NotePreferred(true)
        );
    }

    #[test]
    fn short_and_oversized_frames_are_errors() {
        for kind in [SERVER_KEY, RECV_PACKET, PEER_GONE, PING, PONG, RESTARTING] {
            assert!(ServerFrame::parse(kind, &[0; 7]).is_err(), "type {kind}");
        }
        assert!(
            ServerFrame::parse(SERVER_KEY, &[0; 40]).is_err(),
            "no magic"
        );
        let big = vec![0u8; 32 + MAX_PACKET_SIZE + 1];
        assert!(matches!(
            ServerFrame::parse(RECV_PACKET, &big),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            ClientFrame::parse(SEND_PACKET, &big),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(ClientFrame::parse(CLIENT_INFO, &[0; 31]).is_err());
        assert_eq!(
            open_info(
                &PrivateKey::from_bytes([1; 32]),
                &PrivateKey::from_bytes([2; 32]).public(),
                &[0; 20]
            ),
            Err(FrameError::BadBox)
        );
    }
}
