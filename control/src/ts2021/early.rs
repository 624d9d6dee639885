//! The optional early payload the server sends inside Noise before HTTP/2 begins
//! (protocol.md §2.6): `FF FF FF 'T' 'S'`, a big-endian u32 length, then JSON
//! `tailcfg.EarlyNoise`. Its 9-byte header has the size of an HTTP/2 frame header, and the
//! magic cannot start one, so the client sniffs the first 9 bytes and hands them back to
//! HTTP/2 when there is no payload.

use serde::{Deserialize, Serialize};

/// The 5-byte magic that starts an early payload.
pub const EARLY_PAYLOAD_MAGIC: [u8; 5] = *b"\xff\xff\xffTS";
/// Size of the sniffed header (magic + length), equal to an HTTP/2 frame header.
pub const EARLY_HEADER_LEN: usize = 9;
/// Largest payload accepted. Real payloads are ~90 bytes (one challenge key); Go accepts
/// up to 10 MiB, which would only let a hostile server make us allocate.
pub const MAX_EARLY_PAYLOAD_LEN: usize = 64 * 1024;

/// `tailcfg.EarlyNoise`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarlyNoise {
    /// `chalpub:<hex>`: a per-connection key the node could seal a proof of its node key
    /// to. Current Go clients ignore it, and so do we; kept for logging and future use.
    #[serde(
        rename = "nodeKeyChallenge",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub node_key_challenge: String,
}

/// What the first 9 decrypted bytes from the server are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyHeader {
    /// An early payload of this many JSON bytes follows.
    Payload(usize),
    /// No early payload: these bytes are the start of HTTP/2 and must be replayed.
    Absent,
}

/// Classifies the first [`EARLY_HEADER_LEN`] bytes from the server.
pub fn parse_early_header(header: &[u8; EARLY_HEADER_LEN]) -> Result<EarlyHeader, String> {
    if header[..5] != EARLY_PAYLOAD_MAGIC {
        return Ok(EarlyHeader::Absent);
    }
    let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
    if len > MAX_EARLY_PAYLOAD_LEN {
        return Err(format!(
            "declared length {len} exceeds {MAX_EARLY_PAYLOAD_LEN}"
        ));
    }
    Ok(EarlyHeader::Payload(len))
}

/// Decodes the payload JSON (unknown fields ignored, as Go does).
pub fn parse_early_payload(json: &[u8]) -> Result<EarlyNoise, String> {
    serde_json::from_slice(json).map_err(|e| format!("invalid EarlyNoise JSON: {e}"))
}

/// Encodes header and JSON, ready to be sealed into records.
pub fn encode_early_payload(payload: &EarlyNoise) -> Vec<u8> {
    let json = serde_json::to_vec(payload).expect("EarlyNoise always serializes");
    let mut out = Vec::with_capacity(EARLY_HEADER_LEN + json.len());
    out.extend_from_slice(&EARLY_PAYLOAD_MAGIC);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = EarlyNoise {
            node_key_challenge: format!("chalpub:{}", "ab".repeat(32)),
        };
        let wire = encode_early_payload(&p);
        let header: [u8; 9] = wire[..9].try_into().unwrap();
        assert_eq!(
            parse_early_header(&header),
            Ok(EarlyHeader::Payload(wire.len() - 9))
        );
        assert!(std::str::from_utf8(&wire[9..])
            .unwrap()
            .starts_with("{\"nodeKeyChallenge\":\"chalpub:abab"));
        assert_eq!(parse_early_payload(&wire[9..]).unwrap(), p);
    }

    #[test]
    fn http2_settings_frame_is_not_a_payload() {
        // An HTTP/2 SETTINGS frame header: length 18, type 4, flags 0, stream 0.
        let settings = [0, 0, 18, 4, 0, 0, 0, 0, 0];
        assert_eq!(parse_early_header(&settings), Ok(EarlyHeader::Absent));
    }

    #[test]
    fn rejects_oversized_and_invalid() {
        let mut header = [0xff, 0xff, 0xff, b'T', b'S', 0, 0, 0, 0];
        header[5..].copy_from_slice(&(10u32 << 20).to_be_bytes());
        assert!(parse_early_header(&header).is_err());
        assert!(parse_early_payload(b"{nope").is_err());
        assert_eq!(
            parse_early_payload(b"{\"future\":1}").unwrap(),
            EarlyNoise::default()
        );
    }
}
