//! The DHT node's pure core: everything a KRPC node decides, with no socket, thread or clock.
//! Datagrams, orders and the time come in ([`Node::on_datagram`], [`Node::search`],
//! [`Node::tick`]); what to send and what was found go out as [`Action`]s, which the `dht`
//! thread carries out. It owns one routing table per address family (BEP 32), the write tokens,
//! the peer store, the per-source rate limit, the queries in flight and the searches.
//!
//! Good citizenship lives here: queries beyond a source's budget are dropped unanswered, a reply
//! is never more than [`AMPLIFICATION`] times the query that asked for it, queries we cannot
//! read are answered with a KRPC error when they carry a transaction id (and ignored otherwise),
//! and every table is bounded.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, trace};

use crate::dht::krpc::{Body, ERROR_PROTOCOL, Id, KrpcError, Message, Query, Response, Want};
use crate::dht::lookup::Lookup;
use crate::dht::routing::{K, RoutingTable};
use crate::dht::store::{PeerStore, RateLimit};
use crate::dht::tokens::Tokens;
use crate::wire::compact::{Family, NodeInfo, canonical};

/// A query unanswered this long has failed.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(4);
/// Queries in flight at once, all searches together.
pub const MAX_PENDING: usize = 512;
/// A reply is at most this many times the size of the query it answers.
pub const AMPLIFICATION: usize = 8;
/// Peers in one `get_peers` reply at most (before the amplification bound trims them).
pub const MAX_VALUES: usize = 32;
/// While a table has fewer nodes than this, the bootstrap nodes are asked again.
const BOOTSTRAP_BELOW: usize = K;
const BOOTSTRAP_EVERY: Duration = Duration::from_secs(30);
/// A search started before the table had any node waits this long for one.
const STARVED_FOR: Duration = Duration::from_secs(60);
/// Stale nodes pinged per tick.
const PINGS_PER_TICK: usize = 8;

/// A search's number, for [`Action::Peers`] and [`Action::SearchDone`].
pub type SearchId = u64;

/// What the `dht` thread must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a datagram (on the socket of `to`'s family).
    Send { to: SocketAddr, bytes: Vec<u8> },
    /// Peers found for a search (each peer once per search).
    Peers {
        search: SearchId,
        peers: Vec<SocketAddr>,
    },
    /// A search ended (its announces, if any, are sent).
    SearchDone { search: SearchId },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Ping,
    Bootstrap,
    Lookup(SearchId),
    Announce,
}

#[derive(Debug)]
struct Pending {
    to: SocketAddr,
    id: Option<Id>,
    sent: Instant,
    purpose: Purpose,
}

#[derive(Debug)]
struct Search {
    target: Id,
    /// `get_peers` (and announce with this port, or the implied one) or `find_node`.
    get_peers: bool,
    announce: Option<u16>,
    lookups: Vec<(Family, Lookup)>,
    seen: HashSet<SocketAddr>,
    started: Instant,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Node {
    id: Id,
    tables: Vec<(Family, RoutingTable)>,
    tokens: Tokens,
    store: PeerStore,
    limit: RateLimit,
    pending: HashMap<[u8; 2], Pending>,
    next_transaction: u16,
    searches: HashMap<SearchId, Search>,
    next_search: SearchId,
    bootstrap: Vec<SocketAddr>,
    bootstrapped: Option<Instant>,
    /// The search that fills our own neighbourhood (`find_node` of our id), while it runs.
    self_search: Option<SearchId>,
    /// The families whose peers can reach our TCP port: announces go to their nodes only.
    reachable: Vec<Family>,
}

impl Node {
    /// A node with `id`, a routing table for each family in `families`, asking `bootstrap`
    /// while its tables are small. `secret` seeds the first token secret.
    pub fn new(
        id: Id,
        families: &[Family],
        bootstrap: Vec<SocketAddr>,
        secret: [u8; 16],
        now: Instant,
    ) -> Self {
        Self {
            id,
            tables: families
                .iter()
                .map(|f| (*f, RoutingTable::new(id)))
                .collect(),
            tokens: Tokens::new(secret, now),
            store: PeerStore::default(),
            limit: RateLimit::default(),
            pending: HashMap::new(),
            next_transaction: rand::random(),
            searches: HashMap::new(),
            next_search: 1,
            bootstrap,
            bootstrapped: None,
            self_search: None,
            reachable: families.to_vec(),
        }
    }

    /// Announces (`announce_peer`) go only to nodes of `families` (every family by default):
    /// a DHT that also looks up over IPv6 while our TCP port listens on IPv4 only must not
    /// tell IPv6 nodes a port nobody there can reach.
    pub fn announce_only_on(&mut self, families: &[Family]) {
        self.reachable = families.to_vec();
    }

    pub fn id(&self) -> &Id {
        &self.id
    }

    fn table(&self, f: Family) -> Option<&RoutingTable> {
        self.tables.iter().find(|t| t.0 == f).map(|t| &t.1)
    }

    fn table_mut(&mut self, f: Family) -> Option<&mut RoutingTable> {
        self.tables.iter_mut().find(|t| t.0 == f).map(|t| &mut t.1)
    }

    /// Nodes in the routing tables: IPv4, IPv6.
    pub fn node_counts(&self) -> (usize, usize) {
        let count = |f| self.table(f).map_or(0, RoutingTable::len);
        (count(Family::V4), count(Family::V6))
    }

    /// Good nodes of every table, for saving.
    pub fn good_nodes(&self, now: Instant) -> Vec<NodeInfo> {
        self.tables.iter().flat_map(|t| t.1.good(now)).collect()
    }

    /// Searches running.
    pub fn searches(&self) -> usize {
        self.searches.len()
    }

    /// Nodes saved by an earlier run, or a peer's `port` message: ping each.
    pub fn add_nodes(&mut self, addrs: &[SocketAddr], now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        for addr in addrs {
            let addr = canonical(*addr);
            if self.table(Family::of(&addr)).is_some() {
                self.query(
                    addr,
                    None,
                    Query::Ping { id: self.id },
                    Purpose::Ping,
                    now,
                    &mut out,
                );
            }
        }
        out
    }

    /// Starts a lookup of `target`: `get_peers` (announcing `announce` when given, 0 meaning
    /// the implied port) or `find_node`.
    pub fn search(
        &mut self,
        target: Id,
        get_peers: bool,
        announce: Option<u16>,
        now: Instant,
    ) -> (SearchId, Vec<Action>) {
        let id = self.next_search;
        self.next_search += 1;
        let lookups = self
            .tables
            .iter()
            .map(|(f, t)| (*f, Lookup::new(target, &t.closest(&target, K * 2))))
            .collect();
        self.searches.insert(
            id,
            Search {
                target,
                get_peers,
                announce,
                lookups,
                seen: HashSet::new(),
                started: now,
            },
        );
        let mut out = Vec::new();
        self.advance(id, now, &mut out);
        (id, out)
    }

    /// Forgets a search (its owner went away).
    pub fn cancel(&mut self, search: SearchId) {
        self.searches.remove(&search);
    }

    fn want(&self) -> Option<Want> {
        (self.tables.len() > 1).then_some(Want { v4: true, v6: true })
    }

    fn query(
        &mut self,
        to: SocketAddr,
        id: Option<Id>,
        query: Query,
        purpose: Purpose,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        if self.pending.len() >= MAX_PENDING {
            return false;
        }
        self.next_transaction = self.next_transaction.wrapping_add(1);
        let t = self.next_transaction.to_be_bytes();
        let bytes = Message {
            transaction: t.to_vec(),
            body: Body::Query(query),
        }
        .to_bytes();
        self.pending.insert(
            t,
            Pending {
                to,
                id,
                sent: now,
                purpose,
            },
        );
        out.push(Action::Send { to, bytes });
        true
    }

    /// Sends what the search's lookups want asked; ends the search when they are all done.
    fn advance(&mut self, sid: SearchId, now: Instant, out: &mut Vec<Action>) {
        let Some(search) = self.searches.get_mut(&sid) else {
            return;
        };
        let mut asks = Vec::new();
        for (family, lookup) in &mut search.lookups {
            if lookup.is_empty()
                && let Some(table) = self.tables.iter().find(|t| t.0 == *family)
            {
                lookup.add(&table.1.closest(&search.target, K * 2));
            }
            for node in lookup.next_queries() {
                asks.push(node);
            }
        }
        let starving = search.lookups.iter().all(|(_, l)| l.is_empty())
            && now.saturating_duration_since(search.started) < STARVED_FOR;
        let done = !starving && search.lookups.iter().all(|(_, l)| l.is_done());
        let (target, get_peers) = (search.target, search.get_peers);
        let me = self.id;
        let want = self.want();
        for node in asks {
            let query = if get_peers {
                Query::GetPeers {
                    id: me,
                    info_hash: target,
                    want,
                }
            } else {
                Query::FindNode {
                    id: me,
                    target,
                    want,
                }
            };
            if !self.query(
                node.addr,
                Some(node.id),
                query,
                Purpose::Lookup(sid),
                now,
                out,
            ) {
                // No room for more queries: count it failed so the lookup moves on.
                if let Some(s) = self.searches.get_mut(&sid) {
                    for (f, l) in &mut s.lookups {
                        if *f == Family::of(&node.addr) {
                            l.on_failure(&node);
                        }
                    }
                }
            }
        }
        if done && let Some(search) = self.searches.remove(&sid) {
            if let Some(port) = search.announce {
                for (family, lookup) in &search.lookups {
                    if !self.reachable.contains(family) {
                        continue;
                    }
                    for (node, token) in lookup.announce_targets() {
                        let query = Query::AnnouncePeer {
                            id: me,
                            info_hash: search.target,
                            port: if port == 0 { 1 } else { port },
                            token,
                            implied_port: port == 0,
                        };
                        self.query(node.addr, Some(node.id), query, Purpose::Announce, now, out);
                    }
                }
            }
            if self.self_search == Some(sid) {
                self.self_search = None;
            }
            out.push(Action::SearchDone { search: sid });
        }
    }

    /// One datagram from `from`.
    pub fn on_datagram(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) -> Vec<Action> {
        let from = canonical(from);
        let mut out = Vec::new();
        if self.table(Family::of(&from)).is_none() || from.port() == 0 {
            return out;
        }
        match Message::decode(bytes) {
            Ok(Message {
                transaction,
                body: Body::Query(query),
            }) => {
                if self.limit.allow(from.ip(), now) {
                    self.on_query(from, &transaction, query, bytes.len(), now, &mut out);
                } else {
                    trace!("dht: {from}: over its query budget; dropped");
                }
            }
            Ok(Message {
                transaction,
                body: Body::Response(response),
            }) => self.on_response(from, &transaction, response, now, &mut out),
            Ok(Message {
                transaction,
                body: Body::Error { code, message },
            }) => {
                debug!("dht: {from}: error {code} {message}");
                self.on_failed(from, &transaction, now, &mut out);
            }
            Err(KrpcError::BadQuery {
                transaction,
                code,
                reason,
            }) => {
                if self.limit.allow(from.ip(), now) {
                    debug!("dht: {from}: {reason}; answered with error {code}");
                    let bytes = Message {
                        transaction,
                        body: Body::Error {
                            code,
                            message: reason.to_string(),
                        },
                    }
                    .to_bytes();
                    out.push(Action::Send { to: from, bytes });
                }
            }
            Err(e) => trace!("dht: {from}: {e}; ignored"),
        }
        out
    }

    fn on_query(
        &mut self,
        from: SocketAddr,
        transaction: &[u8],
        query: Query,
        query_len: usize,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let family = Family::of(&from);
        if *query.id() != self.id {
            let info = NodeInfo {
                id: *query.id(),
                addr: from,
            };
            if let Some(stale) = self.table_mut(family).and_then(|t| t.on_queried(info, now)) {
                self.query(
                    stale.addr,
                    Some(stale.id),
                    Query::Ping { id: self.id },
                    Purpose::Ping,
                    now,
                    out,
                );
            }
        }
        let mut response = Response {
            id: self.id,
            ..Response::default()
        };
        let nodes_for = |node: &Node, target: &Id, want: Option<Want>, r: &mut Response| {
            let want = want.unwrap_or(Want {
                v4: family == Family::V4,
                v6: family == Family::V6,
            });
            if want.v4
                && let Some(t) = node.table(Family::V4)
            {
                r.nodes = t.closest(target, K);
            }
            if want.v6
                && let Some(t) = node.table(Family::V6)
            {
                r.nodes6 = t.closest(target, K);
            }
        };
        match query {
            Query::Ping { .. } => {}
            Query::FindNode { target, want, .. } => nodes_for(self, &target, want, &mut response),
            Query::GetPeers {
                info_hash, want, ..
            } => {
                nodes_for(self, &info_hash, want, &mut response);
                response.token = Some(self.tokens.issue(from.ip()));
                response.values = self.store.peers(&info_hash, family, MAX_VALUES, now);
            }
            Query::AnnouncePeer {
                info_hash,
                port,
                token,
                implied_port,
                ..
            } => {
                if !self.tokens.is_valid(from.ip(), &token) {
                    let bytes = Message {
                        transaction: transaction.to_vec(),
                        body: Body::Error {
                            code: ERROR_PROTOCOL,
                            message: "bad token".into(),
                        },
                    }
                    .to_bytes();
                    out.push(Action::Send { to: from, bytes });
                    return;
                }
                let port = if implied_port { from.port() } else { port };
                self.store
                    .announce(info_hash, SocketAddr::new(from.ip(), port), now);
            }
        }
        let bytes = bounded_reply(transaction, response, query_len * AMPLIFICATION);
        out.push(Action::Send { to: from, bytes });
    }

    fn on_response(
        &mut self,
        from: SocketAddr,
        transaction: &[u8],
        r: Response,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(key) = <[u8; 2]>::try_from(transaction).ok() else {
            return;
        };
        match self.pending.get(&key) {
            Some(p) if p.to == from => {}
            _ => return, // not ours, or from someone else: ignored
        }
        let Some(pending) = self.pending.remove(&key) else {
            return;
        };
        if r.id == self.id {
            // Ourselves, listed by someone under another address: no answer for the lookup.
            self.fail(pending, now, out);
            return;
        }
        let mut r = r;
        let me = self.id;
        r.nodes.retain(|n| n.id != me);
        r.nodes6.retain(|n| n.id != me);
        if let Some(expected) = pending.id
            && expected != r.id
        {
            // It answers under another id than it was listed with: the old entry is stale.
            if let Some(t) = self.table_mut(Family::of(&from)) {
                t.remove(&expected);
            }
        }
        let info = NodeInfo {
            id: r.id,
            addr: from,
        };
        if let Some(stale) = self
            .table_mut(Family::of(&from))
            .and_then(|t| t.on_answered(info, now))
        {
            self.query(
                stale.addr,
                Some(stale.id),
                Query::Ping { id: self.id },
                Purpose::Ping,
                now,
                out,
            );
        }
        match pending.purpose {
            Purpose::Ping | Purpose::Announce => {}
            Purpose::Bootstrap => {
                let mut nodes = r.nodes;
                nodes.extend(r.nodes6);
                nodes.push(info);
                self.grow(&nodes, now, out);
            }
            Purpose::Lookup(sid) => {
                let Some(search) = self.searches.get_mut(&sid) else {
                    return;
                };
                let queried = NodeInfo {
                    id: pending.id.unwrap_or(r.id),
                    addr: from,
                };
                for (family, lookup) in &mut search.lookups {
                    let (nodes, answered) = match family {
                        Family::V4 => (&r.nodes, Family::of(&from) == Family::V4),
                        Family::V6 => (&r.nodes6, Family::of(&from) == Family::V6),
                    };
                    if answered {
                        lookup.on_answer(&queried, nodes, r.token.clone());
                    } else {
                        lookup.add(nodes);
                    }
                }
                let fresh: Vec<SocketAddr> = r
                    .values
                    .iter()
                    .map(|v| canonical(*v))
                    .filter(|v| v.port() != 0 && search.seen.insert(*v))
                    .collect();
                if !fresh.is_empty() {
                    out.push(Action::Peers {
                        search: sid,
                        peers: fresh,
                    });
                }
                self.advance(sid, now, out);
            }
        }
    }

    /// Nodes from a bootstrap answer seed the search for our own neighbourhood.
    fn grow(&mut self, nodes: &[NodeInfo], now: Instant, out: &mut Vec<Action>) {
        let sid = match self.self_search {
            Some(sid) if self.searches.contains_key(&sid) => sid,
            _ => {
                let (sid, actions) = self.search(self.id, false, None, now);
                out.extend(actions);
                self.self_search = Some(sid);
                sid
            }
        };
        if let Some(search) = self.searches.get_mut(&sid) {
            for (family, lookup) in &mut search.lookups {
                let of: Vec<NodeInfo> = nodes
                    .iter()
                    .filter(|n| Family::of(&n.addr) == *family)
                    .copied()
                    .collect();
                lookup.add(&of);
            }
        }
        self.advance(sid, now, out);
    }

    fn on_failed(
        &mut self,
        from: SocketAddr,
        transaction: &[u8],
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(key) = <[u8; 2]>::try_from(transaction).ok() else {
            return;
        };
        if self.pending.get(&key).is_some_and(|p| p.to == from)
            && let Some(p) = self.pending.remove(&key)
        {
            self.fail(p, now, out);
        }
    }

    fn fail(&mut self, p: Pending, now: Instant, out: &mut Vec<Action>) {
        if let Some(id) = p.id
            && let Some(t) = self.table_mut(Family::of(&p.to))
        {
            t.on_timeout(&id, p.to);
        }
        if let Purpose::Lookup(sid) = p.purpose {
            if let Some(search) = self.searches.get_mut(&sid) {
                let node = NodeInfo {
                    id: p.id.unwrap_or([0; 20]),
                    addr: p.to,
                };
                for (family, lookup) in &mut search.lookups {
                    if *family == Family::of(&p.to) {
                        lookup.on_failure(&node);
                    }
                }
            }
            self.advance(sid, now, out);
        }
    }

    /// Timers: queries that timed out, searches to move on, token rotation, the peer store's
    /// expiry, bucket refreshes, pings of stale nodes and, while a table is small, bootstrap.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let expired: Vec<[u8; 2]> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.sent) >= QUERY_TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            if let Some(p) = self.pending.remove(&key) {
                self.fail(p, now, &mut out);
            }
        }
        let sids: Vec<SearchId> = self.searches.keys().copied().collect();
        for sid in sids {
            self.advance(sid, now, &mut out);
        }
        self.tokens.rotate_if_due(now, rand::random);
        self.store.expire(now);
        let small = self.tables.iter().any(|t| t.1.len() < BOOTSTRAP_BELOW);
        let due = self
            .bootstrapped
            .is_none_or(|t| now.saturating_duration_since(t) >= BOOTSTRAP_EVERY);
        if small && due {
            self.bootstrapped = Some(now);
            let me = self.id;
            let want = self.want();
            for addr in self.bootstrap.clone() {
                if self.table(Family::of(&addr)).is_some() {
                    let q = Query::FindNode {
                        id: me,
                        target: me,
                        want,
                    };
                    self.query(addr, None, q, Purpose::Bootstrap, now, &mut out);
                }
            }
            if self.self_search.is_none() && !self.tables.iter().all(|t| t.1.is_empty()) {
                self.grow(&[], now, &mut out);
            }
        }
        let mut refresh = Vec::new();
        let mut pings = Vec::new();
        for (_, table) in &mut self.tables {
            refresh.extend(table.refresh_targets(now, rand::random));
            pings.extend(table.to_ping(now, PINGS_PER_TICK));
        }
        for target in refresh {
            let (_, actions) = self.search(target, false, None, now);
            out.extend(actions);
        }
        for node in pings {
            let pending_already = self.pending.values().any(|p| p.to == node.addr);
            if !pending_already {
                self.query(
                    node.addr,
                    Some(node.id),
                    Query::Ping { id: self.id },
                    Purpose::Ping,
                    now,
                    &mut out,
                );
            }
        }
        out
    }
}

/// The response bytes, trimmed to at most `limit` bytes: peers first (half at a time), then
/// `nodes6`, then `nodes`.
fn bounded_reply(transaction: &[u8], mut r: Response, limit: usize) -> Vec<u8> {
    loop {
        let bytes = Message {
            transaction: transaction.to_vec(),
            body: Body::Response(r.clone()),
        }
        .to_bytes();
        if bytes.len() <= limit {
            return bytes;
        }
        if !r.values.is_empty() {
            let keep = r.values.len() / 2;
            r.values.truncate(keep);
        } else if !r.nodes6.is_empty() {
            r.nodes6.clear();
        } else if !r.nodes.is_empty() {
            let keep = r.nodes.len() / 2;
            r.nodes.truncate(keep);
        } else {
            return bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn sends(actions: &[Action]) -> Vec<(SocketAddr, Message)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { to, bytes } => Some((*to, Message::decode(bytes).unwrap())),
                _ => None,
            })
            .collect()
    }

    fn reply(to: &Message, id: Id, r: Response) -> Vec<u8> {
        Message {
            transaction: to.transaction.clone(),
            body: Body::Response(Response { id, ..r }),
        }
        .to_bytes()
    }

    fn query(t: &[u8], q: Query) -> Vec<u8> {
        Message {
            transaction: t.to_vec(),
            body: Body::Query(q),
        }
        .to_bytes()
    }

    fn v4_node(now: Instant) -> Node {
        Node::new(
            [0; 20],
            &[Family::V4],
            vec![addr("127.0.0.9:6881")],
            [1; 16],
            now,
        )
    }

    #[test]
    fn bootstraps_then_finds_peers_and_announces_with_the_token() {
        let now = Instant::now();
        let mut node = v4_node(now);
        // The first tick asks the bootstrap node for our own id.
        let out = sends(&node.tick(now));
        assert_eq!(out.len(), 1);
        let (to, boot_q) = &out[0];
        assert_eq!(*to, addr("127.0.0.9:6881"));
        assert!(
            matches!(boot_q.body, Body::Query(Query::FindNode { target, .. }) if target == [0; 20])
        );
        // It answers with one more node; both get asked in the self lookup.
        let other = NodeInfo {
            id: [0x40; 20],
            addr: addr("127.0.0.10:7000"),
        };
        let r = reply(
            boot_q,
            [0x80; 20],
            Response {
                nodes: vec![other],
                ..Response::default()
            },
        );
        let out = sends(&node.on_datagram(addr("127.0.0.9:6881"), &r, now));
        assert!(out.iter().any(|(to, _)| *to == other.addr));
        assert_eq!(node.node_counts(), (1, 0));
        // A get_peers search with an announce on port 5000.
        let hash = [0x41; 20];
        let (sid, actions) = node.search(hash, true, Some(5000), now);
        let out = sends(&actions);
        let mut peers = Vec::new();
        for (to, q) in &out {
            assert!(
                matches!(q.body, Body::Query(Query::GetPeers { info_hash, .. }) if info_hash == hash)
            );
            let id = if *to == other.addr {
                other.id
            } else {
                [0x80; 20]
            };
            let r = reply(
                q,
                id,
                Response {
                    token: Some(b"tok".to_vec()),
                    values: vec![addr("10.1.1.1:51413")],
                    ..Response::default()
                },
            );
            peers.extend(node.on_datagram(*to, &r, now));
        }
        let found: Vec<_> = peers
            .iter()
            .filter_map(|a| match a {
                Action::Peers { search, peers } if *search == sid => Some(peers.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(found, vec![vec![addr("10.1.1.1:51413")]], "each peer once");
        assert!(peers.contains(&Action::SearchDone { search: sid }));
        let announces: Vec<_> = sends(&peers)
            .into_iter()
            .filter_map(|(to, m)| match m.body {
                Body::Query(Query::AnnouncePeer {
                    port,
                    token,
                    implied_port,
                    ..
                }) => Some((to, port, token, implied_port)),
                _ => None,
            })
            .collect();
        assert_eq!(announces.len(), out.len());
        assert!(
            announces
                .iter()
                .all(|a| a.1 == 5000 && a.2 == b"tok" && !a.3)
        );
    }

    /// A family our TCP port does not listen on gets lookups but no announce.
    #[test]
    fn announces_go_only_to_the_families_our_port_is_reachable_on() {
        let now = Instant::now();
        let mut node = v4_node(now);
        node.announce_only_on(&[Family::V6]);
        let out = sends(&node.tick(now));
        let (to, boot_q) = &out[0];
        let r = reply(boot_q, [0x80; 20], Response::default());
        let _ = node.on_datagram(*to, &r, now);
        let hash = [0x41; 20];
        let (sid, actions) = node.search(hash, true, Some(5000), now);
        let mut after = Vec::new();
        for (to, q) in &sends(&actions) {
            let r = reply(
                q,
                [0x80; 20],
                Response {
                    token: Some(b"tok".to_vec()),
                    ..Response::default()
                },
            );
            after.extend(node.on_datagram(*to, &r, now));
        }
        assert!(
            after.contains(&Action::SearchDone { search: sid }),
            "{after:?}"
        );
        let announces = sends(&after)
            .into_iter()
            .filter(|(_, m)| matches!(m.body, Body::Query(Query::AnnouncePeer { .. })))
            .count();
        assert_eq!(announces, 0, "announced over IPv4: {after:?}");
    }

    #[test]
    fn answers_get_peers_with_a_token_and_stores_announces_both_port_ways() {
        let now = Instant::now();
        let mut node = v4_node(now);
        let from = addr("10.0.0.5:6000");
        let out = sends(&node.on_datagram(
            from,
            &query(
                b"a",
                Query::GetPeers {
                    id: [9; 20],
                    info_hash: [7; 20],
                    want: None,
                },
            ),
            now,
        ));
        let Body::Response(r) = &out[0].1.body else {
            panic!()
        };
        let token = r.token.clone().unwrap();
        assert!(r.values.is_empty());
        for (port, implied) in [(7000, false), (1, true)] {
            let out = sends(&node.on_datagram(
                from,
                &query(
                    b"b",
                    Query::AnnouncePeer {
                        id: [9; 20],
                        info_hash: [7; 20],
                        port,
                        token: token.clone(),
                        implied_port: implied,
                    },
                ),
                now,
            ));
            assert!(matches!(out[0].1.body, Body::Response(_)));
        }
        let out = sends(&node.on_datagram(
            addr("10.0.0.6:1"),
            &query(
                b"c",
                Query::GetPeers {
                    id: [8; 20],
                    info_hash: [7; 20],
                    want: None,
                },
            ),
            now,
        ));
        let Body::Response(r) = &out[0].1.body else {
            panic!()
        };
        let mut values = r.values.clone();
        values.sort();
        assert_eq!(values, vec![addr("10.0.0.5:6000"), addr("10.0.0.5:7000")]);
        // A token given to someone else is refused with an error, and nothing is stored.
        let out = sends(&node.on_datagram(
            addr("10.0.0.7:1"),
            &query(
                b"d",
                Query::AnnouncePeer {
                    id: [6; 20],
                    info_hash: [5; 20],
                    port: 1,
                    token,
                    implied_port: false,
                },
            ),
            now,
        ));
        assert!(matches!(
            out[0].1.body,
            Body::Error {
                code: ERROR_PROTOCOL,
                ..
            }
        ));
    }

    #[test]
    fn malformed_queries_get_an_error_and_garbage_gets_nothing() {
        let now = Instant::now();
        let mut node = v4_node(now);
        let from = addr("10.0.0.5:6000");
        let out = sends(&node.on_datagram(from, b"d1:ad2:id3:abce1:q4:ping1:t2:xy1:y1:qe", now));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.transaction, b"xy");
        assert!(matches!(out[0].1.body, Body::Error { code: 203, .. }));
        assert!(node.on_datagram(from, b"\xff\x00garbage", now).is_empty());
        // An answer nobody asked for is ignored.
        let stray = reply(
            &Message {
                transaction: b"zz".to_vec(),
                body: Body::Error {
                    code: 0,
                    message: String::new(),
                },
            },
            [3; 20],
            Response::default(),
        );
        assert!(node.on_datagram(from, &stray, now).is_empty());
        assert_eq!(node.node_counts(), (0, 0), "nobody was added");
    }

    #[test]
    fn a_flooding_source_is_dropped_after_its_burst() {
        let now = Instant::now();
        let mut node = v4_node(now);
        let from = addr("10.0.0.5:6000");
        let ping = query(b"p", Query::Ping { id: [9; 20] });
        let answered = (0..200)
            .filter(|_| !node.on_datagram(from, &ping, now).is_empty())
            .count();
        assert_eq!(answered, 20, "the burst, SOURCE_BURST");
    }

    #[test]
    fn replies_stay_within_the_amplification_bound() {
        let now = Instant::now();
        let mut node = Node::new([0; 20], &[Family::V4, Family::V6], vec![], [1; 16], now);
        for n in 0..200u8 {
            let mut id = [n; 20];
            id[0] = n;
            node.on_datagram(
                SocketAddr::from(([10, 0, 1, n], 1000)),
                &query(b"p", Query::Ping { id }),
                now,
            );
            id[1] = 0xEE;
            node.on_datagram(
                SocketAddr::new(
                    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, u16::from(n)).into(),
                    1000,
                ),
                &query(b"p", Query::Ping { id }),
                now,
            );
            for p in 0..4u8 {
                node.store
                    .announce([7; 20], SocketAddr::from(([10, 2, n, p], 1)), now);
            }
        }
        let q = query(
            b"a",
            Query::GetPeers {
                id: [9; 20],
                info_hash: [7; 20],
                want: Some(Want { v4: true, v6: true }),
            },
        );
        let out = node.on_datagram(addr("10.9.9.9:1"), &q, now);
        let Action::Send { bytes, .. } = &out[0] else {
            panic!()
        };
        assert!(
            bytes.len() <= q.len() * AMPLIFICATION,
            "{} > {}",
            bytes.len(),
            q.len() * AMPLIFICATION
        );
        let Body::Response(r) = Message::decode(bytes).unwrap().body else {
            panic!()
        };
        assert_eq!(r.nodes.len(), K);
        assert!(!r.values.is_empty());
    }

    #[test]
    fn unanswered_queries_time_out_and_the_search_ends() {
        let now = Instant::now();
        let mut node = v4_node(now);
        node.on_datagram(
            addr("10.0.0.5:6000"),
            &query(b"p", Query::Ping { id: [0x80; 20] }),
            now,
        );
        let (sid, out) = node.search([0x81; 20], true, None, now);
        assert_eq!(sends(&out).len(), 1);
        let later = now + QUERY_TIMEOUT;
        let out = node.tick(later);
        assert!(out.contains(&Action::SearchDone { search: sid }));
        assert!(!node.searches.contains_key(&sid));
    }

    #[test]
    fn a_search_waits_for_the_table_to_fill() {
        let now = Instant::now();
        let mut node = v4_node(now);
        let (sid, out) = node.search([0x81; 20], true, None, now);
        assert!(out.is_empty());
        assert_eq!(node.searches(), 1);
        node.on_datagram(
            addr("10.0.0.5:6000"),
            &query(b"p", Query::Ping { id: [0x80; 20] }),
            now,
        );
        let out = sends(&node.tick(now + Duration::from_secs(1)));
        assert!(out.iter().any(|(to, m)| *to == addr("10.0.0.5:6000")
            && matches!(m.body, Body::Query(Query::GetPeers { .. }))));
        let out = node.tick(now + STARVED_FOR + QUERY_TIMEOUT);
        assert!(out.contains(&Action::SearchDone { search: sid }));
    }
}
