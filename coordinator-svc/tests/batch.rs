//! Batch sessions through the real gRPC API of real processes (issue 17): one session signs
//! several messages, every party's `Sign` returns every signature and each verifies; the
//! signer checks each message on its own (a policy refusing one message of the batch refuses
//! the session, naming its rule).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

#[path = "common/procs.rs"]
mod procs;

use musig2_proto::v1 as pb;
use procs::{Client, ProcParty, error_info, keys, mesh};
use shared::musig::{Signature, SignatureFormat, verify};

fn taproot() -> Vec<pb::Tweak> {
    vec![pb::Tweak {
        kind: Some(shared::wire::pb::tweak::Kind::Taproot(pb::TaprootTweak {
            merkle_root: Vec::new(),
        })),
    }]
}

/// Create a batch on the first party, then `Sign` on every party at once.
async fn sign_batch(
    clients: &[Client],
    ps: &[ProcParty],
    batch: &[Vec<u8>],
) -> (pb::Session, Vec<Result<pb::SignResponse, tonic::Status>>) {
    let session = clients[0]
        .clone()
        .create_session(pb::CreateSessionRequest {
            signer_keys: keys(ps),
            format: pb::SignatureFormat::Bip340 as i32,
            tweaks: taproot(),
            batch_messages: batch.to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let calls: Vec<_> = clients
        .iter()
        .map(|c| {
            let (mut c, id) = (c.clone(), session.session_id.clone());
            tokio::spawn(async move {
                c.sign(pb::SignRequest {
                    session_id: id,
                    timeout_ms: Some(60_000),
                    ..Default::default()
                })
                .await
                .map(tonic::Response::into_inner)
            })
        })
        .collect();
    let mut out = Vec::new();
    for c in calls {
        out.push(c.await.unwrap());
    }
    (session, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_signed_through_the_api_and_each_message_is_checked_by_the_signer() {
    let base = tempfile::tempdir().unwrap();
    // Party 3's signer signs no message longer than 64 bytes.
    let policy = "[policy]\n[[policy.rules]]\nid = \"short-messages\"\nkind = \"max_message_length\"\nmax_bytes = 64\n";
    let ps = vec![
        ProcParty::start(base.path(), 71, "").await,
        ProcParty::start(base.path(), 72, "").await,
        ProcParty::start_with_signer(base.path(), 73, "", policy).await,
    ];
    mesh(&ps).await;
    let mut clients = Vec::new();
    for p in &ps {
        clients.push(p.client().await);
    }

    // Sixteen messages of every allowed length up to the policy's 64 bytes.
    let batch: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; usize::from(i) * 4]).collect();
    let (session, answers) = sign_batch(&clients, &ps, &batch).await;
    let key: [u8; 33] = session.output_key.clone().try_into().unwrap();
    assert_eq!(session.context.as_ref().unwrap().batch_messages, batch);
    let mut first: Option<Vec<Vec<u8>>> = None;
    for a in answers {
        let a = a.unwrap();
        assert!(a.signature.is_empty(), "no single signature for a batch");
        assert_eq!(a.signatures.len(), batch.len());
        for (m, s) in batch.iter().zip(&a.signatures) {
            verify(
                SignatureFormat::Bip340,
                &key,
                m,
                &Signature(s.clone().try_into().unwrap()),
            )
            .unwrap();
        }
        let s = a.session.unwrap();
        assert_eq!(s.final_signatures, a.signatures);
        assert_eq!(s.final_signature, None);
        assert_eq!(first.get_or_insert(a.signatures.clone()), &a.signatures);
    }
    // Read back: every signature with its message.
    let f = clients[1]
        .clone()
        .get_final_signature(pb::GetFinalSignatureRequest {
            session_id: session.session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(f.signature.is_empty() && f.message.is_empty());
    assert_eq!(f.batch_messages, batch);
    assert_eq!(Some(f.batch_signatures), first);

    // One message of 65 bytes among the others: party 3's signer refuses it, and with it the
    // session, on every party.
    let mut bad = batch.clone();
    bad[9] = vec![9; 65];
    let (_, answers) = sign_batch(&clients, &ps, &bad).await;
    for (i, a) in answers.into_iter().enumerate() {
        let e = a.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Aborted, "party {i}: {e:?}");
        assert_eq!(error_info(&e).0, "SESSION_ABORTED");
        if i == 2 {
            assert!(e.message().contains("short-messages"), "{}", e.message());
        }
    }

    // A one-round batch, and malformed batches, are refused with the field named.
    for (req, field) in [
        (
            pb::CreateSessionRequest {
                signer_keys: keys(&ps),
                format: pb::SignatureFormat::Bip340 as i32,
                batch_messages: batch.clone(),
                one_round: true,
                ..Default::default()
            },
            "batch_messages",
        ),
        (
            pb::CreateSessionRequest {
                signer_keys: keys(&ps),
                format: pb::SignatureFormat::Lotus as i32,
                batch_messages: vec![vec![1; 32], vec![2; 31]],
                ..Default::default()
            },
            "context",
        ),
        (
            pb::CreateSessionRequest {
                signer_keys: keys(&ps),
                format: pb::SignatureFormat::Bip340 as i32,
                message: vec![1; 32],
                batch_messages: vec![vec![1; 32], vec![2; 32]],
                ..Default::default()
            },
            "context",
        ),
        (
            pb::CreateSessionRequest {
                signer_keys: keys(&ps),
                format: pb::SignatureFormat::Bip340 as i32,
                batch_messages: vec![vec![1; 32]; 257],
                ..Default::default()
            },
            "context",
        ),
    ] {
        let e = clients[0].clone().create_session(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert_eq!(
            error_info(&e).1.get("field").map(String::as_str),
            Some(field),
            "{e:?}"
        );
    }

    // Pages of sessions stay within what a client decodes (4 MiB by default): 40 batches of
    // 64 KiB of messages each (of party 1's key alone, so nobody else hears of them) come in
    // several pages, each session once.
    let mut created = std::collections::BTreeSet::new();
    for i in 0..40u8 {
        let s = clients[0]
            .clone()
            .create_session(pb::CreateSessionRequest {
                signer_keys: vec![ps[0].key.to_vec()],
                format: pb::SignatureFormat::Bip340 as i32,
                batch_messages: (0..64u8).map(|m| vec![i ^ m; 1024]).collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .session
            .unwrap();
        created.insert(s.session_id);
    }
    let (mut seen, mut token, mut pages) = (std::collections::BTreeSet::new(), String::new(), 0);
    loop {
        let page = clients[0]
            .clone()
            .list_sessions(pb::ListSessionsRequest {
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            prost::Message::encoded_len(&page) < 3 * 1024 * 1024,
            "page of {} bytes",
            prost::Message::encoded_len(&page)
        );
        pages += 1;
        for s in page.sessions {
            assert!(seen.insert(s.session_id), "a session on two pages");
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(pages >= 2, "{pages} page(s)");
    assert!(created.is_subset(&seen));
}
