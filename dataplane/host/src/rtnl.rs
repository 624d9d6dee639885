//! The rtnetlink messages policy routing needs and `sys::netlink` does not have:
//! FIB rules (`ip rule`), routes of any type in a numbered table (`ip route … table
//! 52`, including `throw`), and dumping a table so that cleanup can empty it.
//! Hand-written for the same reason as `sys::netlink`: a few fixed message shapes.

use ringscale_sys::netlink::{addr_bytes, open, receive, send, transact, Msg};
use std::io;
use std::net::IpAddr;

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const FR_ACT_TO_TBL: u8 = 1;
const FR_ACT_UNREACHABLE: u8 = 7;
const RTN_UNICAST: u8 = 1;
const RTN_THROW: u8 = 9;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTPROT_BOOT: u8 = 3;

/// What a policy rule does with a packet it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleAction {
    Lookup(u32),
    Unreachable,
}

/// One `ip rule`: `priority: [from all] [fwmark mark/mask] lookup T | unreachable`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub priority: u32,
    /// (mark, mask); None matches every packet.
    pub fwmark: Option<(u32, u32)>,
    pub action: RuleAction,
}

/// What a route in our table does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    /// Out through the interface with this index.
    Dev(u32),
    /// Stop looking in this table; the next rule's table decides.
    Throw,
}

/// A route found in a table dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DumpedRoute {
    pub dst: IpAddr,
    pub len: u8,
    pub kind: u8,
    pub oif: Option<u32>,
}

fn family(v6: bool) -> u8 {
    if v6 {
        libc::AF_INET6 as u8
    } else {
        libc::AF_INET as u8
    }
}

fn rule_msg(kind: u16, flags: u16, v6: bool, r: &Rule) -> Msg {
    let mut m = Msg::new(kind, flags);
    let (table, action) = match r.action {
        RuleAction::Lookup(t) => (t, FR_ACT_TO_TBL),
        RuleAction::Unreachable => (0, FR_ACT_UNREACHABLE),
    };
    // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags
    m.bytes(&[family(v6), 0, 0, 0, table.min(255) as u8, 0, 0, action])
        .bytes(&0u32.to_ne_bytes())
        .attr(FRA_PRIORITY, &r.priority.to_ne_bytes());
    if let Some((mark, mask)) = r.fwmark {
        m.attr(FRA_FWMARK, &mark.to_ne_bytes())
            .attr(FRA_FWMASK, &mask.to_ne_bytes());
    }
    if table != 0 {
        m.attr(FRA_TABLE, &table.to_ne_bytes());
    }
    m
}

/// Adds a policy rule; an identical existing rule is not an error.
pub fn add_rule(v6: bool, r: &Rule) -> io::Result<()> {
    match transact(&mut rule_msg(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, v6, r)) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        res => res,
    }
}

/// Deletes every copy of a policy rule; none present is not an error.
pub fn del_rule(v6: bool, r: &Rule) -> io::Result<()> {
    // Someone may have added the same rule more than once; the bound keeps a kernel
    // that keeps answering "deleted" from looping us forever.
    for _ in 0..64 {
        match transact(&mut rule_msg(RTM_DELRULE, 0, v6, r)) {
            Ok(()) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn route_msg(kind: u16, flags: u16, dst: IpAddr, len: u8, rk: RouteKind, table: u32) -> Msg {
    let mut m = Msg::new(kind, flags);
    let (rtype, scope) = match rk {
        RouteKind::Dev(_) => (RTN_UNICAST, RT_SCOPE_LINK),
        RouteKind::Throw => (RTN_THROW, RT_SCOPE_UNIVERSE),
    };
    let scope = if kind == RTM_DELROUTE {
        RT_SCOPE_UNIVERSE
    } else {
        scope
    };
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
    m.bytes(&[
        family(dst.is_ipv6()),
        len,
        0,
        0,
        table.min(255) as u8,
        RTPROT_BOOT,
        scope,
        rtype,
    ])
    .bytes(&0u32.to_ne_bytes())
    .attr(RTA_TABLE, &table.to_ne_bytes());
    if len > 0 {
        m.attr(RTA_DST, &addr_bytes(dst));
    }
    if let RouteKind::Dev(oif) = rk {
        m.attr(RTA_OIF, &oif.to_ne_bytes());
    }
    m
}

/// Adds (or replaces) a route in `table`.
pub fn add_route(dst: IpAddr, len: u8, kind: RouteKind, table: u32) -> io::Result<()> {
    transact(&mut route_msg(
        RTM_NEWROUTE,
        NLM_F_CREATE | NLM_F_REPLACE,
        dst,
        len,
        kind,
        table,
    ))
}

/// Deletes a route from `table`; a missing route is not an error.
pub fn del_route(dst: IpAddr, len: u8, kind: RouteKind, table: u32) -> io::Result<()> {
    match transact(&mut route_msg(RTM_DELROUTE, 0, dst, len, kind, table)) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ESRCH) | Some(libc::ENODEV)) => Ok(()),
        res => res,
    }
}

/// Every route of one family in `table`.
pub fn dump_table(v6: bool, table: u32) -> io::Result<Vec<DumpedRoute>> {
    let sock = open()?;
    let mut m = Msg::new(RTM_GETROUTE, NLM_F_DUMP);
    m.bytes(&[family(v6), 0, 0, 0, 0, 0, 0, 0])
        .bytes(&0u32.to_ne_bytes());
    send(&sock, m.finish())?;
    let mut out = Vec::new();
    receive(&sock, |kind, body| {
        if kind == RTM_NEWROUTE {
            if let Some(r) = parse_route(body, table) {
                out.push(r);
            }
        }
    })?;
    Ok(out)
}

/// A route message's destination, type and interface, if it belongs to `table`.
fn parse_route(body: &[u8], table: u32) -> Option<DumpedRoute> {
    if body.len() < 12 {
        return None;
    }
    let v6 = body[0] == libc::AF_INET6 as u8;
    let (len, mut tbl, kind) = (body[1], body[4] as u32, body[7]);
    let mut dst: IpAddr = if v6 {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let mut oif = None;
    let mut attrs = &body[12..];
    while attrs.len() >= 4 {
        let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let akind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if alen < 4 || alen > attrs.len() {
            break;
        }
        let data = &attrs[4..alen];
        match (akind, data.len()) {
            (RTA_TABLE, 4) => tbl = u32::from_ne_bytes(data.try_into().ok()?),
            (RTA_OIF, 4) => oif = Some(u32::from_ne_bytes(data.try_into().ok()?)),
            (RTA_DST, 4) => dst = IpAddr::from(<[u8; 4]>::try_from(data).ok()?),
            (RTA_DST, 16) => dst = IpAddr::from(<[u8; 16]>::try_from(data).ok()?),
            _ => {}
        }
        attrs = &attrs[((alen + 3) & !3).min(attrs.len())..];
    }
    (tbl == table).then_some(DumpedRoute {
        dst,
        len,
        kind,
        oif,
    })
}

/// Removes every route from `table` (both families), whatever put it there.
pub fn flush_table(table: u32) -> io::Result<()> {
    for v6 in [false, true] {
        let routes = match dump_table(v6, table) {
            Ok(r) => r,
            Err(e) if v6 && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => continue,
            Err(e) => return Err(e),
        };
        for r in routes {
            let kind = match (r.kind, r.oif) {
                (RTN_THROW, _) => RouteKind::Throw,
                (_, Some(oif)) => RouteKind::Dev(oif),
                _ => RouteKind::Throw,
            };
            let mut m = route_msg(RTM_DELROUTE, 0, r.dst, r.len, kind, table);
            // Delete by prefix and type only: the kernel finds it whatever its oif.
            m.buf[16 + 7] = r.kind;
            match transact(&mut m) {
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                res => res?,
            }
        }
    }
    Ok(())
}
