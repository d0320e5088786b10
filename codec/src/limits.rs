//! Decoder limits: bounds on what a bitstream may declare, checked before any allocation.

/// Bounds on what a decoder accepts; checked before any allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest number of elements of one tensor.
    pub max_tensor_elements: u64,
    /// Largest number of elements of all tensors together.
    pub max_total_elements: u64,
    /// Most dimensions of one tensor.
    pub max_dimensions: usize,
    /// Most NNR units in a bitstream.
    pub max_units: usize,
    /// Largest (inflated) topology or quantization payload.
    pub max_topology_bytes: usize,
    /// Largest ratio of declared elements to payload bytes of an NDU (`None`: unlimited).
    /// CABAC codes zero runs at about 0.01 bit per element and row skipping a whole zero row
    /// in one bin, so a pruned layer legitimately reaches ~10^5..10^6 elements per byte; the
    /// default (2^20) only stops absurd declarations.
    pub max_elements_per_payload_byte: Option<u64>,
    /// Decode independent tensors (and block rows with entry points) on several threads.
    pub parallel: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tensor_elements: 1 << 30,
            max_total_elements: 1 << 32,
            max_dimensions: 16,
            max_units: 1 << 20,
            max_topology_bytes: 1 << 30,
            max_elements_per_payload_byte: Some(1 << 20),
            parallel: true,
        }
    }
}
