//! Where peers were reached: the addresses we dialled them at and the listen addresses they
//! reported through Identify, so that a participant whose connection closed can be dialled
//! again (Kademlia forgets an address after a failed dial, e.g. while the peer restarts).
//! Bounded: [`MAX_ADDRESSES_PER_PEER`] per peer (newest kept) and [`MAX_PEERS`] peers (the one
//! heard of longest ago is forgotten first).

use std::collections::{BTreeMap, HashMap, VecDeque};

use libp2p::{Multiaddr, PeerId};

/// Addresses kept per peer.
pub const MAX_ADDRESSES_PER_PEER: usize = 8;
/// Peers kept.
pub const MAX_PEERS: usize = 4096;

/// Known addresses by peer.
#[derive(Debug, Default)]
pub struct AddressBook {
    peers: HashMap<PeerId, (u64, VecDeque<Multiaddr>)>,
    by_age: BTreeMap<u64, PeerId>,
    tick: u64,
}

impl AddressBook {
    /// Remember `addr` for `peer` (newest first).
    pub fn note(&mut self, peer: PeerId, addr: Multiaddr) {
        self.tick += 1;
        let tick = self.tick;
        if !self.peers.contains_key(&peer)
            && self.peers.len() >= MAX_PEERS
            && let Some((_, oldest)) = self.by_age.pop_first()
        {
            self.peers.remove(&oldest);
        }
        let (age, addrs) = self.peers.entry(peer).or_default();
        self.by_age.remove(age);
        *age = tick;
        self.by_age.insert(tick, peer);
        addrs.retain(|a| *a != addr);
        addrs.push_front(addr);
        addrs.truncate(MAX_ADDRESSES_PER_PEER);
    }

    /// The addresses known for `peer`, newest first.
    pub fn get(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.peers
            .get(peer)
            .map(|(_, a)| a.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Peers known.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is known.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_per_peer_and_in_total_newest_first() {
        let mut book = AddressBook::default();
        let first = PeerId::random();
        for port in 0..20u16 {
            book.note(
                first,
                format!("/ip4/127.0.0.1/tcp/{port}")
                    .parse()
                    .unwrap_or_else(|_| unreachable!()),
            );
        }
        let a = book.get(&first);
        assert_eq!(a.len(), MAX_ADDRESSES_PER_PEER);
        assert_eq!(a[0].to_string(), "/ip4/127.0.0.1/tcp/19");
        let addr: Multiaddr = "/ip4/10.0.0.1/tcp/1"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        let others: Vec<PeerId> = (0..MAX_PEERS).map(|_| PeerId::random()).collect();
        for p in &others {
            book.note(*p, addr.clone());
        }
        assert_eq!(book.len(), MAX_PEERS);
        assert!(
            book.get(&first).is_empty(),
            "the peer heard of longest ago goes first"
        );
        assert_eq!(book.get(&others[0]), vec![addr]);
    }
}
