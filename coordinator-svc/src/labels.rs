//! Metric label sets, apart from the metrics so that the signer client can observe calls
//! without depending on the node.

use prometheus_client::encoding::EncodeLabelSet;

/// Label: a phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// Phase name.
    pub phase: String,
}

/// Label: a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Reason.
    pub reason: String,
}

/// Label: a round or call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabel {
    /// Name.
    pub name: String,
}
