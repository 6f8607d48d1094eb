//! `CoordinatorAdminService`: security metrics, peer scores, bans (DESIGN §5 security
//! manager), over the same mutually authenticated channel as the API.

use libp2p::PeerId;
use musig2_proto::v1::coordinator_admin_service_server::CoordinatorAdminService;
use musig2_proto::v1::{self as pb};
use tonic::{Code, Request, Response, Status};

use crate::api::errors::{invalid, status};
use crate::node::{ErrorReason, NodeHandle, PeerStatus};

/// The admin service.
#[derive(Debug, Clone)]
pub struct Admin {
    node: NodeHandle,
}

impl Admin {
    /// Serve a node.
    pub fn new(node: NodeHandle) -> Self {
        Admin { node }
    }
}

fn peer_id(s: &str) -> Result<PeerId, Status> {
    s.parse()
        .map_err(|_| invalid("peer_id", format!("{s:?} is not a base58 peer id")))
}

fn info(p: &PeerStatus) -> pb::PeerInfo {
    pb::PeerInfo {
        peer_id: p.peer.to_string(),
        connected: p.connected,
        score: p.score,
        blacklisted: p.ban.as_ref().is_some_and(|b| b.until_ms.is_none()),
        graylisted_until_ms: p.ban.as_ref().and_then(|b| b.until_ms),
        ban_reason: p.ban.as_ref().map(|b| b.reason.clone()).unwrap_or_default(),
        invalid_signatures: u64::from(p.record.invalid_signatures),
        rate_limit_violations: u64::from(p.record.rate_limit_violations),
        rejected_messages: p.rejections.values().sum(),
        signer_keys: p.keys.iter().map(|k| k.to_vec()).collect(),
    }
}

#[tonic::async_trait]
impl CoordinatorAdminService for Admin {
    async fn get_security_metrics(
        &self,
        _r: Request<pb::GetSecurityMetricsRequest>,
    ) -> Result<Response<pb::GetSecurityMetricsResponse>, Status> {
        let peers = self.node.peers().await?;
        let sum = |f: &dyn Fn(&PeerStatus) -> u64| peers.iter().map(f).sum::<u64>();
        Ok(Response::new(pb::GetSecurityMetricsResponse {
            rate_limit_violations: sum(&|p| u64::from(p.record.rate_limit_violations)),
            blacklisted_peers: sum(&|p| {
                u64::from(p.ban.as_ref().is_some_and(|b| b.until_ms.is_none()))
            }),
            graylisted_peers: sum(&|p| {
                u64::from(p.ban.as_ref().is_some_and(|b| b.until_ms.is_some()))
            }),
            invalid_signatures: sum(&|p| u64::from(p.record.invalid_signatures)),
            spam_events: sum(&|p| u64::from(p.record.spam_events)),
            messages_rejected: sum(&|p| p.rejections.values().sum()),
            messages_accepted: self.node.accepted_messages(),
        }))
    }

    async fn get_peer_score(
        &self,
        r: Request<pb::GetPeerScoreRequest>,
    ) -> Result<Response<pb::GetPeerScoreResponse>, Status> {
        let peer = peer_id(&r.into_inner().peer_id)?;
        let p = self
            .node
            .peers()
            .await?
            .into_iter()
            .find(|p| p.peer == peer)
            .ok_or_else(|| {
                status(
                    Code::NotFound,
                    ErrorReason::PeerNotFound,
                    format!("peer {peer} is unknown"),
                    &[("peer_id", peer.to_string())],
                )
            })?;
        Ok(Response::new(pb::GetPeerScoreResponse {
            score: p.score,
            peer: Some(info(&p)),
        }))
    }

    async fn blacklist_peer(
        &self,
        r: Request<pb::BlacklistPeerRequest>,
    ) -> Result<Response<pb::BlacklistPeerResponse>, Status> {
        let r = r.into_inner();
        let peer = peer_id(&r.peer_id)?;
        if peer == self.node.peer_id() {
            return Err(invalid("peer_id", "a node cannot ban itself"));
        }
        self.node.blacklist(peer, &r.reason).await?;
        Ok(Response::new(pb::BlacklistPeerResponse {}))
    }

    async fn unblacklist_peer(
        &self,
        r: Request<pb::UnblacklistPeerRequest>,
    ) -> Result<Response<pb::UnblacklistPeerResponse>, Status> {
        let peer = peer_id(&r.into_inner().peer_id)?;
        self.node.unblacklist(peer).await?;
        Ok(Response::new(pb::UnblacklistPeerResponse {}))
    }

    async fn list_peers(
        &self,
        r: Request<pb::ListPeersRequest>,
    ) -> Result<Response<pb::ListPeersResponse>, Status> {
        let r = r.into_inner();
        let size = crate::api::page_size(r.page_size)?;
        if !r.page_token.is_empty() {
            peer_id(&r.page_token).map_err(|_| invalid("page_token", "not a token of this API"))?;
        }
        let mut peers: Vec<pb::PeerInfo> = self.node.peers().await?.iter().map(info).collect();
        peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        peers.retain(|p| r.page_token.is_empty() || p.peer_id > r.page_token);
        let more = peers.len() > size;
        peers.truncate(size);
        let next_page_token = if more {
            peers.last().map(|p| p.peer_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListPeersResponse {
            peers,
            next_page_token,
        }))
    }
}
