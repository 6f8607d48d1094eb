//! Compiling `[policy]` into a [`Policy`]: every rule checked, every problem reported with the
//! rule and field it concerns.

use std::collections::HashSet;
use std::sync::Mutex;

use super::*;

fn key_hex(s: &str) -> Option<[u8; 33]> {
    hex::decode(s).ok()?.try_into().ok()
}

fn output_key_hex(s: &str) -> Option<OutputKey> {
    let b = hex::decode(s).ok()?;
    match b.len() {
        33 => b.try_into().ok().map(OutputKey::Exact),
        32 => b.try_into().ok().map(OutputKey::XOnly),
        _ => None,
    }
}

const KINDS: &str = "allowed_formats, allowed_key_sets, allowed_output_keys, allowed_tweaks, rate_limit, max_message_length, attest_peer, nonce_pool";

impl PolicyConfig {
    /// Every problem, each naming the rule and field.
    pub fn validate(&self) -> Vec<String> {
        match self.compile() {
            Ok(_) => Vec::new(),
            Err(e) => e,
        }
    }

    /// Build the policy with the default built-in attestation limit.
    ///
    /// # Errors
    /// Every problem found.
    pub fn compile(&self) -> Result<Policy, Vec<String>> {
        self.compile_with(AttestLimit::default())
    }

    /// Build the policy.
    ///
    /// # Errors
    /// Every problem found.
    pub fn compile_with(&self, attest_limit: AttestLimit) -> Result<Policy, Vec<String>> {
        let mut errs = Vec::new();
        let mut ids = HashSet::new();
        let mut rules = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            let at = format!("policy.rules[{i}] ({})", r.id);
            if r.id.is_empty() {
                errs.push(format!("policy.rules[{i}].id: must not be empty"));
            }
            if !ids.insert(r.id.clone()) {
                errs.push(format!("{at}.id: duplicate rule id"));
            }
            let keys: Vec<[u8; 33]> = r
                .keys
                .iter()
                .filter_map(|k| {
                    let parsed = key_hex(k);
                    if parsed.is_none() {
                        errs.push(format!("{at}.keys: {k:?} is not a 33-byte hex key"));
                    }
                    parsed
                })
                .collect();
            let used = [
                ("formats", r.formats.is_some()),
                ("key_sets", r.key_sets.is_some()),
                ("aggregate_keys", r.aggregate_keys.is_some()),
                ("output_keys", r.output_keys.is_some()),
                ("tweaks", r.tweaks.is_some()),
                ("max_signatures", r.max_signatures.is_some()),
                ("window_secs", r.window_secs.is_some()),
                ("max_bytes", r.max_bytes.is_some()),
                ("max_attestations", r.max_attestations.is_some()),
                ("max_ttl_secs", r.max_ttl_secs.is_some()),
            ];
            let allowed: &[&str] = match r.kind.as_str() {
                "allowed_formats" => &["formats"],
                "allowed_key_sets" | "nonce_pool" => &["key_sets", "aggregate_keys"],
                "allowed_output_keys" => &["output_keys"],
                "allowed_tweaks" => &["tweaks"],
                "rate_limit" => &["max_signatures", "window_secs"],
                "max_message_length" => &["max_bytes"],
                "attest_peer" => &["max_attestations", "window_secs", "max_ttl_secs"],
                other => {
                    errs.push(format!("{at}.kind: unknown kind {other:?} ({KINDS})"));
                    continue;
                }
            };
            for (field, present) in used {
                if present && !allowed.contains(&field) {
                    errs.push(format!("{at}.{field}: not a field of kind {}", r.kind));
                }
            }
            let Some(kind) = compile_kind(r, &at, &mut errs) else {
                continue;
            };
            let message = r.message.clone().unwrap_or_else(|| default_message(&kind));
            rules.push(Rule {
                id: r.id.clone(),
                message,
                warn_only: r.warn_only,
                keys,
                kind,
            });
        }
        if self.default_deny && self.warn_only {
            errs.push("policy.default_deny: cannot be combined with policy.warn_only".into());
        }
        if errs.is_empty() {
            Ok(Policy {
                warn_only: self.warn_only,
                default_deny: self.default_deny,
                rules,
                attest_limit,
                counters: Mutex::new(Counters::default()),
            })
        } else {
            Err(errs)
        }
    }
}

fn secs_to_ms(s: u64) -> i64 {
    i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
}

fn compile_kind(r: &RuleConfig, at: &str, errs: &mut Vec<String>) -> Option<Kind> {
    Some(match r.kind.as_str() {
        "allowed_formats" => {
            let list = r.formats.clone().unwrap_or_default();
            if list.is_empty() {
                errs.push(format!("{at}.formats: list at least one format"));
            }
            Kind::Formats(
                list.iter()
                    .filter_map(|f| {
                        let p = f.parse().ok();
                        if p.is_none() {
                            errs.push(format!("{at}.formats: unknown format {f:?}"));
                        }
                        p
                    })
                    .collect(),
            )
        }
        "allowed_key_sets" | "nonce_pool" => {
            let mut sets = Vec::new();
            for set in r.key_sets.clone().unwrap_or_default() {
                let mut parsed: Vec<[u8; 33]> = Vec::new();
                for k in &set {
                    match key_hex(k) {
                        Some(k) => parsed.push(k),
                        None => errs.push(format!("{at}.key_sets: {k:?} is not a 33-byte hex key")),
                    }
                }
                parsed.sort_unstable();
                sets.push(parsed);
            }
            let mut aggregates = Vec::new();
            for k in r.aggregate_keys.clone().unwrap_or_default() {
                match key_hex(&k) {
                    Some(k) => aggregates.push(k),
                    None => errs.push(format!(
                        "{at}.aggregate_keys: {k:?} is not a 33-byte hex key"
                    )),
                }
            }
            if sets.is_empty() && aggregates.is_empty() {
                errs.push(format!("{at}: give key_sets and/or aggregate_keys"));
            }
            if r.kind == "nonce_pool" {
                Kind::NoncePool { sets, aggregates }
            } else {
                Kind::KeySets { sets, aggregates }
            }
        }
        "allowed_output_keys" => {
            let list = r.output_keys.clone().unwrap_or_default();
            if list.is_empty() {
                errs.push(format!("{at}.output_keys: list at least one key"));
            }
            Kind::OutputKeys(
                list.iter()
                    .filter_map(|k| {
                        let p = output_key_hex(k);
                        if p.is_none() {
                            errs.push(format!(
                                "{at}.output_keys: {k:?} is neither a 33-byte nor a 32-byte x-only hex key"
                            ));
                        }
                        p
                    })
                    .collect(),
            )
        }
        "allowed_tweaks" => {
            let list = r.tweaks.clone().unwrap_or_default();
            if list.is_empty() {
                errs.push(format!(
                    "{at}.tweaks: list at least one of none, plain, xonly, taproot"
                ));
            }
            Kind::Tweaks(
                list.iter()
                    .filter_map(|t| {
                        let p = TweakKind::parse(t);
                        if p.is_none() {
                            errs.push(format!(
                                "{at}.tweaks: unknown tweak kind {t:?} (none, plain, xonly, taproot)"
                            ));
                        }
                        p
                    })
                    .collect(),
            )
        }
        "rate_limit" => match (r.max_signatures, r.window_secs) {
            (Some(max), Some(w)) if max > 0 && w > 0 => Kind::RateLimit {
                max,
                window_ms: secs_to_ms(w),
            },
            _ => {
                errs.push(format!(
                    "{at}: max_signatures and window_secs must both be positive"
                ));
                return None;
            }
        },
        "attest_peer" => {
            let rate = match (r.max_attestations, r.window_secs) {
                (Some(max), Some(w)) if max > 0 && w > 0 => Some((max, secs_to_ms(w))),
                (None, None) => None,
                _ => {
                    errs.push(format!(
                        "{at}: max_attestations and window_secs must both be positive, or both absent"
                    ));
                    return None;
                }
            };
            let max_ttl_ms = match r.max_ttl_secs {
                Some(0) => {
                    errs.push(format!("{at}.max_ttl_secs: must be positive"));
                    return None;
                }
                s => s.map(secs_to_ms),
            };
            if rate.is_none() && max_ttl_ms.is_none() {
                errs.push(format!(
                    "{at}: give max_attestations with window_secs, and/or max_ttl_secs"
                ));
                return None;
            }
            Kind::Attest { rate, max_ttl_ms }
        }
        _ => match r.max_bytes {
            Some(n) => Kind::MaxMessage(n),
            None => {
                errs.push(format!("{at}.max_bytes: required"));
                return None;
            }
        },
    })
}

fn default_message(kind: &Kind) -> String {
    let join = |v: Vec<&str>| v.join(", ");
    match kind {
        Kind::Formats(f) => format!(
            "format not allowed (allowed: {})",
            join(f.iter().map(|f| f.as_str()).collect())
        ),
        Kind::KeySets { .. } => "co-signer set / aggregate key not allowed".into(),
        Kind::NoncePool { .. } => {
            "pooled nonces (one-round signing) are not allowed for this key set".into()
        }
        Kind::OutputKeys(_) => "output key (after tweaks) not allowed".into(),
        Kind::Tweaks(t) => format!(
            "tweak not allowed (allowed: {})",
            join(t.iter().map(|t| t.as_str()).collect())
        ),
        Kind::RateLimit { max, window_ms } => {
            format!("more than {max} signatures in {} s", window_ms / 1000)
        }
        Kind::MaxMessage(n) => format!("message longer than {n} bytes"),
        Kind::Attest { .. } => "attestation not allowed (rate or lifetime)".into(),
    }
}
