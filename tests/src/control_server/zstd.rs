//! The smallest valid zstd encoder: one frame of "raw" (stored, uncompressed) blocks.
//!
//! Go's control client always asks for `Compress: "zstd"` and then zstd-decodes every map
//! message (protocol.md §4.2), so a server must send zstd frames to it. Compression is not
//! the point for a test server; a frame whose blocks are stored verbatim is valid zstd
//! (RFC 8878 §3.1.1) that every decoder accepts, and needs no dependency.
//!
//! Layout written here:
//! ```text
//! 28 B5 2F FD                 magic number (0xFD2FB528, little-endian)
//! FHD                         frame header descriptor: Single_Segment_Flag set, no
//!                             checksum, no dictionary, FCS field size chosen by length
//! FCS (1, 2, 4 or 8 bytes)    the content size; with Single_Segment the window size
//!                             equals it, so no window descriptor is needed
//! blocks                      3-byte header (bit 0 Last_Block, bits 1-2 Block_Type = 0
//!                             raw, bits 3-23 Block_Size) followed by the bytes as they are
//! ```

/// Largest block (`Block_Maximum_Size`, RFC 8878 §3.1.1.2.4).
const MAX_BLOCK: usize = 128 * 1024;
const MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// Appends one zstd frame containing `data` to `out`.
pub fn encode_raw_frame(data: &[u8], out: &mut Vec<u8>) {
    out.reserve(data.len() + 18 + 3 * (data.len() / MAX_BLOCK + 1));
    out.extend_from_slice(&MAGIC);
    let len = data.len() as u64;
    const SINGLE_SEGMENT: u8 = 1 << 5;
    // FCS_Field_Size: flag 0 → 1 byte (only allowed with Single_Segment), flag 1 → 2 bytes
    // holding len - 256, flag 2 → 4 bytes, flag 3 → 8 bytes; all little-endian.
    if len < 256 {
        out.push(SINGLE_SEGMENT);
        out.push(len as u8);
    } else if len < 256 + 65536 {
        out.push((1 << 6) | SINGLE_SEGMENT);
        out.extend_from_slice(&((len - 256) as u16).to_le_bytes());
    } else if len <= u64::from(u32::MAX) {
        out.push((2 << 6) | SINGLE_SEGMENT);
        out.extend_from_slice(&(len as u32).to_le_bytes());
    } else {
        out.push((3 << 6) | SINGLE_SEGMENT);
        out.extend_from_slice(&len.to_le_bytes());
    }
    if data.is_empty() {
        // A frame needs at least one block: an empty last raw block.
        out.extend_from_slice(&block_header(0, true));
        return;
    }
    let mut chunks = data.chunks(MAX_BLOCK).peekable();
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        out.extend_from_slice(&block_header(chunk.len(), last));
        out.extend_from_slice(chunk);
    }
}

/// One zstd frame containing `data`.
pub fn raw_frame(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_raw_frame(data, &mut out);
    out
}

fn block_header(size: usize, last: bool) -> [u8; 3] {
    // Block_Type 0 (Raw_Block) occupies bits 1-2 and is zero.
    let value = ((size as u32) << 3) | u32::from(last);
    let b = value.to_le_bytes();
    [b[0], b[1], b[2]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// Decodes with the reference `zstd` tool (Debian's `zstd` package).
    fn reference_decode(frame: &[u8]) -> Vec<u8> {
        let mut child = Command::new("zstd")
            .args(["-d", "-c", "-q"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the zstd tool (apt install zstd) decodes our frames in this test");
        let mut stdin = child.stdin.take().unwrap();
        let input = frame.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(
            out.status.success(),
            "zstd refused our frame: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn reference_decoder_accepts_every_size_class() {
        // Each FCS field size, block boundaries, and several blocks.
        for len in [
            0usize,
            1,
            255,
            256,
            257,
            65_791,
            65_792,
            MAX_BLOCK - 1,
            MAX_BLOCK,
            MAX_BLOCK + 1,
            3 * MAX_BLOCK + 17,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let frame = raw_frame(&data);
            assert_eq!(reference_decode(&frame), data, "length {len}");
        }
    }

    #[test]
    fn header_layout() {
        let frame = raw_frame(b"{}");
        // magic, FHD (single segment, 1-byte FCS), FCS = 2, last raw block of 2 bytes.
        assert_eq!(
            frame,
            [0x28, 0xB5, 0x2F, 0xFD, 0x20, 2, 0x11, 0, 0, b'{', b'}']
        );
    }
}
