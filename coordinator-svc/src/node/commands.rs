//! Commands of the party's applications (through [`super::NodeHandle`]): each is handed to
//! the core, or answered from the core and the store.

use super::handle::Command;
use super::*;

impl Node {
    pub(super) fn on_command(&mut self, cmd: Command, fx: &mut Vec<Effect>) {
        let now = now_ms();
        match cmd {
            Command::Create {
                context,
                election,
                timeout,
                request_id,
                one_round,
                reply,
            } => {
                let timeout = timeout.map(ms);
                let r = if one_round {
                    self.core
                        .create_one_round(now, context, timeout, request_id, fx)
                } else {
                    self.core
                        .create_for(now, context, election, timeout, request_id, fx)
                };
                self.answer(fx, reply, r);
            }
            Command::SetPool {
                context,
                size,
                reply,
            } => {
                let r = self.core.set_pool(now, context, size, fx);
                self.answer(fx, reply, r);
            }
            Command::Page {
                phase,
                before,
                limit,
                reply,
            } => {
                let _ = reply.send(self.page(now, phase, before, limit));
            }
            Command::SigningRequests { reply } => {
                let _ = reply.send(self.core.signing_requests(now));
            }
            Command::Join { id, reply } => match self.core.join(now, id, fx) {
                Pending::Ready(r) => self.answer(fx, reply, r),
                Pending::Waiting(query) => {
                    self.joins.insert(query, reply);
                }
            },
            Command::Get { id, reply } => {
                let view = self.core.session(id).or_else(|| {
                    let rec = self.store.get(&id.0).ok().flatten()?;
                    self.core.stored_view(now, id, &rec)
                });
                let _ = reply.send(view);
            }
            Command::List { reply } => {
                let _ = reply.send(self.core.sessions());
            }
            Command::Close { id, reason, reply } => {
                let r = self.core.close(now, id, &reason, fx);
                self.answer(fx, reply, r);
            }
            Command::Dial { addr, reply } => self.dial(addr, reply),
            Command::Info { reply } => {
                let me = *self.swarm.local_peer_id();
                let _ = reply.send(NodeInfo {
                    peer_id: me,
                    listen_addresses: self
                        .swarm
                        .listeners()
                        .map(|a| a.clone().with(libp2p::multiaddr::Protocol::P2p(me)))
                        .collect(),
                    external_addresses: self
                        .swarm
                        .external_addresses()
                        .map(|a| a.clone().with(libp2p::multiaddr::Protocol::P2p(me)))
                        .collect(),
                    keys: self.core.keys().to_vec(),
                    connected_peers: self.swarm.connected_peers().count(),
                });
            }
            Command::Rejections { reply } => {
                let _ = reply.send(self.core.rejections());
            }
            Command::SendRaw { peer, bytes, reply } => self.send_raw(peer, bytes, reply),
            Command::Envelope {
                message,
                from,
                reply,
            } => {
                let _ = reply.send(self.core.envelope(&message, &from));
            }
            Command::PeerKeys { reply } => {
                let _ = reply.send(self.core.peer_keys());
            }
            Command::Ban {
                peer,
                reason,
                reply,
            } => {
                let r = self.core.blacklist(peer, &reason, fx);
                self.answer(fx, reply, r);
            }
            Command::Unban { peer, reply } => {
                let r = self.core.unblacklist(peer, fx);
                self.answer(fx, reply, r);
            }
            Command::SendRequest {
                context,
                transaction_type,
                amount,
                request_id,
                reply,
            } => {
                let r = self.core.send_signing_request_for(
                    now,
                    context,
                    transaction_type,
                    amount,
                    request_id,
                    fx,
                );
                self.answer(fx, reply, r);
            }
            Command::Respond {
                request_id,
                accept,
                reply,
            } => {
                let r = self
                    .core
                    .respond_signing_request(now, request_id, accept, fx);
                self.answer(fx, reply, r);
            }
            Command::Advertise { keys, body, reply } => {
                let r = self.core.advertise(now, keys, body, fx);
                self.answer(fx, reply, r);
            }
            Command::Withdraw { reply } => {
                self.core.withdraw();
                let _ = reply.send(());
            }
            Command::Discover { reply } => {
                let _ = reply.send(self.core.discovered(now));
            }
            Command::PublishRaw {
                topic,
                bytes,
                reply,
            } => self.publish_raw(topic, bytes, reply),
            Command::Peers { reply } => {
                let _ = reply.send(self.core.peers());
            }
            Command::NotifyBroadcast {
                id,
                reference,
                reply,
            } => {
                if self.core.needs_load(id) {
                    let record = self.read_record(id);
                    self.core.on_loaded(now, id, record, fx);
                }
                let r = self.core.notify_broadcast(now, id, reference, fx);
                self.answer(fx, reply, r);
            }
            Command::Announcement { id, reply } => {
                let _ = reply.send(self.core.announcement(id));
            }
            Command::PutRecord { key, value, reply } => self.put_raw_record(key, value, reply),
        }
    }
}
