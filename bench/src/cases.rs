//! What the benchmark measures, as data: the tunnel implementations (cases), the traffic
//! (tests), the shapes of the network (topologies) and the default plan (which cases
//! run which tests in which topology). A new mode is a new entry here, not a new code
//! path: e.g. a ringscale variant with other daemon flags is one more `Case` with
//! `Tunnel::Ringscale { daemon_args }`.

/// A tunnel implementation run in the namespaces that carry the tunnel.
#[derive(Clone, Debug, PartialEq)]
pub enum Tunnel {
    /// No tunnel: iperf3 straight over the underlay (the ceiling).
    None,
    /// Debian's wireguard-go, configured with `wg`.
    WireguardGo,
    /// boringtun-cli from crates.io, configured with `wg`.
    Boringtun { threads: u32 },
    /// Our daemon with a static WireGuard config: `ringscale tailscaled --wg-config FILE
    /// --tun NAME` plus extra flags and environment variables.
    Ringscale {
        daemon_args: Vec<String>,
        daemon_env: Vec<(String, String)>,
    },
    /// Our daemon as it is really used: `ringscale tailscaled --config FILE`, joined to
    /// the tailnet through the test control server, plus extra flags.
    RingscaleTailnet {
        daemon_args: Vec<String>,
        path: TailnetPath,
        /// Nodes registered with the control server besides the two measured ones,
        /// before those join, so their first netmap is already full (see
        /// `hub::Hub::add_synthetic_peers`): real keys and addresses, no process behind.
        synthetic_peers: u32,
    },
}

/// How two tailnet nodes reach each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailnetPath {
    /// Direct UDP, found by disco.
    Direct,
    /// Direct UDP between the nodes blocked with nftables: relayed by the test DERP server.
    Derp,
}

impl Tunnel {
    pub fn daemon_args(&self) -> &[String] {
        match self {
            Tunnel::Ringscale { daemon_args, .. }
            | Tunnel::RingscaleTailnet { daemon_args, .. } => daemon_args,
            _ => &[],
        }
    }

    pub fn is_ringscale(&self) -> bool {
        matches!(
            self,
            Tunnel::Ringscale { .. } | Tunnel::RingscaleTailnet { .. }
        )
    }
}

#[derive(Clone, Debug)]
pub struct Case {
    /// The name used on the command line, in the tables and in the JSON.
    pub name: &'static str,
    pub tunnel: Tunnel,
    /// MTU of the tunnel interface; for `Tunnel::None` the MTU of the underlay links.
    pub mtu: u32,
    /// The topologies the case can run in.
    pub topologies: &'static [Topology],
    /// One line for the legend.
    pub note: &'static str,
}

/// The tunnel MTU all tunnels use (Tailscale's default).
pub const TUNNEL_MTU: u32 = 1280;

/// Peers in each measured node's netmap in `ringscale-100peers` (issue 9: "a netmap of
/// 100 peers"): the other measured node and `NETMAP_PEERS - 1` synthetic ones.
pub const NETMAP_PEERS: u32 = 100;

const ALL: &[Topology] = &[
    Topology::PointToPoint,
    Topology::Tailnet,
    Topology::ExitNode,
];
const HUB: &[Topology] = &[Topology::Tailnet, Topology::ExitNode];

fn ringscale(name: &'static str, args: &[&str], note: &'static str) -> Case {
    ringscale_env(name, args, &[], note)
}

fn ringscale_env(
    name: &'static str,
    args: &[&str],
    env: &[(&str, &str)],
    note: &'static str,
) -> Case {
    Case {
        name,
        tunnel: Tunnel::Ringscale {
            daemon_args: args.iter().map(|s| s.to_string()).collect(),
            daemon_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        },
        mtu: TUNNEL_MTU,
        topologies: ALL,
        note,
    }
}

pub fn all_cases() -> Vec<Case> {
    vec![
        Case {
            name: "veth",
            tunnel: Tunnel::None,
            mtu: 1500,
            topologies: &[Topology::PointToPoint, Topology::Tailnet],
            note: "no tunnel, MTU 1500: the ceiling (in tailnet: across the LAN bridge)",
        },
        Case {
            name: "direct",
            tunnel: Tunnel::None,
            mtu: 1500,
            topologies: &[Topology::ExitNode],
            note: "no tunnel, MTU 1500: the exit namespace routes and masquerades (the ceiling)",
        },
        Case {
            name: "wireguard-go",
            tunnel: Tunnel::WireguardGo,
            mtu: TUNNEL_MTU,
            topologies: ALL,
            note: "Debian's wireguard-go, static config",
        },
        Case {
            name: "boringtun",
            tunnel: Tunnel::Boringtun { threads: 1 },
            mtu: TUNNEL_MTU,
            topologies: ALL,
            note: "boringtun-cli --threads 1 (its default of 4 halves throughput on 2 cores)",
        },
        Case {
            name: "boringtun-4t",
            tunnel: Tunnel::Boringtun { threads: 4 },
            mtu: TUNNEL_MTU,
            topologies: ALL,
            note: "boringtun-cli with its default --threads 4",
        },
        ringscale(
            "ringscale",
            &[],
            "ringscale tailscaled --wg-config (static), default flags",
        ),
        ringscale(
            "ringscale-uring",
            &["--io=io_uring"],
            "static, --io=io_uring forced (fails instead of falling back)",
        ),
        ringscale("ringscale-epoll", &["--io=epoll"], "static, --io=epoll"),
        ringscale(
            "ringscale-no-offload",
            &["--offload=false"],
            "static, --offload=false (no TUN TSO/GRO, no UDP GSO/GRO)",
        ),
        ringscale(
            "ringscale-epoll-no-offload",
            &["--io=epoll", "--offload=false"],
            "static, --io=epoll --offload=false (neither lever)",
        ),
        ringscale_env(
            "ringscale-ring-aead",
            &[],
            &[("RINGSCALE_AEAD", "ring")],
            "static, RINGSCALE_AEAD=ring (ring's AVX2 ChaCha20-Poly1305 instead of ours)",
        ),
        ringscale(
            "ringscale-1w",
            &["--workers=1"],
            "static, --workers=1 (one packet worker instead of one per core)",
        ),
        Case {
            name: "ringscale-tailnet",
            tunnel: Tunnel::RingscaleTailnet {
                daemon_args: Vec::new(),
                path: TailnetPath::Direct,
                synthetic_peers: 0,
            },
            mtu: TUNNEL_MTU,
            topologies: HUB,
            note: "ringscale tailscaled --config: joined through the test control server, \
                   direct path (in exit-node: the real exit node, AdvertiseRoutes + exitNode)",
        },
        Case {
            name: "ringscale-derp",
            tunnel: Tunnel::RingscaleTailnet {
                daemon_args: Vec::new(),
                path: TailnetPath::Derp,
                synthetic_peers: 0,
            },
            mtu: TUNNEL_MTU,
            topologies: &[Topology::Tailnet],
            note: "as ringscale-tailnet, direct UDP between the nodes dropped by nftables: \
                   relayed by the test DERP server (one thread, plain HTTP)",
        },
        Case {
            name: "ringscale-100peers",
            tunnel: Tunnel::RingscaleTailnet {
                daemon_args: Vec::new(),
                path: TailnetPath::Direct,
                synthetic_peers: NETMAP_PEERS - 1,
            },
            mtu: TUNNEL_MTU,
            topologies: &[Topology::Tailnet],
            note: "as ringscale-tailnet with 100 peers in each node's netmap: the other \
                   node and 99 synthetic ones (registered with real keys, addresses, \
                   endpoints and a DERP home, online, no process behind them); for memory",
        },
    ]
}

/// What kind of traffic a test sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    Tcp,
    /// UDP at the `--udp-rate` iperf3 `-b` rate.
    Udp,
    /// UDP at rising rates (see `KNEE_*`): the highest received rate with < 1 % loss.
    UdpKnee,
}

/// One kind of iperf3 traffic.
#[derive(Clone, Debug)]
pub struct Test {
    pub name: &'static str,
    pub streams: u32,
    /// iperf3 -R: the server sends, the client receives.
    pub reverse: bool,
    pub traffic: Traffic,
}

impl Test {
    pub fn udp(&self) -> bool {
        self.traffic != Traffic::Tcp
    }
}

pub fn all_tests() -> Vec<Test> {
    let tcp = |name, streams, reverse| Test {
        name,
        streams,
        reverse,
        traffic: Traffic::Tcp,
    };
    vec![
        tcp("tcp-1", 1, false),
        tcp("tcp-4", 4, false),
        tcp("tcp-1-rev", 1, true),
        Test {
            name: "udp",
            streams: 1,
            reverse: false,
            traffic: Traffic::Udp,
        },
        Test {
            name: "udp-knee",
            streams: 1,
            reverse: false,
            traffic: Traffic::UdpKnee,
        },
    ]
}

/// The UDP knee search: offered rates double from the first until loss reaches the
/// limit (or the last rate), then `KNEE_REFINE_STEPS` steps between the last good and
/// the first bad rate refine the answer (to within ~10 %). At most `KNEE_MAX_STEPS`
/// iperf3 runs.
pub const KNEE_START_MBIT: u64 = 250;
pub const KNEE_LAST_MBIT: u64 = 8000;
pub const KNEE_LOSS_LIMIT_PERCENT: f64 = 1.0;
pub const KNEE_MAX_STEPS: usize = 8;
pub const KNEE_REFINE_STEPS: usize = 2;

/// The shape of the network a case runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Topology {
    /// The headline: client ── LAN bridge ── exit node ── veth ── "internet" host. The
    /// tunnel runs between client and exit node, which forwards to the internet host
    /// with masquerade; iperf3 runs between client and internet host. The LAN's hub runs
    /// the test control server for the tailnet cases.
    ExitNode,
    /// Two namespaces joined by one veth pair (the underlay), a tunnel end in each,
    /// iperf3 client in one and server in the other.
    PointToPoint,
    /// Two nodes on a bridged LAN whose hub runs the test control server and the test
    /// DERP server; tailnet cases join through it, static cases use the same LAN.
    Tailnet,
}

impl Topology {
    pub fn name(self) -> &'static str {
        match self {
            Topology::ExitNode => "exit-node",
            Topology::PointToPoint => "point-to-point",
            Topology::Tailnet => "tailnet",
        }
    }

    /// In the order they run and are reported: the headline first.
    pub fn all() -> &'static [Topology] {
        &[
            Topology::ExitNode,
            Topology::PointToPoint,
            Topology::Tailnet,
        ]
    }

    pub fn describe(self) -> &'static str {
        match self {
            Topology::ExitNode => {
                "client -- LAN bridge -- exit node -- veth -- internet host; tunnel client<->exit, \
                 iperf3 client<->internet host, masquerade on the exit node"
            }
            Topology::PointToPoint => {
                "two namespaces joined by one veth pair; a tunnel end and an iperf3 end in each"
            }
            Topology::Tailnet => {
                "two nodes on a LAN bridge; hub with the test control server and DERP server"
            }
        }
    }
}

/// The default plan of one topology: `(case, tests)` when neither `--cases` nor
/// `--tests` is given. Sized so the whole default run (3 runs x 10 s) stays near 15
/// minutes on the 2-core VM: the full matrix where the comparison is the point (the
/// exit node, the headline), the issue-3 targets and levers on point-to-point, single
/// tests for the paths. Everything else is one `--cases`/`--tests` away.
pub fn default_plan(t: Topology) -> &'static [(&'static str, &'static [&'static str])] {
    const FULL: &[&str] = &["tcp-1", "tcp-4", "tcp-1-rev"];
    const ONE: &[&str] = &["tcp-1"];
    match t {
        Topology::ExitNode => &[
            ("direct", FULL),
            ("wireguard-go", FULL),
            ("boringtun", ONE),
            ("ringscale-tailnet", FULL),
            ("ringscale", ONE),
        ],
        Topology::PointToPoint => &[
            ("veth", ONE),
            ("wireguard-go", &["tcp-1", "udp-knee"]),
            ("boringtun", ONE),
            ("ringscale", &["tcp-1", "tcp-4", "tcp-1-rev", "udp-knee"]),
            ("ringscale-epoll", ONE),
            ("ringscale-no-offload", ONE),
            ("ringscale-ring-aead", ONE),
        ],
        Topology::Tailnet => &[
            ("ringscale", ONE),
            ("ringscale-tailnet", ONE),
            ("ringscale-derp", ONE),
            ("ringscale-100peers", ONE),
        ],
    }
}

/// The tests a case runs when `--cases` names it but `--tests` is not given.
pub const DEFAULT_TESTS: &[&str] = &["tcp-1", "tcp-4", "tcp-1-rev"];
