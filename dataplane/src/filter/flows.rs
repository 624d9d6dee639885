//! The memory of UDP and SCTP flows this node opened, so that their replies get in
//! without a rule (Go keeps a 512-entry LRU behind a mutex for this). Here it is a
//! fixed table of atomic tags, shared by all workers without a lock and without
//! allocation on the packet path: a flow's reversed 5-tuple is hashed with a
//! per-process secret seed; the hash picks a set of four slots and the tag (the
//! hash itself) is stored in one of them. A lookup compares four words of one cache
//! line. Forgetting is by overwriting: a full set replaces a pseudo-random member,
//! which approximates LRU eviction; a forgotten flow is relearned with its next
//! outbound packet. A false hit would need a 64-bit tag collision under a seed the
//! peer cannot know.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

const WAYS: usize = 4;
/// 4096 sets of 4 = 16384 flows remembered, in 128 KiB.
const SETS: usize = 4096;

pub struct FlowTable {
    seed: [u64; 2],
    slots: Box<[AtomicU64]>,
}

impl Default for FlowTable {
    fn default() -> Self {
        FlowTable::new()
    }
}

/// One direction of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub proto: u8,
    pub src: u128,
    pub dst: u128,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Tuple {
    pub fn reversed(self) -> Tuple {
        Tuple {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

#[inline]
fn mix(a: u64, b: u64) -> u64 {
    let full = (a as u128).wrapping_mul(b as u128);
    (full as u64) ^ ((full >> 64) as u64)
}

impl FlowTable {
    pub fn new() -> FlowTable {
        // std's RandomState is seeded from the OS per process; borrowing two of its
        // outputs gives an unpredictable seed without another dependency.
        let rs = std::collections::hash_map::RandomState::new();
        FlowTable {
            seed: [rs.hash_one(1u8) | 1, rs.hash_one(2u8) | 1],
            slots: (0..SETS * WAYS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    #[inline]
    fn hash(&self, t: &Tuple) -> u64 {
        let [k0, k1] = self.seed;
        let ports = ((t.proto as u64) << 32) | ((t.src_port as u64) << 16) | t.dst_port as u64;
        let mut h = mix(ports ^ k0, k1);
        h = mix(h ^ (t.src as u64), k0 ^ (t.src >> 64) as u64);
        h = mix(h ^ (t.dst as u64), k1 ^ (t.dst >> 64) as u64);
        mix(h, k0) | 1 // never 0: 0 marks an empty slot
    }

    #[inline]
    fn set(&self, tag: u64) -> &[AtomicU64] {
        let i = (tag >> 40) as usize % SETS;
        &self.slots[i * WAYS..(i + 1) * WAYS]
    }

    /// Remembers that replies to `t` (an outbound packet's tuple) may come in.
    #[inline]
    pub fn note_outbound(&self, t: &Tuple) {
        let tag = self.hash(&t.reversed());
        let set = self.set(tag);
        // Most outbound packets belong to a known flow: read before writing, so the
        // cache line stays shared between cores.
        if set.iter().any(|s| s.load(Ordering::Relaxed) == tag) {
            return;
        }
        let victim = set
            .iter()
            .position(|s| s.load(Ordering::Relaxed) == 0)
            .unwrap_or((tag >> 20) as usize % WAYS);
        set[victim].store(tag, Ordering::Relaxed);
    }

    /// Whether an inbound packet with tuple `t` answers a flow we opened.
    #[inline]
    pub fn is_reply(&self, t: &Tuple) -> bool {
        let tag = self.hash(t);
        self.set(tag)
            .iter()
            .any(|s| s.load(Ordering::Relaxed) == tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(src: u128, sp: u16, dst: u128, dp: u16) -> Tuple {
        Tuple {
            proto: 17,
            src,
            dst,
            src_port: sp,
            dst_port: dp,
        }
    }

    #[test]
    fn replies_match_only_the_reversed_flow() {
        let f = FlowTable::new();
        let out = t(1, 5000, 2, 53);
        assert!(!f.is_reply(&out.reversed()));
        f.note_outbound(&out);
        assert!(f.is_reply(&out.reversed()));
        // Not the same direction, not another port, not another protocol.
        assert!(!f.is_reply(&out));
        assert!(!f.is_reply(&t(2, 53, 1, 5001)));
        let mut sctp = out.reversed();
        sctp.proto = 132;
        assert!(!f.is_reply(&sctp));
    }

    #[test]
    fn many_flows_are_remembered_and_old_ones_eventually_forgotten() {
        let f = FlowTable::new();
        let flows: Vec<Tuple> = (0..2000).map(|i| t(1, 10000 + i as u16, 2, 443)).collect();
        for fl in &flows {
            f.note_outbound(fl);
        }
        let kept = flows.iter().filter(|fl| f.is_reply(&fl.reversed())).count();
        // 2000 flows in 16384 slots: (nearly) all remembered.
        assert!(kept >= 1990, "kept {kept}");
        for i in 0..200_000u32 {
            f.note_outbound(&t(3, i as u16, 4 + (i >> 16) as u128, 443));
        }
        let kept = flows.iter().filter(|fl| f.is_reply(&fl.reversed())).count();
        assert!(kept < 200, "kept {kept} after 200000 newer flows");
    }
}
