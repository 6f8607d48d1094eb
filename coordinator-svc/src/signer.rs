//! Client of the party's signer (mutual TLS). The coordinator holds no key: every nonce,
//! partial signature and attestation comes from here.

use std::path::PathBuf;
use std::time::Duration;

use musig2_proto::v1::signer_service_client::SignerServiceClient;
use musig2_proto::v1::{
    AttestPeerRequest, GenerateNonceRequest, ListKeysRequest, PartialSignRequest,
    ReleaseNonceRequest,
};
use shared::election::SessionId;
use shared::musig::{PartialSignature, PubNonce};
use shared::wire::{SessionContext, pb};
use tonic::transport::{Channel, Endpoint};

/// Where the signer is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct SignerEndpoint {
    /// `https://host:port`.
    pub url: String,
    /// Name on the signer's certificate.
    pub server_name: String,
    /// CA of the signer's certificate.
    pub ca: PathBuf,
    /// Our client certificate.
    pub cert: PathBuf,
    /// Our client key.
    pub key: PathBuf,
}

/// A connected signer client (cheap to clone).
#[derive(Debug, Clone)]
pub struct SignerClient {
    client: SignerServiceClient<Channel>,
    latency: Option<
        prometheus_client::metrics::family::Family<
            crate::labels::NameLabel,
            prometheus_client::metrics::histogram::Histogram,
        >,
    >,
}

/// Signer call failures.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// Could not connect or configure TLS.
    #[error("signer connection: {0}")]
    Connect(String),
    /// The signer refused or failed.
    #[error("signer {code:?}: {message}")]
    Status {
        /// gRPC code.
        code: tonic::Code,
        /// Message.
        message: String,
    },
    /// The signer answered something malformed.
    #[error("signer answered malformed data: {0}")]
    Malformed(&'static str),
}

impl From<tonic::Status> for SignerError {
    fn from(s: tonic::Status) -> Self {
        SignerError::Status {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

impl SignerClient {
    /// Connect lazily (the channel reconnects on its own).
    ///
    /// # Errors
    /// Unreadable certificate files or a bad URL.
    pub fn connect_lazy(ep: &SignerEndpoint) -> Result<Self, SignerError> {
        let connect_err = |e: String| SignerError::Connect(e);
        // Our client certificate is re-read when its files change (cert-manager renewals), so
        // new connections present the new one; TCP_NODELAY on the dialled socket.
        let tls = musig2_proto::transport::reloading_client_config(&ep.ca, &ep.cert, &ep.key)
            .map_err(|e| connect_err(e.to_string()))?;
        let uri: tonic::transport::Uri = ep
            .url
            .parse()
            .map_err(|e: http::uri::InvalidUri| connect_err(e.to_string()))?;
        let host = uri
            .host()
            .ok_or_else(|| connect_err(format!("{}: no host", ep.url)))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let server_name = ep.server_name.clone();
        let dial_host = host.clone();
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            musig2_proto::transport::connect_tls(
                tls.clone(),
                server_name.clone(),
                dial_host.clone(),
                port,
            )
        });
        // The connector does TLS itself; tonic only sees an `http` URI (the scheme is not used
        // for anything else on an already encrypted connection).
        let plain_uri = if host.contains(':') {
            format!("http://[{host}]:{port}")
        } else {
            format!("http://{host}:{port}")
        };
        let channel = Endpoint::from_shared(plain_uri)
            .map_err(|e| connect_err(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect_with_connector_lazy(connector);
        Ok(SignerClient {
            client: SignerServiceClient::new(channel),
            latency: None,
        })
    }

    /// Record call latencies in `family` (label: the call name).
    pub fn with_metrics(
        mut self,
        family: prometheus_client::metrics::family::Family<
            crate::labels::NameLabel,
            prometheus_client::metrics::histogram::Histogram,
        >,
    ) -> Self {
        self.latency = Some(family);
        self
    }

    fn observe(&self, name: &str, started: std::time::Instant) {
        if let Some(f) = &self.latency {
            f.get_or_create(&crate::labels::NameLabel { name: name.into() })
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// Keys the signer holds.
    ///
    /// # Errors
    /// [`SignerError`].
    pub async fn list_keys(&self) -> Result<Vec<[u8; 33]>, SignerError> {
        let r = self
            .client
            .clone()
            .list_keys(ListKeysRequest {})
            .await?
            .into_inner();
        r.keys
            .iter()
            .map(|k| {
                k.public_key
                    .as_slice()
                    .try_into()
                    .map_err(|_| SignerError::Malformed("public key"))
            })
            .collect()
    }

    /// Attest that `peer_id` speaks for `key` until `expires_at_ms`.
    ///
    /// # Errors
    /// [`SignerError`].
    pub async fn attest(
        &self,
        key: &[u8; 33],
        peer_id: &[u8],
        expires_at_ms: i64,
    ) -> Result<[u8; 64], SignerError> {
        let r = self
            .client
            .clone()
            .attest_peer(AttestPeerRequest {
                public_key: key.to_vec(),
                peer_id: peer_id.to_vec(),
                expires_at_ms,
            })
            .await?
            .into_inner();
        r.signature
            .as_slice()
            .try_into()
            .map_err(|_| SignerError::Malformed("attestation signature"))
    }

    /// Attestations of `peer_id` for each of `keys` until `expires_at_ms`.
    ///
    /// # Errors
    /// [`SignerError`] of the first key the signer refused.
    pub async fn attestations(
        &self,
        keys: &[[u8; 33]],
        peer_id: &[u8],
        expires_at_ms: i64,
    ) -> Result<Vec<pb::PeerAttestation>, SignerError> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let signature = self.attest(k, peer_id, expires_at_ms).await?;
            out.push(pb::PeerAttestation {
                signer_key: k.to_vec(),
                peer_id: peer_id.to_vec(),
                expires_at_ms,
                signature: signature.to_vec(),
            });
        }
        Ok(out)
    }

    /// A nonce for (session, key, context); `pooled`: a nonce-pool slot's (no message).
    ///
    /// # Errors
    /// [`SignerError`].
    pub async fn nonce(
        &self,
        key: &[u8; 33],
        session: &SessionId,
        ctx: &SessionContext,
        pooled: bool,
    ) -> Result<PubNonce, SignerError> {
        let started = std::time::Instant::now();
        let r = self
            .client
            .clone()
            .generate_nonce(GenerateNonceRequest {
                public_key: key.to_vec(),
                session_id: session.0.to_vec(),
                context: Some(ctx.to_pb()),
                pooled,
            })
            .await?
            .into_inner();
        self.observe("generate_nonce", started);
        PubNonce::from_slice(&r.public_nonce).map_err(|_| SignerError::Malformed("public nonce"))
    }

    /// A nonce for each message of the session `session` ([`SessionContext::items`]: one
    /// request per message, all in flight at once), in message order.
    ///
    /// # Errors
    /// The first [`SignerError`] (after every request was answered).
    pub async fn nonces(
        &self,
        key: &[u8; 33],
        session: &SessionId,
        ctx: &SessionContext,
        pooled: bool,
    ) -> Result<Vec<PubNonce>, SignerError> {
        let items = ctx.items(*session);
        // Every request is answered before the first refusal is returned: none is still in
        // flight when the caller releases the session's nonces.
        futures::future::join_all(
            items
                .iter()
                .map(|(item, c)| self.nonce(key, item, c, pooled)),
        )
        .await
        .into_iter()
        .collect()
    }

    /// A partial signature for each message of the session whose nonces are filed under
    /// `session`, given every signer's nonces per message (in message order, then key order).
    ///
    /// # Errors
    /// The first [`SignerError`]; a count of nonce lists that is not the count of messages.
    pub async fn partial_signs(
        &self,
        key: &[u8; 33],
        session: &SessionId,
        ctx: &SessionContext,
        nonces: &[Vec<PubNonce>],
    ) -> Result<Vec<PartialSignature>, SignerError> {
        let items = ctx.items(*session);
        if items.len() != nonces.len() {
            return Err(SignerError::Malformed("nonce lists per message"));
        }
        futures::future::join_all(
            items
                .iter()
                .zip(nonces)
                .map(|((item, c), n)| self.partial_sign(key, item, c, n)),
        )
        .await
        .into_iter()
        .collect()
    }

    /// Destroy the unused secret nonce of (session, key): the session will never sign. True
    /// when one was destroyed.
    ///
    /// # Errors
    /// [`SignerError`].
    pub async fn release_nonce(
        &self,
        key: &[u8; 33],
        session: &SessionId,
    ) -> Result<bool, SignerError> {
        let started = std::time::Instant::now();
        let r = self
            .client
            .clone()
            .release_nonce(ReleaseNonceRequest {
                public_key: key.to_vec(),
                session_id: session.0.to_vec(),
            })
            .await?
            .into_inner();
        self.observe("release_nonce", started);
        Ok(r.released)
    }

    /// A partial signature given every public nonce (in key order).
    ///
    /// # Errors
    /// [`SignerError`].
    pub async fn partial_sign(
        &self,
        key: &[u8; 33],
        session: &SessionId,
        ctx: &SessionContext,
        nonces: &[PubNonce],
    ) -> Result<PartialSignature, SignerError> {
        let started = std::time::Instant::now();
        let r = self
            .client
            .clone()
            .partial_sign(PartialSignRequest {
                public_key: key.to_vec(),
                session_id: session.0.to_vec(),
                context: Some(ctx.to_pb()),
                public_nonces: nonces.iter().map(|n| n.to_bytes().to_vec()).collect(),
            })
            .await?
            .into_inner();
        self.observe("partial_sign", started);
        PartialSignature::from_slice(&r.partial_signature)
            .map_err(|_| SignerError::Malformed("partial signature"))
    }
}
