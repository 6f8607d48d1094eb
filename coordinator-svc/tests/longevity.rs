//! Long uptimes on real processes: three parties whose attestations live 20 s keep completing
//! sessions for two minutes (six lifetimes), renewing them as they go, with no message refused
//! and no peer banned anywhere. `MUSIG2_LONGEVITY_SECS` changes the duration.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

#[path = "common/procs.rs"]
mod procs;

use std::time::{Duration, Instant};

use musig2_proto::v1 as pb;
use procs::{ProcParty, mesh, session};
use shared::musig::SignatureFormat;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestations_living_twenty_seconds_are_renewed_and_sessions_go_on_for_two_minutes() {
    let run_for = Duration::from_secs(
        std::env::var("MUSIG2_LONGEVITY_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(120),
    );
    let base = tempfile::tempdir().unwrap();
    let extra = "attestation_ttl_ms = 20000\nattestation_renew_before_ms = 8000";
    let mut ps = Vec::new();
    for s in 91..94u8 {
        ps.push(ProcParty::start(base.path(), s, extra).await);
    }
    mesh(&ps).await;
    let started = Instant::now();
    let mut sessions = 0u32;
    while started.elapsed() < run_for {
        let format = if sessions.is_multiple_of(2) {
            SignatureFormat::Bip340
        } else {
            SignatureFormat::Lotus
        };
        let mut msg = [0u8; 32];
        msg[..4].copy_from_slice(&sessions.to_be_bytes());
        session(&ps, format, msg, false).await;
        sessions += 1;
        // A session a second or so: the peers' attestations are checked on every message.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "{sessions} sessions in {:.0} s with 20 s attestations",
        started.elapsed().as_secs_f64()
    );
    for (i, p) in ps.iter().enumerate() {
        let mut c = p.admin().await;
        let m = c
            .get_security_metrics(pb::GetSecurityMetricsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(m.messages_rejected, 0, "party {i}: {m:?}");
        assert_eq!(
            m.blacklisted_peers + m.graylisted_peers,
            0,
            "party {i}: {m:?}"
        );
        let peers = c
            .list_peers(pb::ListPeersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .peers;
        assert_eq!(peers.len(), ps.len() - 1, "party {i}: {peers:?}");
        for peer in peers {
            assert!(peer.connected, "party {i}: {peer:?}");
            assert_eq!(peer.rejected_messages, 0, "party {i}: {peer:?}");
            assert!(
                !peer.blacklisted && peer.graylisted_until_ms.is_none(),
                "{peer:?}"
            );
        }
    }
    // Six lifetimes at least went by, so every party renewed several times.
    assert!(started.elapsed() >= run_for);
}
