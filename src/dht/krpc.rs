//! KRPC (BEP 5), the DHT's messages, as pure data: bytes in, [`Message`] out, and back. Queries
//! `ping`, `find_node`, `get_peers` and `announce_peer` (with `implied_port`), their responses
//! (`nodes`, and BEP 32's `nodes6` and `want`), and errors. Decoding goes through btd's bencode
//! decoder (nesting bounded, duplicates refused) and never panics; what it cannot use is a
//! [`KrpcError`], which says whether the sender can be told (it gave a transaction id).
//! Encoding writes dictionary keys in sorted order, as bencode requires.

use std::net::SocketAddr;

use crate::bencode::{self, Value};
use crate::wire::compact::{self, Family, NodeInfo};

/// A node id or an info hash: 160 bits.
pub type Id = [u8; 20];

/// Transaction ids longer than this are refused (ours are 2 bytes; clients use up to 4 or 8).
pub const MAX_TRANSACTION_LEN: usize = 16;
/// Tokens longer than this are refused (ours are 8 bytes; libtorrent's 4, transmission's 20ish).
pub const MAX_TOKEN_LEN: usize = 64;

/// KRPC error codes (BEP 5).
pub const ERROR_GENERIC: i64 = 201;
pub const ERROR_PROTOCOL: i64 = 203;
pub const ERROR_UNKNOWN_METHOD: i64 = 204;

/// One KRPC message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The transaction id, echoed by the response.
    pub transaction: Vec<u8>,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Query(Query),
    Response(Response),
    Error { code: i64, message: String },
}

/// Which families' nodes a querier wants (BEP 32 `want`); absent means the family it asked on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Want {
    pub v4: bool,
    pub v6: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    Ping {
        id: Id,
    },
    FindNode {
        id: Id,
        target: Id,
        want: Option<Want>,
    },
    GetPeers {
        id: Id,
        info_hash: Id,
        want: Option<Want>,
    },
    AnnouncePeer {
        id: Id,
        info_hash: Id,
        port: u16,
        token: Vec<u8>,
        /// Use the packet's source port instead of `port` (uTP/NAT users).
        implied_port: bool,
    },
}

impl Query {
    pub fn id(&self) -> &Id {
        match self {
            Query::Ping { id }
            | Query::FindNode { id, .. }
            | Query::GetPeers { id, .. }
            | Query::AnnouncePeer { id, .. } => id,
        }
    }

    fn method(&self) -> &'static str {
        match self {
            Query::Ping { .. } => "ping",
            Query::FindNode { .. } => "find_node",
            Query::GetPeers { .. } => "get_peers",
            Query::AnnouncePeer { .. } => "announce_peer",
        }
    }
}

/// A response: every field but `id` is optional on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub id: Id,
    pub nodes: Vec<NodeInfo>,
    pub nodes6: Vec<NodeInfo>,
    pub token: Option<Vec<u8>>,
    pub values: Vec<SocketAddr>,
}

/// Why a datagram is no usable KRPC message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KrpcError {
    /// Not a bencoded dictionary, or no usable `t`: nobody to answer.
    #[error("not a KRPC message: {0}")]
    Unanswerable(&'static str),
    /// A query we can answer with error 203 (or 204 for an unknown method).
    #[error("bad query ({code}): {reason}")]
    BadQuery {
        transaction: Vec<u8>,
        code: i64,
        reason: &'static str,
    },
    /// A response or error we cannot read; never answered.
    #[error("bad response: {0}")]
    BadResponse(&'static str),
}

fn id_of(v: Option<&Value<'_>>) -> Option<Id> {
    v?.as_bytes()?.try_into().ok()
}

fn want_of(args: &Value<'_>) -> Option<Want> {
    let list = args.get("want")?.as_list()?;
    let mut want = Want::default();
    for item in list {
        match item.as_bytes() {
            Some(b"n4") => want.v4 = true,
            Some(b"n6") => want.v6 = true,
            _ => {}
        }
    }
    Some(want)
}

impl Message {
    /// Decodes one datagram.
    ///
    /// # Errors
    /// See [`KrpcError`]: whether and how the sender can be told.
    pub fn decode(bytes: &[u8]) -> Result<Message, KrpcError> {
        let root = bencode::decode(bytes).map_err(|_| KrpcError::Unanswerable("bad bencode"))?;
        if !root.is_dict() {
            return Err(KrpcError::Unanswerable("not a dictionary"));
        }
        let transaction = root
            .get("t")
            .and_then(Value::as_bytes)
            .filter(|t| t.len() <= MAX_TRANSACTION_LEN)
            .ok_or(KrpcError::Unanswerable("no transaction id"))?
            .to_vec();
        let kind = root.get("y").and_then(Value::as_bytes);
        let body = match kind {
            Some(b"q") => Body::Query(decode_query(&root, &transaction)?),
            Some(b"r") => Body::Response(decode_response(&root)?),
            Some(b"e") => {
                let list = root
                    .get("e")
                    .and_then(Value::as_list)
                    .ok_or(KrpcError::BadResponse("error without a list"))?;
                let code = list.first().and_then(Value::as_int).unwrap_or(0);
                let message = list
                    .get(1)
                    .and_then(Value::as_bytes)
                    .map(|m| String::from_utf8_lossy(&m[..m.len().min(200)]).into_owned())
                    .unwrap_or_default();
                Body::Error { code, message }
            }
            _ => {
                return Err(KrpcError::BadQuery {
                    transaction,
                    code: ERROR_PROTOCOL,
                    reason: "y is not q, r or e",
                });
            }
        };
        Ok(Message { transaction, body })
    }

    /// Appends the bencoded message (keys sorted).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(b'd');
        match &self.body {
            Body::Query(q) => {
                key(out, "a");
                encode_args(q, out);
                key(out, "q");
                string(out, q.method().as_bytes());
            }
            Body::Response(r) => {
                key(out, "r");
                encode_response(r, out);
            }
            Body::Error { code, message } => {
                key(out, "e");
                out.push(b'l');
                int(out, *code);
                string(out, message.as_bytes());
                out.push(b'e');
            }
        }
        key(out, "t");
        string(out, &self.transaction);
        key(out, "v");
        string(out, b"BD01");
        key(out, "y");
        string(
            out,
            match self.body {
                Body::Query(_) => b"q",
                Body::Response(_) => b"r",
                Body::Error { .. } => b"e",
            },
        );
        out.push(b'e');
    }

    /// The bencoded message.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

fn bad_query(transaction: &[u8], reason: &'static str) -> KrpcError {
    KrpcError::BadQuery {
        transaction: transaction.to_vec(),
        code: ERROR_PROTOCOL,
        reason,
    }
}

fn decode_query(root: &Value<'_>, t: &[u8]) -> Result<Query, KrpcError> {
    let method = root
        .get("q")
        .and_then(Value::as_bytes)
        .ok_or_else(|| bad_query(t, "query without q"))?;
    let args = root
        .get("a")
        .filter(|a| a.is_dict())
        .ok_or_else(|| bad_query(t, "query without a dictionary a"))?;
    let id = id_of(args.get("id")).ok_or_else(|| bad_query(t, "id is not 20 bytes"))?;
    let hash = |name: &str, reason| id_of(args.get(name)).ok_or_else(|| bad_query(t, reason));
    Ok(match method {
        b"ping" => Query::Ping { id },
        b"find_node" => Query::FindNode {
            id,
            target: hash("target", "target is not 20 bytes")?,
            want: want_of(args),
        },
        b"get_peers" => Query::GetPeers {
            id,
            info_hash: hash("info_hash", "info_hash is not 20 bytes")?,
            want: want_of(args),
        },
        b"announce_peer" => {
            let implied_port = args.get("implied_port").and_then(Value::as_int) == Some(1);
            let port = args.get("port").and_then(Value::as_int);
            let port = match (implied_port, port.map(u16::try_from)) {
                (_, Some(Ok(p))) if p != 0 => p,
                (true, _) => 0,
                _ => return Err(bad_query(t, "announce_peer without a valid port")),
            };
            Query::AnnouncePeer {
                id,
                info_hash: hash("info_hash", "info_hash is not 20 bytes")?,
                port,
                token: args
                    .get("token")
                    .and_then(Value::as_bytes)
                    .filter(|tok| tok.len() <= MAX_TOKEN_LEN)
                    .ok_or_else(|| bad_query(t, "announce_peer without a token"))?
                    .to_vec(),
                implied_port,
            }
        }
        _ => {
            return Err(KrpcError::BadQuery {
                transaction: t.to_vec(),
                code: ERROR_UNKNOWN_METHOD,
                reason: "unknown method",
            });
        }
    })
}

fn decode_response(root: &Value<'_>) -> Result<Response, KrpcError> {
    let r = root
        .get("r")
        .filter(|r| r.is_dict())
        .ok_or(KrpcError::BadResponse("response without a dictionary r"))?;
    let id = id_of(r.get("id")).ok_or(KrpcError::BadResponse("id is not 20 bytes"))?;
    let nodes = |name: &str, family| -> Result<Vec<NodeInfo>, KrpcError> {
        match r.get(name).map(Value::as_bytes) {
            None => Ok(Vec::new()),
            Some(Some(b)) => compact::decode_nodes(family, b)
                .map_err(|_| KrpcError::BadResponse("nodes not a whole number of entries")),
            Some(None) => Err(KrpcError::BadResponse("nodes is not a string")),
        }
    };
    let mut values = Vec::new();
    if let Some(list) = r.get("values").and_then(Value::as_list) {
        for item in list {
            // Entries of the wrong size are skipped, not fatal: peers of either family mix here.
            let Some(b) = item.as_bytes() else { continue };
            let family = match b.len() {
                compact::PEER_V4_LEN => Family::V4,
                compact::PEER_V6_LEN => Family::V6,
                _ => continue,
            };
            if let Ok(addr) = compact::decode_peer(family, b) {
                values.push(addr);
            }
        }
    }
    Ok(Response {
        id,
        nodes: nodes("nodes", Family::V4)?,
        nodes6: nodes("nodes6", Family::V6)?,
        token: r
            .get("token")
            .and_then(Value::as_bytes)
            .filter(|t| t.len() <= MAX_TOKEN_LEN)
            .map(<[u8]>::to_vec),
        values,
    })
}

fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(bytes);
}

fn key(out: &mut Vec<u8>, name: &str) {
    string(out, name.as_bytes());
}

fn int(out: &mut Vec<u8>, n: i64) {
    out.push(b'i');
    out.extend_from_slice(n.to_string().as_bytes());
    out.push(b'e');
}

fn encode_want(want: Option<Want>, out: &mut Vec<u8>) {
    if let Some(w) = want {
        key(out, "want");
        out.push(b'l');
        if w.v4 {
            string(out, b"n4");
        }
        if w.v6 {
            string(out, b"n6");
        }
        out.push(b'e');
    }
}

fn encode_args(q: &Query, out: &mut Vec<u8>) {
    out.push(b'd');
    key(out, "id");
    string(out, q.id());
    match q {
        Query::Ping { .. } => {}
        Query::FindNode { target, want, .. } => {
            key(out, "target");
            string(out, target);
            encode_want(*want, out);
        }
        Query::GetPeers {
            info_hash, want, ..
        } => {
            key(out, "info_hash");
            string(out, info_hash);
            encode_want(*want, out);
        }
        Query::AnnouncePeer {
            info_hash,
            port,
            token,
            implied_port,
            ..
        } => {
            key(out, "implied_port");
            int(out, i64::from(*implied_port));
            key(out, "info_hash");
            string(out, info_hash);
            key(out, "port");
            int(out, i64::from(*port));
            key(out, "token");
            string(out, token);
        }
    }
    out.push(b'e');
}

fn encode_response(r: &Response, out: &mut Vec<u8>) {
    out.push(b'd');
    key(out, "id");
    string(out, &r.id);
    let list = |out: &mut Vec<u8>, name: &str, nodes: &[NodeInfo]| {
        if !nodes.is_empty() {
            key(out, name);
            let mut bytes = Vec::new();
            for n in nodes {
                compact::encode_node(n, &mut bytes);
            }
            string(out, &bytes);
        }
    };
    list(out, "nodes", &r.nodes);
    list(out, "nodes6", &r.nodes6);
    if let Some(token) = &r.token {
        key(out, "token");
        string(out, token);
    }
    if !r.values.is_empty() {
        key(out, "values");
        out.push(b'l');
        for v in &r.values {
            let mut bytes = Vec::new();
            compact::encode_peer(v, &mut bytes);
            string(out, &bytes);
        }
        out.push(b'e');
    }
    out.push(b'e');
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Id = *b"abcdefghij0123456789";
    const M: Id = *b"mnopqrstuvwxyz123456";

    #[test]
    fn decodes_bep5_ping_written_by_hand_and_encodes_sorted() {
        let wire = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
        let msg = Message::decode(wire).unwrap();
        assert_eq!(
            msg,
            Message {
                transaction: b"aa".to_vec(),
                body: Body::Query(Query::Ping { id: A })
            }
        );
        // Ours adds `v`, between `t` and `y`.
        assert_eq!(
            msg.to_bytes(),
            b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:v4:BD011:y1:qe".to_vec()
        );
    }

    #[test]
    fn decodes_get_peers_response_with_values_and_nodes() {
        let mut wire = b"d1:rd2:id20:abcdefghij01234567895:nodes26:".to_vec();
        wire.extend_from_slice(&M);
        wire.extend_from_slice(&[127, 0, 0, 2, 0x1A, 0xE1]);
        wire.extend_from_slice(b"5:token8:aoeusnth6:valuesl6:");
        wire.extend_from_slice(&[10, 0, 0, 1, 0, 80]);
        wire.extend_from_slice(b"3:bade");
        wire.extend_from_slice(b"e1:t2:aa1:y1:re");
        let msg = Message::decode(&wire).unwrap();
        let Body::Response(r) = &msg.body else {
            panic!("{msg:?}")
        };
        assert_eq!(r.id, A);
        assert_eq!(r.nodes[0].id, M);
        assert_eq!(r.nodes[0].addr, "127.0.0.2:6881".parse().unwrap());
        assert_eq!(r.token.as_deref(), Some(&b"aoeusnth"[..]));
        assert_eq!(r.values, vec!["10.0.0.1:80".parse().unwrap()]);
        let again = Message::decode(&msg.to_bytes()).unwrap();
        assert_eq!(again, msg);
    }

    #[test]
    fn every_query_round_trips() {
        let queries = [
            Query::Ping { id: A },
            Query::FindNode {
                id: A,
                target: M,
                want: Some(Want { v4: true, v6: true }),
            },
            Query::GetPeers {
                id: A,
                info_hash: M,
                want: None,
            },
            Query::AnnouncePeer {
                id: A,
                info_hash: M,
                port: 6881,
                token: b"tok".to_vec(),
                implied_port: false,
            },
            Query::AnnouncePeer {
                id: A,
                info_hash: M,
                port: 0,
                token: b"tok".to_vec(),
                implied_port: true,
            },
        ];
        for q in queries {
            let msg = Message {
                transaction: vec![1, 2],
                body: Body::Query(q),
            };
            let bytes = msg.to_bytes();
            assert_eq!(Message::decode(&bytes).unwrap(), msg);
            crate::bencode::decode(&bytes).unwrap();
        }
    }

    #[test]
    fn error_messages_round_trip() {
        let wire = b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee";
        let msg = Message::decode(wire).unwrap();
        assert_eq!(
            msg.body,
            Body::Error {
                code: 201,
                message: "A Generic Error Ocurred".into()
            }
        );
        assert_eq!(Message::decode(&msg.to_bytes()).unwrap(), msg);
    }

    #[test]
    fn says_who_can_be_told_about_bad_input() {
        assert!(matches!(
            Message::decode(b"garbage"),
            Err(KrpcError::Unanswerable(_))
        ));
        assert!(matches!(
            Message::decode(b"d1:y1:qe"),
            Err(KrpcError::Unanswerable(_))
        ));
        let short_id = b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe";
        assert!(matches!(
            Message::decode(short_id),
            Err(KrpcError::BadQuery { code: ERROR_PROTOCOL, ref transaction, .. }) if transaction == b"aa"
        ));
        let unknown = b"d1:ad2:id20:abcdefghij0123456789e1:q4:vote1:t2:aa1:y1:qe";
        assert!(matches!(
            Message::decode(unknown),
            Err(KrpcError::BadQuery {
                code: ERROR_UNKNOWN_METHOD,
                ..
            })
        ));
        let no_port = b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234565:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe";
        assert!(matches!(
            Message::decode(no_port),
            Err(KrpcError::BadQuery { .. })
        ));
        let odd_nodes = b"d1:rd2:id20:abcdefghij01234567895:nodes3:abce1:t2:aa1:y1:re";
        assert!(matches!(
            Message::decode(odd_nodes),
            Err(KrpcError::BadResponse(_))
        ));
    }

    #[test]
    fn implied_port_wins_over_port() {
        let wire = b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe";
        let Body::Query(Query::AnnouncePeer {
            implied_port, port, ..
        }) = Message::decode(wire).unwrap().body
        else {
            panic!()
        };
        assert!(implied_port);
        assert_eq!(port, 6881);
    }

    #[test]
    fn never_panics_on_any_cut_or_flip() {
        let wire = Message {
            transaction: vec![9, 9],
            body: Body::Response(Response {
                id: A,
                nodes: vec![NodeInfo {
                    id: M,
                    addr: "127.0.0.1:1".parse().unwrap(),
                }],
                nodes6: vec![NodeInfo {
                    id: M,
                    addr: "[::1]:1".parse().unwrap(),
                }],
                token: Some(vec![1; 8]),
                values: vec!["[::1]:5".parse().unwrap()],
            }),
        }
        .to_bytes();
        for cut in 0..wire.len() {
            let _ = Message::decode(&wire[..cut]);
            let mut flipped = wire.clone();
            flipped[cut] ^= 0x55;
            let _ = Message::decode(&flipped);
        }
    }
}
