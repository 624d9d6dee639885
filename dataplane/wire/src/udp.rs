//! The UDP header (RFC 768) as a view over a byte slice. See [`crate::ip`] for how
//! views are checked.

use crate::ip::{be16, put_be16, Error};

pub const HEADER_LEN: usize = 8;
/// Offset of the checksum field.
pub const CHECKSUM_OFFSET: usize = 6;

/// A UDP header at the start of `buffer` (the datagram's data may follow it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpHeader<T> {
    /// A view without checks; accessors panic if `buffer` is shorter than their field.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpHeader { buffer }
    }

    /// A view of a buffer holding the 8-byte header. The length field is not checked
    /// against the buffer: what a mismatch means is the caller's policy.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(UdpHeader { buffer })
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

    /// The length field: header and data, in bytes.
    #[inline]
    pub fn length(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), 4))
    }

    /// The checksum field; 0 means "none" (allowed over IPv4 only).
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), CHECKSUM_OFFSET)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpHeader<T> {
    #[inline]
    pub fn set_len(&mut self, len: u16) {
        put_be16(self.buffer.as_mut(), 4, len)
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
    fn fields_and_truncation() {
        let mut b = testpkt::udp(5353, 53, b"query");
        let u = UdpHeader::new_checked(&b[..]).unwrap();
        assert_eq!(
            (u.src_port(), u.dst_port(), u.length(), u.checksum()),
            (5353, 53, 13, 0)
        );
        let mut u = UdpHeader::new_unchecked(&mut b[..]);
        u.set_len(9);
        u.set_checksum(0xffff);
        assert_eq!((u.length(), u.checksum()), (9, 0xffff));
        for cut in 0..HEADER_LEN {
            assert_eq!(UdpHeader::new_checked(&b[..cut]), Err(Error::Truncated));
        }
    }
}
