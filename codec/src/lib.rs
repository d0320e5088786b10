//! nnc-codec
