//! A cluster node: one `pdserve` process's ractor_cluster `NodeServer` plus its
//! membership actor.
//!
//! Membership (what ractor_cluster does not do for us):
//! - the node connects to every `--seed` and, transitively (ractor_cluster's
//!   `Transitive` mode), to every peer its peers know;
//! - every peer address ever seen (seeds and the listen addresses peers announce)
//!   is kept; a lost or refused connection is retried with exponential backoff
//!   (100 ms doubling to 5 s), so a node that comes back rejoins without restarting
//!   anyone; a seed given by name is resolved again on every attempt
//!   (see `peer_targets.rs`), so a seed that comes back at another address is
//!   found;
//! - right after a session is up, the membership actors exchange [`Hello`]; a peer
//!   with another [`PROTOCOL_VERSION`] is disconnected and logged;
//! - a session that closes before authenticating (wrong `--cluster-cookie`, or bytes
//!   that are not a pdserve node) is logged as refused, on both sides.
//!
//! Invariant: nothing here stores a remote `ActorId` across sessions; peers are
//! keyed by their announced listen address and node name.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage};

use crate::groups;
use crate::ids::{NodeName, Role};
use crate::peer_targets::Targets;
use crate::protocol::{Hello, MemberWire, PROTOCOL_VERSION};

const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot start the cluster node on {addr}: {reason}")]
    Start { addr: String, reason: String },
    #[error("invalid seed address {0:?} (expected HOST:PORT)")]
    BadSeed(String),
}

/// How to start a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// A label for the node name (`decode`, `prefill`, `frontend`, `serve`).
    pub label: String,
    /// Cluster listen address (`--cluster-listen`); port 0 picks a free port.
    pub listen: SocketAddr,
    /// Addresses of nodes to join through (`--seed`, repeatable).
    pub seeds: Vec<String>,
    /// Shared secret (`--cluster-cookie`).
    pub cookie: String,
    pub roles: Vec<Role>,
}

/// A running node. Dropping it does not stop it; call [`Node::shutdown`].
pub struct Node {
    pub name: NodeName,
    /// The announced listen address (`host:port`).
    pub listen: String,
    server: ActorRef<NodeServerMessage>,
    members: ActorRef<MemberMsg>,
}

impl Node {
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        for s in &config.seeds {
            if s.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(NodeError::BadSeed(s.clone()));
            }
        }
        let start_err = |reason: String| NodeError::Start {
            addr: config.listen.to_string(),
            reason,
        };
        // Bind first so that a taken port is a clear error (NodeServer's listener
        // would only log it), and so that port 0 resolves before we announce it.
        let probe =
            std::net::TcpListener::bind(config.listen).map_err(|e| start_err(e.to_string()))?;
        let port = probe
            .local_addr()
            .map_err(|e| start_err(e.to_string()))?
            .port();
        drop(probe);
        let host = config.listen.ip().to_string();
        let listen = format!("{host}:{port}");
        let name = NodeName(format!(
            "{}-{}-{:04x}",
            config.label,
            listen,
            rand::random::<u16>()
        ));
        let server = NodeServer::new(
            port,
            config.cookie.clone(),
            name.0.clone(),
            host,
            None,
            Some(ractor_cluster::node::NodeConnectionMode::Transitive),
        )
        .with_listen_addr(config.listen.ip());
        let (server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|e| start_err(e.to_string()))?;
        let hello = Hello {
            version: PROTOCOL_VERSION,
            node: name.clone(),
            listen: listen.clone(),
            roles: config.roles.clone(),
        };
        let (members, _) = Actor::spawn(
            None,
            Membership,
            MemberArgs {
                server: server.clone(),
                hello,
                seeds: config.seeds.clone(),
            },
        )
        .await
        .map_err(|e| start_err(e.to_string()))?;
        tracing::info!(node = %name, %listen, seeds = ?config.seeds, "cluster node started");
        Ok(Node {
            name,
            listen,
            server,
            members,
        })
    }

    /// Names of the peers this node has exchanged a compatible [`Hello`] with.
    pub async fn peers(&self) -> Vec<Hello> {
        ractor::call_t!(self.members, MemberMsg::Peers, 1000).unwrap_or_default()
    }

    /// Stops reconnecting, closes every session and the listener.
    pub async fn shutdown(self) {
        self.members.stop(None);
        self.server.stop(None);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Membership;

struct MemberArgs {
    server: ActorRef<NodeServerMessage>,
    hello: Hello,
    seeds: Vec<String>,
}

/// Membership actor messages; only `Wire` crosses nodes.
pub enum MemberMsg {
    Wire(MemberWire),
    Session(SessionEvent),
    Connected {
        addr: String,
        /// The socket address the name resolved to, when it did.
        resolved: Option<String>,
        ok: Result<(), String>,
    },
    Tick,
    Peers(ractor::RpcReplyPort<Vec<Hello>>),
}
crate::impl_wire_message!(MemberMsg, MemberWire);

/// A node-server event, forwarded from the subscription.
pub enum SessionEvent {
    Opened {
        session: String,
        peer_addr: String,
        outgoing: bool,
    },
    Authenticated {
        session: String,
    },
    Ready {
        session: String,
        peer: Option<(String, String)>,
    },
    Closed {
        session: String,
    },
}

struct SessionInfo {
    peer_addr: String,
    outgoing: bool,
    authenticated: bool,
    /// The peer's announced `host:port`, once known.
    connection_string: Option<String>,
    peer_name: Option<String>,
}

struct MemberState {
    server: ActorRef<NodeServerMessage>,
    hello: Hello,
    targets: Targets,
    sessions: HashMap<String, SessionInfo>,
    peers: BTreeMap<NodeName, Hello>,
    greeted: HashSet<ractor::ActorId>,
}

struct Forwarder(ActorRef<MemberMsg>);

fn session_key(s: &ractor_cluster::node::NodeServerSessionInformation) -> String {
    format!("{}", s.actor.get_id())
}

impl NodeEventSubscription for Forwarder {
    fn node_session_opened(&self, s: ractor_cluster::node::NodeServerSessionInformation) {
        let _ = self.0.cast(MemberMsg::Session(SessionEvent::Opened {
            session: session_key(&s),
            peer_addr: s.peer_addr.clone(),
            outgoing: !s.is_server,
        }));
    }
    fn node_session_authenticated(&self, s: ractor_cluster::node::NodeServerSessionInformation) {
        let _ = self.0.cast(MemberMsg::Session(SessionEvent::Authenticated {
            session: session_key(&s),
        }));
    }
    fn node_session_ready(&self, s: ractor_cluster::node::NodeServerSessionInformation) {
        let peer = s
            .peer_name
            .as_ref()
            .map(|p| (p.name.clone(), p.connection_string.clone()));
        let _ = self.0.cast(MemberMsg::Session(SessionEvent::Ready {
            session: session_key(&s),
            peer,
        }));
    }
    fn node_session_disconnected(&self, s: ractor_cluster::node::NodeServerSessionInformation) {
        let _ = self.0.cast(MemberMsg::Session(SessionEvent::Closed {
            session: session_key(&s),
        }));
    }
}

impl Actor for Membership {
    type Msg = MemberMsg;
    type State = MemberState;
    type Arguments = MemberArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<MemberMsg>,
        args: MemberArgs,
    ) -> Result<MemberState, ActorProcessingErr> {
        args.server.cast(NodeServerMessage::SubscribeToEvents {
            id: "pdserve-membership".into(),
            subscription: Box::new(Forwarder(myself.clone())),
        })?;
        ractor::pg::join(groups::MEMBERS.to_string(), vec![myself.get_cell()]);
        ractor::pg::monitor(groups::MEMBERS.to_string(), myself.get_cell());
        let mut targets = Targets::default();
        for s in args.seeds {
            if s != args.hello.listen {
                targets.add(s);
            }
        }
        myself.send_interval(TICK, || MemberMsg::Tick);
        Ok(MemberState {
            server: args.server,
            hello: args.hello,
            targets,
            sessions: HashMap::new(),
            peers: BTreeMap::new(),
            greeted: HashSet::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<MemberMsg>,
        msg: MemberMsg,
        st: &mut MemberState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MemberMsg::Tick => connect_due(&myself, st),
            MemberMsg::Connected { addr, resolved, ok } => {
                let first_failure =
                    st.targets
                        .attempt_ended(&addr, resolved, ok.is_ok(), Instant::now());
                if let (true, Err(e)) = (first_failure, ok) {
                    tracing::warn!(peer = %addr, "cannot reach cluster peer: {e}; retrying with backoff");
                }
            }
            MemberMsg::Session(ev) => on_session(st, ev),
            MemberMsg::Wire(MemberWire::Hello(h)) => on_hello(st, h).await,
            MemberMsg::Peers(reply) => {
                let _ = reply.send(st.peers.values().cloned().collect());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<MemberMsg>,
        evt: SupervisionEvent,
        st: &mut MemberState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ProcessGroupChanged(ractor::pg::GroupChangeMessage::Join(
            _,
            _,
            cells,
        )) = evt
        {
            for cell in cells {
                if !cell.get_id().is_local() && st.greeted.insert(cell.get_id()) {
                    let peer: ActorRef<MemberMsg> = cell.into();
                    let _ = peer.cast(MemberMsg::Wire(MemberWire::Hello(st.hello.clone())));
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<MemberMsg>,
        st: &mut MemberState,
    ) -> Result<(), ActorProcessingErr> {
        let _ = st.server.cast(NodeServerMessage::UnsubscribeToEvents(
            "pdserve-membership".into(),
        ));
        Ok(())
    }
}

fn connect_due(myself: &ActorRef<MemberMsg>, st: &mut MemberState) {
    for addr in st.targets.start_due(Instant::now()) {
        let server = st.server.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let (resolved, ok) = connect(&server, &addr).await;
            let _ = me.cast(MemberMsg::Connected { addr, resolved, ok });
        });
    }
}

/// Resolves `addr` (a name is looked up again on every attempt) and opens a
/// session to the first of its addresses that accepts; bounded in time.
/// Returns the address connected to (or last tried) and the outcome.
async fn connect(
    server: &ActorRef<NodeServerMessage>,
    addr: &str,
) -> (Option<String>, Result<(), String>) {
    const LIMIT: Duration = Duration::from_secs(2);
    let socks: Vec<SocketAddr> =
        match tokio::time::timeout(LIMIT, tokio::net::lookup_host(addr)).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => return (None, Err(format!("cannot resolve {addr}: {e}"))),
            Err(_) => return (None, Err(format!("resolving {addr} timed out"))),
        };
    let mut outcome = (None, Err(format!("{addr} resolves to no address")));
    for sock in socks {
        let ok =
            match tokio::time::timeout(LIMIT, ractor_cluster::client_connect(server, sock)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("{e:?}")),
                Err(_) => Err("connect timed out".to_string()),
            };
        let done = ok.is_ok();
        outcome = (Some(sock.to_string()), ok);
        if done {
            break;
        }
    }
    outcome
}

fn on_session(st: &mut MemberState, ev: SessionEvent) {
    match ev {
        SessionEvent::Opened {
            session,
            peer_addr,
            outgoing,
        } => {
            st.sessions.insert(
                session,
                SessionInfo {
                    peer_addr,
                    outgoing,
                    authenticated: false,
                    connection_string: None,
                    peer_name: None,
                },
            );
        }
        SessionEvent::Authenticated { session } => {
            if let Some(s) = st.sessions.get_mut(&session) {
                s.authenticated = true;
            }
        }
        SessionEvent::Ready { session, peer } => {
            let Some(s) = st.sessions.get_mut(&session) else {
                return;
            };
            s.authenticated = true;
            if let Some((name, conn)) = peer {
                tracing::info!(peer = %name, addr = %conn, "cluster peer connected");
                s.peer_name = Some(name);
                s.connection_string = Some(conn.clone());
                if conn != st.hello.listen {
                    st.targets.add(conn.clone());
                    st.targets.session_up(&conn);
                }
            }
            if s.outgoing {
                st.targets.session_up(&s.peer_addr);
            }
        }
        SessionEvent::Closed { session } => {
            let Some(s) = st.sessions.remove(&session) else {
                return;
            };
            if !s.authenticated {
                tracing::warn!(
                    peer = %s.peer_addr,
                    "cluster connection refused before authentication (wrong --cluster-cookie, \
                     or not a pdserve node)"
                );
            } else {
                tracing::warn!(peer = ?s.peer_name, addr = ?s.connection_string, "cluster peer disconnected");
            }
            if let Some(name) = &s.peer_name {
                st.peers.remove(&NodeName(name.clone()));
            }
            // Another session to the same address may still be up (duplicate
            // connections are resolved by ractor_cluster); only retry when none is.
            for addr in [
                s.connection_string.clone(),
                s.outgoing.then(|| s.peer_addr.clone()),
            ]
            .into_iter()
            .flatten()
            {
                let still_up = st
                    .sessions
                    .values()
                    .any(|o| o.authenticated && o.connection_string.as_deref() == Some(&addr));
                if !still_up {
                    st.targets.session_lost(&addr, Instant::now());
                }
            }
        }
    }
}

async fn on_hello(st: &mut MemberState, h: Hello) {
    if h.version != PROTOCOL_VERSION {
        tracing::error!(
            peer = %h.node,
            "peer speaks cluster protocol version {} but this node speaks {}; disconnecting",
            h.version,
            PROTOCOL_VERSION
        );
        if let Ok(sessions) = ractor::call_t!(st.server, NodeServerMessage::GetSessions, 1000) {
            for s in sessions.values() {
                if s.peer_name.as_ref().map(|p| p.name.as_str()) == Some(h.node.0.as_str()) {
                    s.actor.stop(Some("protocol version mismatch".into()));
                }
            }
        }
        return;
    }
    if h.listen != st.hello.listen {
        st.targets.add_up(h.listen.clone());
    }
    st.peers.insert(h.node.clone(), h);
}
