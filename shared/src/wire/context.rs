//! The session context (keys, message, format, tweaks) and the protobuf conversions of its
//! parts: format, election method, tweaks.

use super::*;

/// A validated session context: sorted distinct keys, message, format and tweaks that KeyAgg
/// accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionContext {
    /// Signer keys, sorted ascending, distinct.
    pub signer_keys: Vec<[u8; 33]>,
    /// Message to sign.
    pub message: Vec<u8>,
    /// Output format.
    pub format: SignatureFormat,
    /// Tweaks in order.
    pub tweaks: Vec<Tweak>,
    /// A batch session's messages (2 to [`MAX_BATCH_MESSAGES`]; `message` is then empty), or
    /// empty for one message. See [`SessionContext::items`].
    pub batch: Vec<Vec<u8>>,
}

/// Which contexts a parse accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Accept {
    /// One message (what a signer signs).
    Single,
    /// One message or a batch (a session).
    Session,
    /// A nonce-pool slot: no message.
    Pool,
}

impl SessionContext {
    /// Validate a protobuf context (lengths, points, order, format, tweaks, message length).
    ///
    /// # Errors
    /// The first problem found, naming the field.
    /// A batch context is refused: it is what a signer signs, one message per request.
    pub fn from_pb(pb: &pb::SessionContext) -> Result<Self, WireError> {
        Self::parse(pb, Accept::Single)
    }

    /// Validate a session's context: as [`SessionContext::from_pb`], and a batch of messages
    /// (`batch_messages`) is accepted too.
    ///
    /// # Errors
    /// The first problem found, naming the field.
    pub fn from_pb_session(pb: &pb::SessionContext) -> Result<Self, WireError> {
        Self::parse(pb, Accept::Session)
    }

    /// Validate the context of a nonce-pool slot: as [`SessionContext::from_pb`], but the
    /// message must be empty, in either format (it is chosen when the slot is used).
    ///
    /// # Errors
    /// The first problem found, naming the field.
    pub fn from_pb_pool(pb: &pb::SessionContext) -> Result<Self, WireError> {
        Self::parse(pb, Accept::Pool)
    }

    fn parse(pb: &pb::SessionContext, accept: Accept) -> Result<Self, WireError> {
        let pool = accept == Accept::Pool;
        if pb.signer_keys.is_empty() {
            return Err(WireError::Missing("signer_keys"));
        }
        if pb.signer_keys.len() > MAX_SIGNERS {
            return Err(WireError::TooLong {
                field: "signer_keys",
                max: MAX_SIGNERS,
            });
        }
        let signer_keys = pb
            .signer_keys
            .iter()
            .map(|k| point("signer_keys", k))
            .collect::<Result<Vec<_>, _>>()?;
        if signer_keys
            .windows(2)
            .any(|w| matches!(w, [a, b] if a >= b))
        {
            return Err(WireError::UnsortedKeys);
        }
        let format = format_from_pb(pb.format)?;
        if !pb.batch_messages.is_empty() {
            if accept != Accept::Session {
                return Err(WireError::Batch(
                    "not allowed here (a signer signs one message per request; a nonce-pool slot has none)",
                ));
            }
            Self::check_batch(format, &pb.message, &pb.batch_messages)?;
            if pb.batch_messages.len() * pb.signer_keys.len() > MAX_SESSION_VALUES {
                return Err(WireError::TooLong {
                    field: "batch_messages (signers × messages)",
                    max: MAX_SESSION_VALUES,
                });
            }
        }
        match format {
            _ if !pb.batch_messages.is_empty() => {}
            _ if pool && !pb.message.is_empty() => {
                return Err(WireError::Length {
                    field: "message",
                    expected: 0,
                    actual: pb.message.len(),
                });
            }
            _ if pool => {}
            SignatureFormat::Lotus if pb.message.len() != 32 => {
                return Err(WireError::Length {
                    field: "message",
                    expected: 32,
                    actual: pb.message.len(),
                });
            }
            SignatureFormat::Bip340 if pb.message.len() > MAX_BIP340_MESSAGE_BYTES => {
                return Err(WireError::TooLong {
                    field: "message",
                    max: MAX_BIP340_MESSAGE_BYTES,
                });
            }
            _ => {}
        }
        if pb.tweaks.len() > MAX_TWEAKS {
            return Err(WireError::TooLong {
                field: "tweaks",
                max: MAX_TWEAKS,
            });
        }
        let tweaks = pb
            .tweaks
            .iter()
            .map(tweak_from_pb)
            .collect::<Result<Vec<_>, _>>()?;
        let ctx = SessionContext {
            signer_keys,
            message: pb.message.clone(),
            format,
            tweaks,
            batch: pb.batch_messages.clone(),
        };
        ctx.key_agg().map_err(WireError::Context)?;
        Ok(ctx)
    }

    fn check_batch(
        format: SignatureFormat,
        message: &[u8],
        batch: &[Vec<u8>],
    ) -> Result<(), WireError> {
        if !message.is_empty() {
            return Err(WireError::Batch(
                "message must be empty when batch_messages is set",
            ));
        }
        if batch.len() < 2 {
            return Err(WireError::Batch(
                "a batch holds at least 2 messages (one message goes in message)",
            ));
        }
        if batch.len() > MAX_BATCH_MESSAGES {
            return Err(WireError::TooLong {
                field: "batch_messages",
                max: MAX_BATCH_MESSAGES,
            });
        }
        if batch.iter().map(Vec::len).sum::<usize>() > MAX_BATCH_BYTES {
            return Err(WireError::TooLong {
                field: "batch_messages (bytes in all)",
                max: MAX_BATCH_BYTES,
            });
        }
        for m in batch {
            match format {
                SignatureFormat::Lotus if m.len() != 32 => {
                    return Err(WireError::Length {
                        field: "batch_messages",
                        expected: 32,
                        actual: m.len(),
                    });
                }
                SignatureFormat::Bip340 if m.len() > MAX_BIP340_MESSAGE_BYTES => {
                    return Err(WireError::TooLong {
                        field: "batch_messages",
                        max: MAX_BIP340_MESSAGE_BYTES,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// How many messages the session signs (1, or the batch's length).
    pub fn count(&self) -> usize {
        self.batch.len().max(1)
    }

    /// Message `i` (the only message when not a batch).
    pub fn message_at(&self, i: usize) -> Option<&[u8]> {
        if self.batch.is_empty() {
            (i == 0).then_some(self.message.as_slice())
        } else {
            self.batch.get(i).map(Vec::as_slice)
        }
    }

    /// Every message in order.
    pub fn messages(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.count()).filter_map(|i| self.message_at(i))
    }

    /// The id of a session of this context created at `created_ms` with `entropy`:
    /// [`SessionId::derive`] of the message, or for a batch [`SessionId::derive_batch`] of a
    /// digest of every message, length-prefixed and in order.
    pub fn session_id(&self, created_ms: i64, entropy: &[u8; 16]) -> SessionId {
        if self.batch.is_empty() {
            return SessionId::derive(&self.signer_keys, &self.message, created_ms, entropy);
        }
        let mut h = Sha256::new();
        h.update(b"musig2/v1/batch-messages");
        for m in &self.batch {
            h.update(u32::try_from(m.len()).unwrap_or(u32::MAX).to_be_bytes());
            h.update(m);
        }
        SessionId::derive_batch(&self.signer_keys, &h.finalize().into(), created_ms, entropy)
    }

    /// What the signer is asked to sign for each message of the session with id `id`, in
    /// message order: the signer's session id and a context holding that message alone. One
    /// message: `id` and this context. A batch: [`SessionId::batch_item`] and message `i`.
    pub fn items(&self, id: SessionId) -> Vec<(SessionId, SessionContext)> {
        if self.batch.is_empty() {
            return vec![(id, self.clone())];
        }
        (0..self.batch.len())
            .map(|i| {
                let item = SessionContext {
                    signer_keys: self.signer_keys.clone(),
                    message: self.batch.get(i).cloned().unwrap_or_default(),
                    format: self.format,
                    tweaks: self.tweaks.clone(),
                    batch: Vec::new(),
                };
                (id.batch_item(u32::try_from(i).unwrap_or(u32::MAX)), item)
            })
            .collect()
    }

    /// The signer's session ids of [`SessionContext::items`].
    pub fn item_ids(&self, id: SessionId) -> Vec<SessionId> {
        if self.batch.is_empty() {
            return vec![id];
        }
        (0..self.batch.len())
            .map(|i| id.batch_item(u32::try_from(i).unwrap_or(u32::MAX)))
            .collect()
    }

    /// KeyAgg with the tweaks applied.
    ///
    /// # Errors
    /// Tweak errors (out of range, infinity, unsupported for the format).
    pub fn key_agg(&self) -> Result<KeyAggContext, musig::Error> {
        type Input = (SignatureFormat, Vec<[u8; 33]>, Vec<Tweak>);
        /// KeyAgg of recent key sets: a session's context is aggregated when it is validated,
        /// when its session is built and for every signer call, always to the same result
        /// (a twentieth of a coordinator's CPU under load). Keyed by the full input; only
        /// successes are kept; at most 256, then it starts over.
        static CACHE: super::memo::Memo<Input, KeyAggContext> = super::memo::Memo::new(256);
        let input: Input = (self.format, self.signer_keys.clone(), self.tweaks.clone());
        if let Some(ctx) = CACHE.get(&input) {
            return Ok(ctx);
        }
        let ctx = KeyAggContext::with_tweaks(self.format, &self.signer_keys, &self.tweaks)?;
        CACHE.insert(input, ctx.clone());
        Ok(ctx)
    }

    /// The protobuf form.
    pub fn to_pb(&self) -> pb::SessionContext {
        pb::SessionContext {
            signer_keys: self.signer_keys.iter().map(|k| k.to_vec()).collect(),
            message: self.message.clone(),
            format: format_to_pb(self.format) as i32,
            tweaks: self.tweaks.iter().map(tweak_to_pb).collect(),
            batch_messages: self.batch.clone(),
        }
    }

    /// SHA-256 of the canonical encoding: the value a signer binds its nonce to.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.to_pb().encode_to_vec()).into()
    }

    /// What a pooled nonce (one-round signing) is bound to: the key set, format and tweaks,
    /// not the message. Domain-separated, so it never equals [`SessionContext::hash`] of any
    /// context (a pooled nonce cannot pass for a session's nonce, nor the reverse).
    pub fn pool_hash(&self) -> [u8; 32] {
        let mut pb = self.to_pb();
        pb.message.clear();
        pb.batch_messages.clear();
        let mut h = Sha256::new();
        h.update(b"musig2/v1/pool-slot");
        h.update(Sha256::digest(pb.encode_to_vec()));
        h.finalize().into()
    }
}

/// Convert a protobuf format.
///
/// # Errors
/// [`WireError::InvalidEnum`] for UNSPECIFIED or unknown values.
pub fn format_from_pb(v: i32) -> Result<SignatureFormat, WireError> {
    match pb::SignatureFormat::try_from(v) {
        Ok(pb::SignatureFormat::Bip340) => Ok(SignatureFormat::Bip340),
        Ok(pb::SignatureFormat::Lotus) => Ok(SignatureFormat::Lotus),
        _ => Err(WireError::InvalidEnum("format")),
    }
}

/// The protobuf format.
pub fn format_to_pb(f: SignatureFormat) -> pb::SignatureFormat {
    match f {
        SignatureFormat::Bip340 => pb::SignatureFormat::Bip340,
        SignatureFormat::Lotus => pb::SignatureFormat::Lotus,
    }
}

/// Convert a protobuf election method (UNSPECIFIED → `default`).
///
/// # Errors
/// [`WireError::InvalidEnum`] for unknown values.
pub fn election_from_pb(v: i32, default: ElectionMethod) -> Result<ElectionMethod, WireError> {
    Ok(match pb::ElectionMethod::try_from(v) {
        Ok(pb::ElectionMethod::Unspecified) => default,
        Ok(pb::ElectionMethod::Lexicographic) => ElectionMethod::Lexicographic,
        Ok(pb::ElectionMethod::HashBased) => ElectionMethod::HashBased,
        Ok(pb::ElectionMethod::FirstSigner) => ElectionMethod::FirstSigner,
        Ok(pb::ElectionMethod::LastSigner) => ElectionMethod::LastSigner,
        Err(_) => return Err(WireError::InvalidEnum("election_method")),
    })
}

/// The protobuf election method.
pub fn election_to_pb(m: ElectionMethod) -> pb::ElectionMethod {
    match m {
        ElectionMethod::Lexicographic => pb::ElectionMethod::Lexicographic,
        ElectionMethod::HashBased => pb::ElectionMethod::HashBased,
        ElectionMethod::FirstSigner => pb::ElectionMethod::FirstSigner,
        ElectionMethod::LastSigner => pb::ElectionMethod::LastSigner,
    }
}

fn tweak_from_pb(t: &pb::Tweak) -> Result<Tweak, WireError> {
    use pb::tweak::Kind;
    let scalar = |b: &[u8]| -> Result<[u8; 32], WireError> {
        let a: [u8; 32] = arr("tweak", b)?;
        PartialSignature::from_bytes(&a).map_err(|_| WireError::InvalidScalar("tweak"))?;
        Ok(a)
    };
    match &t.kind {
        None => Err(WireError::Missing("tweak.kind")),
        Some(Kind::Plain(b)) => Ok(Tweak::Plain(scalar(b)?)),
        Some(Kind::Xonly(b)) => Ok(Tweak::XOnly(scalar(b)?)),
        Some(Kind::Taproot(tr)) => Ok(Tweak::Taproot {
            merkle_root: if tr.merkle_root.is_empty() {
                None
            } else {
                Some(arr("merkle_root", &tr.merkle_root)?)
            },
        }),
    }
}

fn tweak_to_pb(t: &Tweak) -> pb::Tweak {
    use pb::tweak::Kind;
    pb::Tweak {
        kind: Some(match t {
            Tweak::Plain(b) => Kind::Plain(b.to_vec()),
            Tweak::XOnly(b) => Kind::Xonly(b.to_vec()),
            Tweak::Taproot { merkle_root } => Kind::Taproot(pb::TaprootTweak {
                merkle_root: merkle_root.map(|r| r.to_vec()).unwrap_or_default(),
            }),
        }),
    }
}
