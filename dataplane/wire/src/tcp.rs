//! The TCP header (RFC 9293) as a view over a byte slice: the fields segmentation,
//! coalescing and the packet filter read or rewrite. See [`crate::ip`] for how views
//! are checked.

use crate::ip::{be16, be32, put_be16, put_be32, Error};

/// The header without options.
pub const HEADER_LEN: usize = 20;
/// Offset of the checksum field.
pub const CHECKSUM_OFFSET: usize = 16;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;
pub const ECE: u8 = 0x40;
pub const CWR: u8 = 0x80;

/// A TCP header at the start of `buffer` (the segment's data may follow it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpHeader<T> {
    /// A view without checks; accessors panic if `buffer` is shorter than their field.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpHeader { buffer }
    }

    /// A view of a buffer holding the whole header: data offset at least 5 and within
    /// the buffer.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let header = TcpHeader { buffer };
        let len = header.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = header.header_len();
        if header_len < HEADER_LEN || header_len > len {
            return Err(Error::HeaderLength);
        }
        Ok(header)
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 0)
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }

    #[inline]
    pub fn seq_number(&self) -> u32 {
        be32(self.buffer.as_ref(), 4)
    }

    #[inline]
    pub fn ack_number(&self) -> u32 {
        be32(self.buffer.as_ref(), 8)
    }

    /// The data offset, in bytes (options included).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[12] >> 4) * 4
    }

    /// Byte 12 whole: the data offset and the reserved/AE bits beside it.
    #[inline]
    pub fn offset_byte(&self) -> u8 {
        self.buffer.as_ref()[12]
    }

    /// The eight flag bits ([`FIN`] ... [`CWR`]).
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[13]
    }

    #[inline]
    pub fn window_len(&self) -> u16 {
        be16(self.buffer.as_ref(), 14)
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), CHECKSUM_OFFSET)
    }

    #[inline]
    pub fn urgent_at(&self) -> u16 {
        be16(self.buffer.as_ref(), 18)
    }

    /// The options, between the fixed header and the data offset (checked views only).
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpHeader<T> {
    #[inline]
    pub fn set_seq_number(&mut self, seq: u32) {
        put_be32(self.buffer.as_mut(), 4, seq)
    }

    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[13] = flags
    }

    #[inline]
    pub fn set_checksum(&mut self, checksum: u16) {
        put_be16(self.buffer.as_mut(), CHECKSUM_OFFSET, checksum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip::testpkt;

    #[test]
    fn fields() {
        let mut b = testpkt::tcp(40000, 22, SYN | ECE, &[1, 1, 4, 2], b"data");
        let t = TcpHeader::new_checked(&b[..]).unwrap();
        assert_eq!((t.src_port(), t.dst_port()), (40000, 22));
        assert_eq!((t.seq_number(), t.ack_number()), (0x0102_0304, 0x0a0b_0c0d));
        assert_eq!(
            (t.header_len(), t.offset_byte(), t.flags()),
            (24, 0x60, SYN | ECE)
        );
        assert_eq!((t.window_len(), t.checksum(), t.urgent_at()), (1000, 0, 0));
        assert_eq!(t.options(), &[1, 1, 4, 2]);
        let mut t = TcpHeader::new_unchecked(&mut b[..]);
        t.set_seq_number(7);
        t.set_flags(ACK);
        t.set_checksum(0xabcd);
        assert_eq!((t.seq_number(), t.flags(), t.checksum()), (7, ACK, 0xabcd));
    }

    #[test]
    fn malformed() {
        let b = testpkt::tcp(1, 2, ACK, &[1, 1, 1, 1], b"");
        for cut in 0..b.len() {
            assert!(TcpHeader::new_checked(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = b.clone();
        bad[12] = 4 << 4;
        assert_eq!(TcpHeader::new_checked(&bad[..]), Err(Error::HeaderLength));
        bad[12] = 15 << 4;
        assert_eq!(TcpHeader::new_checked(&bad[..]), Err(Error::HeaderLength));
    }
}
