//! The example configuration parses; bad values are refused naming their key.
#![allow(clippy::unwrap_used, missing_docs)]

use coordinator_svc::config::Config;

fn files(dir: &std::path::Path) -> Vec<(String, String)> {
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    for f in [
        "ca.pem",
        "coordinator-client.pem",
        "coordinator-client.key",
        "coordinator.pem",
        "coordinator.key",
    ] {
        std::fs::write(dir.join("tls").join(f), "x").unwrap();
    }
    Vec::new()
}

#[test]
fn example_parses_and_errors_name_keys() {
    let dir = tempfile::tempdir().unwrap();
    let env = files(dir.path());
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/coordinator.example.toml"
    ))
    .unwrap();
    let c = Config::parse(&text, &env, dir.path()).unwrap();
    let n = c.node_config().unwrap();
    assert_eq!(n.session_timeout.as_secs(), 7200);
    assert_eq!(n.broadcast_timeout.as_secs(), 300);
    assert_eq!(n.stuck_timeout.as_secs(), 600);
    assert_eq!(n.cleanup_interval.as_secs(), 60);
    assert_eq!(n.max_sequence_gap, 100);
    assert_eq!(n.net.dht_protocol, "/lotus/kad/1.0.0");
    assert_eq!(n.attestation_ttl.as_secs(), 7 * 86400);
    assert_eq!(n.attestation_renew_before.as_secs(), 86400);
    for (over, value, key) in [
        // Renewal at or after expiry, a lifetime past the protocol's 30 days, one too short.
        (
            "ATTESTATION_RENEW_BEFORE_MS",
            "604800000",
            "attestation_renew_before_ms",
        ),
        ("ATTESTATION_TTL_MS", "2592000001", "attestation_ttl_ms"),
        ("ATTESTATION_TTL_MS", "999", "attestation_ttl_ms"),
        // No room for the sequence numbers a restart skips.
        ("MAX_SEQUENCE_GAP", "3", "max_sequence_gap: at least 4"),
        ("SESSION_RETENTION_MS", "1000", "session_retention_ms"),
        (
            "SESSION_RESOURCE_TYPE",
            "\"Has Spaces\"",
            "session_resource_type",
        ),
        (
            "SESSION_RESOURCE_TYPE",
            "\"musig2-signer\"",
            "session_resource_type",
        ),
    ] {
        let e = Config::parse(
            &text,
            &[(format!("MUSIG2_COORDINATOR__{over}"), value.to_string())],
            dir.path(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(key), "{over}={value}: {e}");
    }
    for (over, key) in [
        ("MUSIG2_COORDINATOR__ELECTION_METHOD", "election_method"),
        ("MUSIG2_COORDINATOR__MAX_SEQUENCE_GAP", "max_sequence_gap"),
        ("MUSIG2_COORDINATOR__DHT_PROTOCOL", "dht_protocol"),
        ("MUSIG2_COORDINATOR__SIGNER__URL", "signer.url"),
    ] {
        let bad = if key == "max_sequence_gap" {
            "0"
        } else {
            "\"nonsense\""
        };
        let e = Config::parse(&text, &[(over.to_string(), bad.to_string())], dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{over}: {e}");
    }
    let e = Config::parse(&format!("{text}\nunknown_key = 1\n"), &[], dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field"), "{e}");
    let e = Config::parse(
        &text.replace(
            "bootstrap_peers = []",
            "bootstrap_peers = [\"/ip4/1.2.3.4/tcp/1\"]",
        ),
        &[],
        dir.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("bootstrap_peers[0]"), "{e}");
}
