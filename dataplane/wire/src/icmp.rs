//! The ICMP (RFC 792) and ICMPv6 (RFC 4443) header as a view over a byte slice: both
//! start with type, code and checksum, and every message has at least 8 bytes. See
//! [`crate::ip`] for how views are checked.

use crate::ip::{be16, Error};

pub const HEADER_LEN: usize = 8;

/// An ICMP or ICMPv6 header at the start of `buffer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpHeader<T> {
    /// A view without checks; accessors panic if `buffer` is shorter than their field.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        IcmpHeader { buffer }
    }

    /// A view of a buffer holding the 8-byte header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(IcmpHeader { buffer })
    }

    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    #[inline]
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[1]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_truncation() {
        let b = [3u8, 1, 0xab, 0xcd, 0, 0, 0, 0];
        let h = IcmpHeader::new_checked(&b[..]).unwrap();
        assert_eq!((h.msg_type(), h.code(), h.checksum()), (3, 1, 0xabcd));
        for cut in 0..HEADER_LEN {
            assert_eq!(IcmpHeader::new_checked(&b[..cut]), Err(Error::Truncated));
        }
    }
}
