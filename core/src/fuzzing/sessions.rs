//! Whole sessions through the real pipeline: two clients send CONNECT, SUBSCRIBE, PUBLISH,
//! acknowledgements and garbage in any order while reading what the broker sends. The input
//! bytes are read as a script of such operations (structure-aware: most inputs are valid
//! sessions). Invariants: nothing panics, the broker never has more unacknowledged deliveries
//! out than the client's window, and no session queue passes `max_queued_messages`.

use super::{runtime, serve_mqtt, small_broker};
use crate::protocol::*;
use crate::Broker;
use bytes::{Bytes, BytesMut};
use std::cell::RefCell;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOPICS: [&str; 7] = ["a", "a/b", "a/b/c", "$SYS/x", "b/a", "a//b", "x/y/z/w"];
const FILTERS: [&str; 8] = [
    "#",
    "a/#",
    "a/+",
    "+/b",
    "$share/g/a/#",
    "$SYS/#",
    "a/b/c",
    "+/+/+",
];
const IDS: [&str; 2] = ["alpha", "beta"];

#[derive(Debug)]
enum Op {
    Subscribe {
        filter: u8,
        qos: u8,
        no_local: bool,
        rap: bool,
        handling: u8,
    },
    Unsubscribe {
        filter: u8,
    },
    Publish {
        topic: u8,
        qos: u8,
        retain: bool,
        dup: bool,
        id: u16,
        len: u8,
        expiry: Option<u8>,
    },
    /// Acknowledges the `n`-th delivery still open (PUBACK, PUBREC or PUBCOMP as it needs).
    Ack {
        n: u8,
    },
    /// Acknowledgements with any packet id.
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Ping,
    Disconnect {
        code: u8,
    },
    Raw(Vec<u8>),
}

#[derive(Debug)]
struct Client {
    v5: bool,
    clean: bool,
    id: bool,
    expiry: u8,
    receive_max: u8,
    will: Option<(u8, u8, bool)>,
    ops: Vec<Op>,
}

/// A delivery the client has not finished acknowledging.
struct Open {
    id: u16,
    qos: QoS,
    released: bool,
}

fn pick<'a>(set: &[&'a str], i: u8) -> &'a str {
    set[usize::from(i) % set.len()]
}

fn connect_packet(c: &Client) -> Connect {
    let mut props = Properties::default();
    if c.v5 {
        props.session_expiry_interval = Some(u32::from(c.expiry));
        if c.receive_max > 0 {
            props.receive_maximum = Some(u16::from(c.receive_max));
        }
    }
    Connect {
        protocol: if c.v5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        },
        clean_start: c.clean,
        keep_alive: 60,
        client_id: IDS[usize::from(c.id)].to_string(),
        will: c.will.map(|(t, q, retain)| LastWill {
            topic: pick(&TOPICS, t).into(),
            payload: Bytes::from_static(b"will"),
            qos: QoS::from_u8(q % 3).unwrap_or(QoS::AtMostOnce),
            retain,
            properties: Props::default(),
        }),
        username: None,
        password: None,
        properties: props.into(),
    }
}

/// The check's books of one client: deliveries open, and raw acknowledgements that matched
/// none (yet): the broker may have sent that delivery already, unread by the check, and the
/// ack then finishes it.
#[derive(Default)]
struct Books {
    open: Vec<Open>,
    early: Vec<(u16, QoS)>,
}

fn packet_for(op: &Op, books: &mut Books, v5: bool) -> Option<Packet> {
    let open = &mut books.open;
    let qos = |q: u8| QoS::from_u8(q % 3).unwrap_or(QoS::AtMostOnce);
    Some(match op {
        Op::Subscribe {
            filter,
            qos: q,
            no_local,
            rap,
            handling,
        } => Packet::Subscribe(Subscribe {
            packet_id: 7,
            filters: vec![(
                pick(&FILTERS, *filter).to_string(),
                SubscriptionOptions {
                    qos: qos(*q),
                    no_local: *no_local && v5,
                    retain_as_published: *rap && v5,
                    retain_handling: match handling % 3 {
                        0 => RetainHandling::SendOnSubscribe,
                        1 => RetainHandling::SendIfNew,
                        _ => RetainHandling::DoNotSend,
                    },
                },
            )],
            properties: Props::default(),
        }),
        Op::Unsubscribe { filter } => Packet::Unsubscribe(Unsubscribe {
            packet_id: 8,
            filters: vec![pick(&FILTERS, *filter).to_string()],
            properties: Props::default(),
        }),
        Op::Publish {
            topic,
            qos: q,
            retain,
            dup,
            id,
            len,
            expiry,
        } => {
            let q = qos(*q);
            let mut props = Properties::default();
            if v5 {
                props.message_expiry_interval = expiry.map(u32::from);
            }
            Packet::Publish(Publish {
                dup: *dup && q != QoS::AtMostOnce,
                qos: q,
                retain: *retain,
                topic: pick(&TOPICS, *topic).into(),
                packet_id: if q == QoS::AtMostOnce {
                    0
                } else {
                    (*id).max(1)
                },
                properties: props.into(),
                payload: Bytes::from(vec![b'p'; usize::from(*len)]),
            })
        }
        Op::Ack { n } => {
            if open.is_empty() {
                return None;
            }
            let i = usize::from(*n) % open.len();
            let o = &mut open[i];
            let r = PubResponse::new(o.id, ReasonCode::SUCCESS);
            match (o.qos, o.released) {
                (QoS::ExactlyOnce, false) => Packet::PubRec(r),
                (QoS::ExactlyOnce, true) => {
                    open.remove(i);
                    Packet::PubComp(r)
                }
                _ => {
                    open.remove(i);
                    Packet::PubAck(r)
                }
            }
        }
        // Any packet id: it may happen to finish a delivery that is open, which then is not.
        Op::PubAck(id) => {
            let before = open.len();
            open.retain(|o| !(o.id == *id && o.qos == QoS::AtLeastOnce));
            if open.len() == before {
                books.early.push((*id, QoS::AtLeastOnce));
            }
            Packet::PubAck(PubResponse::new(*id, ReasonCode::SUCCESS))
        }
        Op::PubRec(id) => Packet::PubRec(PubResponse::new(*id, ReasonCode::SUCCESS)),
        Op::PubRel(id) => Packet::PubRel(PubResponse::new(*id, ReasonCode::SUCCESS)),
        Op::PubComp(id) => {
            let before = open.len();
            open.retain(|o| !(o.id == *id && o.qos == QoS::ExactlyOnce && o.released));
            if open.len() == before {
                books.early.push((*id, QoS::ExactlyOnce));
            }
            Packet::PubComp(PubResponse::new(*id, ReasonCode::SUCCESS))
        }
        Op::Ping => Packet::PingReq,
        Op::Disconnect { code } => Packet::Disconnect(Disconnect {
            code: if v5 {
                ReasonCode(*code)
            } else {
                ReasonCode::SUCCESS
            },
            properties: Props::default(),
        }),
        Op::Raw(_) => return None,
    })
}

async fn run_client(broker: &Arc<Broker>, c: &Client) {
    let (client, server) = tokio::io::duplex(16 * 1024);
    let version = if c.v5 {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V311
    };
    let window = if c.v5 && c.receive_max > 0 {
        usize::from(c.receive_max).min(usize::from(broker.config.max_inflight))
    } else {
        usize::from(broker.config.max_inflight)
    };
    let books: RefCell<Books> = RefCell::default();
    let (mut r, mut w) = tokio::io::split(client);
    let write = async {
        let mut out = BytesMut::new();
        encode_packet(
            &Packet::Connect(Box::new(connect_packet(c))),
            version,
            &mut out,
        );
        for op in &c.ops {
            if let Op::Raw(bytes) = op {
                out.extend_from_slice(bytes);
            } else if let Some(p) = packet_for(op, &mut books.borrow_mut(), c.v5) {
                encode_packet(&p, version, &mut out);
            }
            if w.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
            // Let the broker and the reader run between packets.
            tokio::task::yield_now().await;
        }
        let _ = w.shutdown().await;
    };
    let read = async {
        let mut buf = BytesMut::new();
        loop {
            while let Ok(Some(p)) = decode_packet(&mut buf, Some(version), 1 << 20) {
                let mut books = books.borrow_mut();
                let Books { open, early } = &mut *books;
                match p {
                    Packet::Publish(p) if p.qos != QoS::AtMostOnce && !p.dup => {
                        let acked = (p.packet_id, QoS::AtLeastOnce);
                        if p.qos == QoS::AtLeastOnce && early.contains(&acked) {
                            early.retain(|e| *e != acked);
                            continue;
                        }
                        open.push(Open {
                            id: p.packet_id,
                            qos: p.qos,
                            released: false,
                        });
                        assert!(
                            open.len() <= window,
                            "{} deliveries open, window {window}",
                            open.len()
                        );
                    }
                    Packet::PubRel(r) => {
                        let completed = (r.packet_id, QoS::ExactlyOnce);
                        if early.contains(&completed) {
                            early.retain(|e| *e != completed);
                            open.retain(|o| o.id != r.packet_id);
                        } else if let Some(o) = open.iter_mut().find(|o| o.id == r.packet_id) {
                            o.released = true;
                        }
                    }
                    _ => {}
                }
            }
            match r.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let serve = serve_mqtt(broker, server);
    tokio::join!(write, read, serve);
}

/// Reads the fuzzer's bytes as numbers; zeros once they run out.
struct Draw<'a>(&'a [u8]);

impl Draw<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn client(&mut self) -> Client {
        Client {
            v5: self.bool(),
            clean: self.bool(),
            id: self.bool(),
            expiry: self.u8(),
            receive_max: self.u8() % 8,
            will: self.bool().then(|| (self.u8(), self.u8(), self.bool())),
            ops: Vec::new(),
        }
    }
    fn op(&mut self, kind: u8) -> Op {
        match kind % 11 {
            0 => Op::Subscribe {
                filter: self.u8(),
                qos: self.u8(),
                no_local: self.bool(),
                rap: self.bool(),
                handling: self.u8(),
            },
            1 => Op::Unsubscribe { filter: self.u8() },
            2 | 3 => Op::Publish {
                topic: self.u8(),
                qos: self.u8(),
                retain: self.bool(),
                dup: self.bool(),
                id: self.u16() % 8,
                len: self.u8(),
                expiry: self.bool().then(|| self.u8() % 3),
            },
            4 | 5 => Op::Ack { n: self.u8() },
            6 => match self.u8() % 4 {
                0 => Op::PubAck(self.u16() % 16),
                1 => Op::PubRec(self.u16() % 16),
                2 => Op::PubRel(self.u16() % 16),
                _ => Op::PubComp(self.u16() % 16),
            },
            7 => Op::Ping,
            8 => Op::Disconnect { code: self.u8() },
            9 => {
                let n = usize::from(self.u8() % 16);
                Op::Raw((0..n).map(|_| self.u8()).collect())
            }
            _ => Op::Ack { n: 0 },
        }
    }
}

/// Runs the script in `data` against a fresh broker and checks the invariants.
pub fn check_sessions(data: &[u8]) {
    let mut draw = Draw(data);
    let mut clients = [draw.client(), draw.client()];
    for _ in 0..128 {
        if draw.0.is_empty() {
            break;
        }
        let kind = draw.u8();
        let op = draw.op(kind >> 1);
        clients[usize::from(kind & 1)].ops.push(op);
    }
    let broker = small_broker();
    runtime().block_on(async {
        let run = async {
            tokio::join!(
                run_client(&broker, &clients[0]),
                run_client(&broker, &clients[1])
            );
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), run).await;
    });
    for id in IDS {
        if let Some(s) = broker.session(id) {
            assert!(
                s.queued() <= broker.config.max_queued_messages,
                "queue of {id} past its bound"
            );
        }
    }
}
