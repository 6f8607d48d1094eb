//! The session's phase rules, confirmations, duplicates and sequence windows, table-driven.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]
use super::*;
use shared::election::{ElectionMethod, elect};
use shared::musig::{SecretKey, SignatureFormat, nonce_gen};
use shared::wire::Abort;

/// Outcome of a fresh contribution from signer 1.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    /// Accepted (applied, or acknowledged without effect).
    Ok,
    /// Refused for its phase.
    Phase,
}

fn session(phase: Phase) -> (Session, PubNonce) {
    let keys: Vec<SecretKey> = (1..=3u8)
        .map(|b| SecretKey::from_bytes(&[b; 32]).unwrap())
        .collect();
    let mut pks: Vec<[u8; 33]> = keys.iter().map(SecretKey::public_key).collect();
    pks.sort_unstable();
    let context = SessionContext {
        signer_keys: pks.clone(),
        message: vec![9; 32],
        format: SignatureFormat::Bip340,
        tweaks: Vec::new(),
        batch: Vec::new(),
    };
    let key_agg = context.key_agg().unwrap();
    let election = elect(ElectionMethod::Lexicographic, &pks).unwrap();
    let mut s = Session::new(
        SessionId([1; 16]),
        context,
        key_agg.clone(),
        election,
        pks[0],
        0,
        1_000_000,
        Vec::new(),
        vec![0],
        0,
    );
    s.phase = phase;
    let sk = keys.iter().find(|k| k.public_key() == pks[1]).unwrap();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
    let (_, nonce) = nonce_gen(&mut rng, sk, &key_agg, &[9; 32]).unwrap();
    (s, nonce)
}

#[test]
fn phase_rules() {
    use Out::{Ok as A, Phase as P};
    let phases = [
        Phase::Init,
        Phase::NonceExchange,
        Phase::PartialSigExchange,
        Phase::Complete,
        Phase::Closed,
        Phase::Aborted,
    ];
    // Per message kind, the outcome in each phase above. Contributions to a session that
    // ended here are acknowledged without effect (honest senders have not heard yet).
    let table: [(&str, [Out; 6]); 7] = [
        ("join", [A, A, P, A, A, A]),
        ("nonce", [A, A, P, A, A, A]),
        ("psig", [P, A, A, A, A, A]),
        ("abort", [A, A, A, A, A, A]),
        ("finalized", [P, A, A, A, A, A]),
        ("confirmed", [A, A, A, A, A, P]),
        ("hello", [P, P, P, P, P, P]),
    ];
    for (kind, outcomes) in table {
        for (phase, want) in phases.iter().zip(outcomes) {
            let (mut s, nonce) = session(*phase);
            let body = match kind {
                "join" => Body::Join,
                "nonce" => Body::NonceShare(vec![nonce]),
                "psig" => {
                    Body::PartialSigShare(vec![PartialSignature::from_bytes(&[1; 32]).unwrap()])
                }
                "abort" => Body::Abort(Abort {
                    code: AbortCode::Closed,
                    reason: "r".into(),
                    culprits: Vec::new(),
                }),
                "finalized" => Body::SignatureFinalized(vec![shared::musig::Signature([0; 64])]),
                // Signer 1 is second in the lexicographic priority list: attempt 1.
                "confirmed" => Body::BroadcastConfirmed {
                    reference: "x".into(),
                    attempt: 1,
                },
                _ => Body::Hello(Vec::new()),
            };
            let got = match s.on_remote(10, 1, 2, &body, 100, true) {
                Ok(_) => Out::Ok,
                Err(Reject::OutOfPhase { .. }) => Out::Phase,
                Err(e) => panic!("{kind} in {phase:?}: {e}"),
            };
            assert_eq!(got, want, "{kind} in {}", phase.as_str());
        }
    }
}

#[test]
fn only_the_responsible_party_confirms_and_early_confirmations_are_held() {
    // Signer 1 claims attempt 0 (signer 0's): refused, in any phase.
    for phase in [Phase::Init, Phase::Complete] {
        let (mut s, _) = session(phase);
        let claim = Body::BroadcastConfirmed {
            reference: "x".into(),
            attempt: 0,
        };
        let r = s.on_remote(1, 1, 2, &claim, 100, true);
        assert!(
            matches!(
                r,
                Err(Reject::NotResponsible {
                    index: 1,
                    attempt: 0
                })
            ),
            "{r:?}"
        );
        assert!(s.failover.confirmed.is_none());
    }
    // Its own attempt, before completion here: held, applied at completion.
    let (mut s, _) = session(Phase::PartialSigExchange);
    let claim = Body::BroadcastConfirmed {
        reference: "tx".into(),
        attempt: 1,
    };
    assert_eq!(s.on_remote(1, 1, 2, &claim, 100, true), Ok(Vec::new()));
    assert!(s.failover.confirmed.is_none());
    let mut actions = Vec::new();
    s.complete(vec![shared::musig::Signature([0; 64])], &mut actions);
    let by = s.key(1).unwrap();
    assert_eq!(
        actions,
        vec![
            Action::PhaseChanged {
                from: Phase::PartialSigExchange,
                to: Phase::Complete
            },
            Action::BroadcastConfirmed {
                by,
                reference: "tx".into()
            }
        ]
    );
    assert_eq!(s.failover.confirmed, Some((hex::encode(by), "tx".into())));
}

#[test]
fn duplicates_and_sequence_numbers() {
    let (mut s, nonce) = session(Phase::Init);
    let n = Body::NonceShare(vec![nonce]);
    assert!(s.on_remote(1, 1, 2, &n, 100, true).is_ok());
    // The same nonce again: acknowledged (an honest re-send), even with an old sequence.
    assert_eq!(s.on_remote(2, 1, 2, &n, 100, true), Ok(Vec::new()));
    // A different nonce from the same signer: a duplicate contribution.
    let (_, other) = session(Phase::Init);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(4);
    let sk = SecretKey::from_bytes(&[2; 32]).unwrap();
    let (_, fresh) = nonce_gen(&mut rng, &sk, &s.key_agg, &[9; 32]).unwrap();
    assert_ne!(fresh, other);
    let r = s.on_remote(3, 1, 3, &Body::NonceShare(vec![fresh]), 100, true);
    assert!(matches!(r, Err(Reject::Duplicate(_))), "{r:?}");
    // Sequence window: replayed (≤ last) and too far ahead (> last + gap) are refused.
    let (mut s, _) = session(Phase::Init);
    assert!(s.on_remote(1, 1, 5, &Body::Join, 100, true).is_ok());
    let abort = Body::SignatureFinalized(vec![shared::musig::Signature([0; 64])]);
    s.phase = Phase::NonceExchange;
    for (seq, ok) in [(5, false), (4, false), (106, false), (105, true)] {
        let r = s.on_remote(2, 1, seq, &abort, 100, true);
        assert_eq!(r.is_ok(), ok, "sequence {seq}: {r:?}");
    }
}

#[test]
fn blame_in_a_peers_abort_is_reported_as_its_claim_not_as_a_culprit() {
    let (mut s, _) = session(Phase::PartialSigExchange);
    let framed = s.key(2).unwrap();
    let abort = Body::Abort(Abort {
        code: AbortCode::InvalidPartialSignature,
        reason: "bad partial signature".into(),
        culprits: vec![framed],
    });
    s.on_remote(1, 1, 2, &abort, 100, true).unwrap();
    assert_eq!(s.phase, Phase::Aborted);
    let info = s.abort.clone().unwrap();
    assert!(info.culprits.is_empty(), "{info:?}");
    assert!(
        info.reason.contains(&hex::encode(framed))
            && info
                .reason
                .contains("claimed by that signer, not verified here"),
        "{}",
        info.reason
    );
}
