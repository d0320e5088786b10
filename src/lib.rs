//! nnzip
