//! DNS messages on the wire (RFC 1035), just as much as quad-100 needs: the header,
//! the first question of a query (names with compression pointers), and responses
//! built from a query with A, AAAA and PTR answers. Parsing works over byte slices and
//! never trusts a count or a pointer: compression pointers must point strictly
//! backwards (so they cannot loop), names are limited to 255 bytes, and every read is
//! bounds-checked.
//!
//! Why not hickory-proto: measured on this workspace's release profile (fat LTO,
//! stripped, x86_64), a program that only parses a query and builds an A/AAAA/PTR
//! answer with hickory-proto 0.25 (default features off, `std` on) is 445 KB larger
//! than the same program without it (758 KB vs 313 KB): it links `idna` with its ICU
//! normalisation tables, `url`, `rand` and the futures crates. That is about what the
//! Go router build paid for its whole netstack; this module is a few KB.

use std::fmt;
use std::net::IpAddr;

pub const HEADER_LEN: usize = 12;
/// Longest name in wire form (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 255;
/// Largest UDP answer for a client that did not announce a bigger buffer (EDNS).
pub const CLASSIC_UDP_MAX: usize = 512;

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_HINFO: u16 = 13;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_AXFR: u16 = 252;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;

/// Header flag bits (the second 16-bit word).
const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const OPCODE_MASK: u16 = 0x7800;

/// Response codes quad-100 gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    NxDomain = 3,
    NotImp = 4,
    Refused = 5,
}

/// Why a message is not a query we can answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than a header: nothing to answer (not even an ID to echo).
    NoHeader,
    /// The QR bit is set: a response, never answered (that is how loops start).
    NotAQuery,
    /// The header is fine but the question is not: answer FORMERR.
    BadQuestion(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NoHeader => f.write_str("shorter than a DNS header"),
            ParseError::NotAQuery => f.write_str("a response, not a query"),
            ParseError::BadQuestion(why) => write!(f, "bad question: {why}"),
        }
    }
}

impl std::error::Error for ParseError {}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// The message ID of anything at least two bytes long.
pub fn message_id(msg: &[u8]) -> Option<u16> {
    be16(msg, 0)
}

/// The first question of a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// The name in presentation form, lower-cased, with the trailing dot
    /// (`peer.tailnet.test.`; the root is `.`).
    pub name: String,
    /// The name as the client sent it, uncompressed wire form with its case, echoed in
    /// the answer's question section (clients compare it, some case-sensitively for
    /// 0x20 randomisation).
    pub wire_name: Vec<u8>,
    pub qtype: u16,
    pub qclass: u16,
}

/// A parsed query: the header fields a response needs and its first question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// The query's flags word (opcode and RD are copied into the response).
    pub flags: u16,
    pub question: Question,
    /// The UDP payload size the client announced with EDNS (OPT), if any.
    pub edns_udp_size: Option<u16>,
}

impl Query {
    pub fn opcode(&self) -> u8 {
        ((self.flags & OPCODE_MASK) >> 11) as u8
    }

    /// Largest UDP response this client takes.
    pub fn udp_limit(&self) -> usize {
        self.edns_udp_size
            .map_or(CLASSIC_UDP_MAX, |s| usize::from(s).max(CLASSIC_UDP_MAX))
    }
}

/// Reads the name at `at`: returns it (lower-cased presentation form with trailing dot,
/// and uncompressed wire form) and the offset just after it in the message (after the
/// first pointer, if any).
pub fn read_name(msg: &[u8], at: usize) -> Result<(String, Vec<u8>, usize), &'static str> {
    let mut text = String::new();
    let mut wire = Vec::new();
    let mut pos = at;
    // Start of the stretch of labels being read; every pointer must land before it.
    let mut floor = at;
    let mut end = None;
    loop {
        let len = *msg.get(pos).ok_or("name runs past the end")? as usize;
        match len & 0xc0 {
            0x00 => {}
            0xc0 => {
                let target = usize::from(be16(msg, pos).ok_or("truncated pointer")? & 0x3fff);
                // Each jump must land before everything read so far, so the targets
                // strictly decrease: a name can never loop, however its pointers chain.
                if target >= floor {
                    return Err("compression pointer does not point backwards");
                }
                end.get_or_insert(pos + 2);
                pos = target;
                floor = target;
                continue;
            }
            _ => return Err("reserved label type"),
        }
        wire.push(len as u8);
        if len == 0 {
            break;
        }
        let label = msg
            .get(pos + 1..pos + 1 + len)
            .ok_or("label runs past the end")?;
        wire.extend_from_slice(label);
        if wire.len() > MAX_NAME_LEN {
            return Err("name longer than 255 bytes");
        }
        for &c in label {
            // A dot or a control byte inside a label cannot be told apart from the
            // label boundaries of another name in presentation form.
            if c == b'.' || !(0x21..=0x7e).contains(&c) {
                return Err("unsupported byte in a label");
            }
            text.push(c.to_ascii_lowercase() as char);
        }
        text.push('.');
        pos += 1 + len;
    }
    if wire.len() > MAX_NAME_LEN {
        return Err("name longer than 255 bytes");
    }
    if text.is_empty() {
        text.push('.');
    }
    Ok((text, wire, end.unwrap_or(pos + 1)))
}

/// Skips a name without decoding it (for records after the question).
fn skip_name(msg: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *msg.get(pos)? as usize;
        match len & 0xc0 {
            0x00 if len == 0 => return Some(pos + 1),
            0x00 => pos += 1 + len,
            0xc0 => return Some(pos + 2),
            _ => return None,
        }
    }
}

/// Parses a query: its header and first question, and the EDNS payload size if an OPT
/// record follows in the additional section. Anything after what we read is ignored,
/// whatever the counts claim.
pub fn parse_query(msg: &[u8]) -> Result<Query, ParseError> {
    if msg.len() < HEADER_LEN {
        return Err(ParseError::NoHeader);
    }
    let id = be16(msg, 0).unwrap_or(0);
    let flags = be16(msg, 2).unwrap_or(0);
    if flags & FLAG_QR != 0 {
        return Err(ParseError::NotAQuery);
    }
    let qdcount = be16(msg, 4).unwrap_or(0);
    if qdcount == 0 {
        return Err(ParseError::BadQuestion("no question"));
    }
    let (name, wire_name, pos) = read_name(msg, HEADER_LEN).map_err(ParseError::BadQuestion)?;
    let qtype = be16(msg, pos).ok_or(ParseError::BadQuestion("truncated question"))?;
    let qclass = be16(msg, pos + 2).ok_or(ParseError::BadQuestion("truncated question"))?;
    let edns_udp_size = find_opt_size(msg, pos + 4);
    Ok(Query {
        id,
        flags,
        question: Question {
            name,
            wire_name,
            qtype,
            qclass,
        },
        edns_udp_size,
    })
}

/// The UDP size of the OPT record, if the message has one where a query puts it: the
/// questions after the first are skipped, then answer, authority and additional
/// records are walked (bounded by the message length, not by the counts).
fn find_opt_size(msg: &[u8], mut pos: usize) -> Option<u16> {
    let qd = be16(msg, 4)?;
    for _ in 1..qd {
        pos = skip_name(msg, pos)? + 4;
    }
    let records = u32::from(be16(msg, 6)?) + u32::from(be16(msg, 8)?) + u32::from(be16(msg, 10)?);
    for _ in 0..records {
        let name_end = skip_name(msg, pos)?;
        let rtype = be16(msg, name_end)?;
        let class = be16(msg, name_end + 2)?;
        let rdlen = usize::from(be16(msg, name_end + 8)?);
        if rtype == TYPE_OPT {
            return Some(class);
        }
        pos = name_end + 10 + rdlen;
        if pos > msg.len() {
            return None;
        }
    }
    None
}

/// The data of one answer record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RData {
    Addr(IpAddr),
    /// A domain name in presentation form with trailing dot.
    Ptr(String),
}

/// Encodes a presentation-form name (`a.b.` or `a.b`) in wire form, or None if a
/// label is empty or too long, or the name is too long.
pub fn encode_name(name: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(name.len() + 2);
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            if label.is_empty() || label.len() > 63 {
                return None;
            }
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    (out.len() <= MAX_NAME_LEN).then_some(out)
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Builds the response to `q` the way Go's quad-100 does (`marshalResponse`): QR and
/// AA set, opcode and RD copied, RA set when RD was; the question echoed; answers
/// only for NOERROR, each named by a pointer to the question's name, with `ttl`.
pub fn build_response(q: &Query, rcode: Rcode, answers: &[RData], ttl: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + answers.len() * 32);
    let rd = q.flags & FLAG_RD;
    let flags =
        FLAG_QR | FLAG_AA | (q.flags & OPCODE_MASK) | rd | if rd != 0 { FLAG_RA } else { 0 };
    put16(&mut out, q.id);
    put16(&mut out, flags | rcode as u16);
    let answers = if rcode == Rcode::NoError {
        answers
    } else {
        &[]
    };
    put16(&mut out, 1);
    let an_at = out.len();
    put16(&mut out, 0);
    put16(&mut out, 0);
    put16(&mut out, 0);
    out.extend_from_slice(&q.question.wire_name);
    put16(&mut out, q.question.qtype);
    put16(&mut out, q.question.qclass);
    let mut count = 0u16;
    for a in answers {
        let (rtype, rdata) = match a {
            RData::Addr(IpAddr::V4(v4)) => (TYPE_A, v4.octets().to_vec()),
            RData::Addr(IpAddr::V6(v6)) => (TYPE_AAAA, v6.octets().to_vec()),
            RData::Ptr(name) => match encode_name(name) {
                Some(n) => (TYPE_PTR, n),
                None => continue,
            },
        };
        // The question's name is at offset 12: a pointer to it names every answer.
        put16(&mut out, 0xc000 | HEADER_LEN as u16);
        put16(&mut out, rtype);
        put16(&mut out, CLASS_IN);
        out.extend_from_slice(&ttl.to_be_bytes());
        put16(&mut out, rdata.len() as u16);
        out.extend_from_slice(&rdata);
        count += 1;
    }
    out[an_at..an_at + 2].copy_from_slice(&count.to_be_bytes());
    out
}

/// A header-only error response (no question): for queries whose question could not
/// be read (FORMERR), echoing the ID and opcode. None when there is no header or the
/// message is itself a response.
pub fn error_without_question(msg: &[u8], rcode: Rcode) -> Option<Vec<u8>> {
    if msg.len() < HEADER_LEN {
        return None;
    }
    let flags = be16(msg, 2)?;
    if flags & FLAG_QR != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&msg[..2]);
    let rd = flags & FLAG_RD;
    let f = FLAG_QR | (flags & OPCODE_MASK) | rd | if rd != 0 { FLAG_RA } else { 0 };
    put16(&mut out, f | rcode as u16);
    out.extend_from_slice(&[0; 8]);
    Some(out)
}

/// Is the TC (truncated) bit set in this response?
pub fn is_truncated(msg: &[u8]) -> bool {
    be16(msg, 2).is_some_and(|f| f & FLAG_TC != 0)
}

/// The rcode of a response.
pub fn rcode(msg: &[u8]) -> Option<u8> {
    Some((be16(msg, 2)? & 0x000f) as u8)
}

/// Makes `resp` fit `limit` bytes for a UDP client: unchanged if it fits, else the
/// header and question only, with TC set so the client retries over TCP.
pub fn truncate_for_udp(resp: &[u8], limit: usize) -> Vec<u8> {
    if resp.len() <= limit || resp.len() < HEADER_LEN {
        return resp.to_vec();
    }
    let question_end = be16(resp, 4)
        .filter(|&qd| qd >= 1)
        .and_then(|_| skip_name(resp, HEADER_LEN))
        .map(|p| p + 4)
        .filter(|&p| p <= resp.len() && p <= limit)
        .unwrap_or(HEADER_LEN);
    let mut out = resp[..question_end].to_vec();
    let flags = be16(&out, 2).unwrap_or(0) | FLAG_TC;
    out[2..4].copy_from_slice(&flags.to_be_bytes());
    let qd: u16 = if question_end > HEADER_LEN { 1 } else { 0 };
    out[4..6].copy_from_slice(&qd.to_be_bytes());
    out[6..12].fill(0);
    out
}

/// A query for `name` and `qtype` with RD set (for tests and the PeerAPI debug form).
pub fn build_query(id: u16, name: &str, qtype: u16) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(HEADER_LEN + name.len() + 6);
    put16(&mut out, id);
    put16(&mut out, FLAG_RD);
    put16(&mut out, 1);
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&encode_name(name)?);
    put16(&mut out, qtype);
    put16(&mut out, CLASS_IN);
    Some(out)
}

/// The addresses and PTR names in the answer section of a response (tests, logs).
pub fn answers(msg: &[u8]) -> Option<Vec<RData>> {
    let qd = be16(msg, 4)?;
    let an = be16(msg, 6)?;
    let mut pos = HEADER_LEN;
    for _ in 0..qd {
        pos = skip_name(msg, pos)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        let name_end = skip_name(msg, pos)?;
        let rtype = be16(msg, name_end)?;
        let rdlen = usize::from(be16(msg, name_end + 8)?);
        let data_at = name_end + 10;
        let data = msg.get(data_at..data_at + rdlen)?;
        match rtype {
            TYPE_A if rdlen == 4 => {
                out.push(RData::Addr(IpAddr::from(<[u8; 4]>::try_from(data).ok()?)))
            }
            TYPE_AAAA if rdlen == 16 => {
                out.push(RData::Addr(IpAddr::from(<[u8; 16]>::try_from(data).ok()?)))
            }
            TYPE_PTR => out.push(RData::Ptr(read_name(msg, data_at).ok()?.0)),
            _ => {}
        }
        pos = data_at + rdlen;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        build_query(0x1234, name, qtype).unwrap()
    }

    #[test]
    fn a_query_parses_lower_cased_with_its_wire_name_kept() {
        let q = parse_query(&query("Peer.Tailnet.TEST.", TYPE_AAAA)).unwrap();
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.question.name, "peer.tailnet.test.");
        assert_eq!(&q.question.wire_name[..5], b"\x04Peer");
        assert_eq!(q.question.qtype, TYPE_AAAA);
        assert_eq!(q.udp_limit(), 512);
    }

    #[test]
    fn the_root_name_parses() {
        let q = parse_query(&query(".", TYPE_NS)).unwrap();
        assert_eq!(q.question.name, ".");
    }

    #[test]
    fn edns_size_is_found_after_the_question() {
        let mut m = query("a.b.", TYPE_A);
        m[11] = 1; // ARCOUNT
        m.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse_query(&m).unwrap().udp_limit(), 4096);
    }

    #[test]
    fn a_response_is_built_with_pointer_named_answers() {
        let q = parse_query(&query("Peer.tailnet.test.", TYPE_A)).unwrap();
        let r = build_response(
            &q,
            Rcode::NoError,
            &[RData::Addr("100.64.0.2".parse().unwrap())],
            600,
        );
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[2] & 0x84, 0x84, "QR and AA");
        assert_eq!(r[3] & 0x80, 0x80, "RA because RD was set");
        assert_eq!(rcode(&r), Some(0));
        assert_eq!(
            answers(&r).unwrap(),
            vec![RData::Addr("100.64.0.2".parse().unwrap())]
        );
        // The question is echoed with the client's case.
        assert_eq!(read_name(&r, 12).unwrap().1[..5], *b"\x04Peer");
    }

    #[test]
    fn error_responses_carry_no_answers() {
        let q = parse_query(&query("x.tailnet.test.", TYPE_A)).unwrap();
        let r = build_response(
            &q,
            Rcode::NxDomain,
            &[RData::Addr("1.2.3.4".parse().unwrap())],
            600,
        );
        assert_eq!(rcode(&r), Some(3));
        assert_eq!(answers(&r).unwrap(), vec![]);
    }

    #[test]
    fn short_messages_and_responses_are_not_answered() {
        assert_eq!(parse_query(&[0; 11]), Err(ParseError::NoHeader));
        let mut m = query("a.", TYPE_A);
        m[2] |= 0x80;
        assert_eq!(parse_query(&m), Err(ParseError::NotAQuery));
        assert_eq!(error_without_question(&m, Rcode::FormErr), None);
        assert_eq!(error_without_question(&[1, 2, 3], Rcode::FormErr), None);
    }

    #[test]
    fn a_question_that_is_cut_short_is_a_format_error() {
        let m = query("peer.tailnet.test.", TYPE_A);
        for cut in HEADER_LEN..m.len() {
            assert!(
                matches!(parse_query(&m[..cut]), Err(ParseError::BadQuestion(_))),
                "cut at {cut}"
            );
        }
        let r = error_without_question(&m[..14], Rcode::FormErr).unwrap();
        assert_eq!(r.len(), HEADER_LEN);
        assert_eq!(rcode(&r), Some(1));
        assert_eq!(&r[..2], &m[..2]);
    }

    #[test]
    fn pointer_loops_and_forward_pointers_are_refused() {
        let mut m = query("a.", TYPE_A);
        m.truncate(HEADER_LEN);
        // A pointer to itself.
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(matches!(parse_query(&m), Err(ParseError::BadQuestion(_))));
        // Two pointers to each other: the second points forward.
        let mut m2 = m[..HEADER_LEN].to_vec();
        m2.extend_from_slice(&[0xc0, 14, 0xc0, 12, 0, 1, 0, 1]);
        assert!(matches!(parse_query(&m2), Err(ParseError::BadQuestion(_))));
    }

    #[test]
    fn names_over_255_bytes_are_refused() {
        let mut m = query("a.", TYPE_A)[..HEADER_LEN].to_vec();
        for _ in 0..5 {
            m.push(63);
            m.extend_from_slice(&[b'x'; 63]);
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert!(matches!(parse_query(&m), Err(ParseError::BadQuestion(_))));
    }

    #[test]
    fn huge_counts_do_not_matter() {
        let mut m = query("a.b.", TYPE_A);
        m[4..12].copy_from_slice(&[0xff; 8]);
        let q = parse_query(&m).unwrap();
        assert_eq!(q.question.name, "a.b.");
        assert_eq!(q.edns_udp_size, None);
    }

    #[test]
    fn a_big_response_is_cut_to_its_question_with_tc() {
        let q = parse_query(&query("many.example.", TYPE_A)).unwrap();
        let addrs: Vec<RData> = (0..100u8)
            .map(|i| RData::Addr(IpAddr::from([10, 0, 0, i])))
            .collect();
        let r = build_response(&q, Rcode::NoError, &addrs, 600);
        assert!(r.len() > 512);
        let t = truncate_for_udp(&r, 512);
        assert!(t.len() <= 512 && is_truncated(&t));
        assert_eq!(answers(&t).unwrap(), vec![]);
        assert_eq!(read_name(&t, 12).unwrap().0, "many.example.");
        assert_eq!(truncate_for_udp(&r, 4096), r);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 80) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| (seed.rotate_left(i as u32 * 5) & 0xff) as u8)
                .collect();
            let _ = parse_query(&bytes);
            let _ = answers(&bytes);
            let _ = truncate_for_udp(&bytes, 20);
        }
    }
}
