//! Fleets: many models compressed as one resumable, shardable job (`nnzip batch`,
//! docs/batch.md).
//!
//! A manifest ([`manifest`]) lists the models with their `compress` options ([`options`]);
//! each item's work key ([`key`]) covers everything that decides its result. A runner
//! ([`runner`]) takes the items of its shard ([`shard`]) and writes each into `OUT/<id>/`
//! ([`state`]) on a local folder or an object store ([`store`]); [`aggregate`] reads the tree
//! back into a status and a report, one row per id.

pub mod aggregate;
pub mod key;
pub mod manifest;
pub mod options;
pub mod runner;
pub mod shard;
pub mod state;
pub mod store;

use thiserror::Error;

use crate::errors::ErrorClass;

#[derive(Debug, Error)]
pub enum BatchError {
    #[error("{path}{}: {message}", line_suffix(.line))]
    Manifest {
        path: String,
        /// 1-based; 0 for the file as a whole.
        line: usize,
        message: String,
    },
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("shard: {0}")]
    Shard(shard::ShardError),
    /// A storage failure that stops the run, with its class (transient: exit 75).
    #[error("{0}")]
    Store(store::StoreError, ErrorClass),
    #[error("interrupted")]
    Cancelled,
}

fn line_suffix(line: &usize) -> String {
    if *line > 0 {
        format!(" line {line}")
    } else {
        String::new()
    }
}

impl BatchError {
    pub fn class(&self) -> ErrorClass {
        match self {
            BatchError::Manifest { .. } | BatchError::Shard(_) => ErrorClass::Usage,
            BatchError::Read { .. } => ErrorClass::BadInput,
            BatchError::Store(_, c) => *c,
            BatchError::Cancelled => ErrorClass::Interrupted,
        }
    }
}
