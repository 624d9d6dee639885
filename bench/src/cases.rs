//! What the benchmark measures, as data: the tunnel implementations (cases), the traffic
//! (tests) and the shape of the network (topologies). A new mode is a new entry here,
//! not a new code path: e.g. a ringscale variant with other daemon flags is one more
//! `Case` with `Tunnel::Ringscale { daemon_args }`.

/// A tunnel implementation run in each namespace.
#[derive(Clone, Debug)]
pub enum Tunnel {
    /// No tunnel: iperf3 straight over the underlay veth (the ceiling).
    None,
    /// Debian's wireguard-go, configured with `wg`.
    WireguardGo,
    /// boringtun-cli from crates.io, configured with `wg`.
    Boringtun { threads: u32 },
    /// Our daemon, `ringscale tailscaled --wg-config FILE --tun NAME` plus extra flags.
    Ringscale { daemon_args: Vec<String> },
}

#[derive(Clone, Debug)]
pub struct Case {
    /// The name used on the command line, in the table and in the JSON.
    pub name: &'static str,
    pub tunnel: Tunnel,
    /// MTU of the tunnel interface; for `Tunnel::None` the MTU of the veth itself.
    pub mtu: u32,
    /// Whether the case runs when `--cases` is not given.
    pub default: bool,
    /// One line for the table's legend.
    pub note: &'static str,
}

/// The tunnel MTU all tunnels use (Tailscale's default).
pub const TUNNEL_MTU: u32 = 1280;

pub fn all_cases() -> Vec<Case> {
    vec![
        Case {
            name: "veth",
            tunnel: Tunnel::None,
            mtu: 1500,
            default: true,
            note: "plain veth, MTU 1500, no tunnel: the ceiling",
        },
        Case {
            name: "wireguard-go",
            tunnel: Tunnel::WireguardGo,
            mtu: TUNNEL_MTU,
            default: true,
            note: "Debian's wireguard-go",
        },
        Case {
            name: "boringtun",
            tunnel: Tunnel::Boringtun { threads: 1 },
            mtu: TUNNEL_MTU,
            default: true,
            note: "boringtun-cli --threads 1 (its default of 4 halves throughput on 2 cores)",
        },
        Case {
            name: "boringtun-4t",
            tunnel: Tunnel::Boringtun { threads: 4 },
            mtu: TUNNEL_MTU,
            default: false,
            note: "boringtun-cli with its default --threads 4",
        },
        Case {
            name: "ringscale",
            tunnel: Tunnel::Ringscale {
                daemon_args: Vec::new(),
            },
            mtu: TUNNEL_MTU,
            default: true,
            note: "ringscale tailscaled --wg-config, default flags",
        },
    ]
}

/// One kind of iperf3 traffic.
#[derive(Clone, Debug)]
pub struct Test {
    pub name: &'static str,
    pub streams: u32,
    /// iperf3 -R: the server sends, the client receives.
    pub reverse: bool,
    /// UDP at this iperf3 `-b` rate instead of TCP.
    pub udp: bool,
    pub default: bool,
}

pub fn all_tests() -> Vec<Test> {
    let tcp = |name, streams, reverse| Test {
        name,
        streams,
        reverse,
        udp: false,
        default: true,
    };
    vec![
        tcp("tcp-1", 1, false),
        tcp("tcp-4", 4, false),
        tcp("tcp-1-rev", 1, true),
        Test {
            name: "udp",
            streams: 1,
            reverse: false,
            udp: true,
            default: false,
        },
    ]
}

/// The shape of the network a case runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Two namespaces joined by one veth pair (the underlay), a tunnel end in each,
    /// iperf3 client in one and server in the other.
    PointToPoint,
}

impl Topology {
    pub fn name(self) -> &'static str {
        match self {
            Topology::PointToPoint => "point-to-point",
        }
    }

    pub fn all() -> &'static [Topology] {
        &[Topology::PointToPoint]
    }
}
