//! The start of a disco packet (protocol.md §7.3): magic, then the sender's disco key.

/// "TS💬": the first six bytes of every disco packet.
pub const MAGIC: [u8; 6] = [0x54, 0x53, 0xf0, 0x9f, 0x92, 0xac];
/// Magic and sender key: what must be there before a packet can even be attributed.
pub const HEADER_LEN: usize = MAGIC.len() + 32;

/// Does this datagram start like a disco packet (Go `disco.LooksLikeDiscoWrapper`)?
#[inline]
pub fn looks_like_disco(b: &[u8]) -> bool {
    b.len() >= HEADER_LEN && b[..MAGIC.len()] == MAGIC
}

/// Is this datagram disco or STUN rather than WireGuard (Go `packetLooksLike`)? The
/// WireGuard socket carries all three; these two go to the path driver.
#[inline]
pub fn is_off_path_datagram(b: &[u8]) -> bool {
    // STUN binding request/response: magic cookie at 4..8, message class bits clear.
    let stun =
        b.len() >= 20 && b[0] & 0xc0 == 0 && b[1] == 0x01 && b[4..8] == [0x21, 0x12, 0xa4, 0x42];
    stun || looks_like_disco(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_disco_and_stun_from_wireguard() {
        let mut disco = MAGIC.to_vec();
        disco.extend_from_slice(&[7; 32]);
        assert!(looks_like_disco(&disco));
        assert!(is_off_path_datagram(&disco));
        assert!(!looks_like_disco(&disco[..HEADER_LEN - 1]));
        let stun = crate::stun::request(&[1; 12]);
        assert!(is_off_path_datagram(&stun));
        // A WireGuard handshake initiation (type 1, three zero bytes) is neither.
        let mut wg = vec![1u8, 0, 0, 0];
        wg.resize(148, 0x55);
        assert!(!is_off_path_datagram(&wg));
    }
}
