//! Which items a process takes: `I/N` by a stable hash of each id (the same on every machine
//! and release, so shards never overlap and their union is the manifest), or read from the
//! scheduler's environment (Kubernetes Indexed Jobs, Slurm job arrays).

use sha2::{Digest, Sha256};

use thiserror::Error;

use super::BatchError;

/// Why no shard could be taken; the messages name the values, not how the command sets them.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ShardError {
    #[error("'{0}' is not I/N with 0 <= I < N")]
    NotIndexOfCount(String),
    #[error("{name}={value} is not a non-negative integer")]
    NotInteger { name: String, value: String },
    #[error(
        "JOB_COMPLETION_INDEX is set but the shard count is not: give it, or set \
         NNZIP_SHARD_COUNT (the Job's completions)"
    )]
    CountMissing,
    #[error("SLURM_ARRAY_TASK_ID is set but {0} is not")]
    SlurmMissing(String),
    #[error(
        "the Slurm array is not contiguous (min {min}, max {max}, count {count}, step {step}): \
         submit it as the array 0-{last} so every task is a shard",
        last = count.saturating_sub(1)
    )]
    NotContiguous {
        min: u64,
        max: u64,
        count: u64,
        step: u64,
    },
    #[error("the shard count given ({given}) differs from SLURM_ARRAY_TASK_COUNT={slurm}")]
    CountDiffers { given: u64, slurm: u64 },
    #[error(
        "a shard from the scheduler needs JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or \
         SLURM_ARRAY_TASK_ID (Slurm job array)"
    )]
    NoScheduler,
}

/// Shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// `I/N` with `0 <= I < N`.
    pub fn parse(s: &str) -> Result<Shard, BatchError> {
        let bad = || BatchError::Shard(ShardError::NotIndexOfCount(s.to_string()));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u64 = i.trim().parse().map_err(|_| bad())?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// The shard from the environment: `JOB_COMPLETION_INDEX` (Kubernetes; the count from
    /// `count` or `NNZIP_SHARD_COUNT`, since Kubernetes gives none), else
    /// `SLURM_ARRAY_TASK_ID` with `SLURM_ARRAY_TASK_MIN`/`MAX`/`COUNT`/`STEP` (contiguous
    /// arrays only: the index is the task id less the minimum).
    pub fn auto(
        env: &dyn Fn(&str) -> Option<String>,
        count: Option<u64>,
    ) -> Result<Shard, BatchError> {
        let num = |name: &str| -> Result<Option<u64>, BatchError> {
            match env(name) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| {
                    BatchError::Shard(ShardError::NotInteger {
                        name: name.to_string(),
                        value: v,
                    })
                }),
            }
        };
        if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let count = match count {
                Some(c) => c,
                None => {
                    num("NNZIP_SHARD_COUNT")?.ok_or(BatchError::Shard(ShardError::CountMissing))?
                }
            };
            return Shard::parse(&format!("{index}/{count}"));
        }
        if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let need = |name: &str| {
                num(name)?
                    .ok_or_else(|| BatchError::Shard(ShardError::SlurmMissing(name.to_string())))
            };
            let (min, max, n) = (
                need("SLURM_ARRAY_TASK_MIN")?,
                need("SLURM_ARRAY_TASK_MAX")?,
                need("SLURM_ARRAY_TASK_COUNT")?,
            );
            let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1);
            if step != 1 || max < min || max - min + 1 != n {
                return Err(BatchError::Shard(ShardError::NotContiguous {
                    min,
                    max,
                    count: n,
                    step,
                }));
            }
            if let Some(c) = count {
                if c != n {
                    return Err(BatchError::Shard(ShardError::CountDiffers {
                        given: c,
                        slurm: n,
                    }));
                }
            }
            return Shard::parse(&format!("{}/{n}", id.saturating_sub(min)));
        }
        Err(BatchError::Shard(ShardError::NoScheduler))
    }

    /// Whether `id` falls in this shard.
    pub fn contains(&self, id: &str) -> bool {
        let d = Sha256::digest(id.as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        u64::from_be_bytes(b) % self.count == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(a, _)| *a == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn shards_partition_the_ids() {
        let ids: Vec<String> = (0..200).map(|i| format!("model-{i}")).collect();
        let n = 3;
        let mut counts = [0usize; 3];
        for id in &ids {
            let owners: Vec<u64> = (0..n)
                .filter(|&i| Shard { index: i, count: n }.contains(id))
                .collect();
            assert_eq!(owners.len(), 1, "{id}");
            counts[owners[0] as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 40), "{counts:?}");
        assert!(Shard::parse("3/3").is_err() && Shard::parse("1/0").is_err());
        assert_eq!(Shard::parse("2/5").unwrap(), Shard { index: 2, count: 5 });
    }

    #[test]
    fn the_environment_gives_the_shard() {
        let k = env(&[("JOB_COMPLETION_INDEX", "2"), ("NNZIP_SHARD_COUNT", "4")]);
        assert_eq!(Shard::auto(&k, None).unwrap(), Shard { index: 2, count: 4 });
        assert_eq!(
            Shard::auto(&k, Some(5)).unwrap(),
            Shard { index: 2, count: 5 }
        );
        let k = env(&[("JOB_COMPLETION_INDEX", "2")]);
        assert!(Shard::auto(&k, None).is_err());
        let s = env(&[
            ("SLURM_ARRAY_TASK_ID", "11"),
            ("SLURM_ARRAY_TASK_MIN", "10"),
            ("SLURM_ARRAY_TASK_MAX", "13"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(Shard::auto(&s, None).unwrap(), Shard { index: 1, count: 4 });
        let gaps = env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "7"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        assert!(Shard::auto(&gaps, None).is_err());
        assert!(Shard::auto(&env(&[]), None).is_err());
    }
}
