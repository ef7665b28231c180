//! Splitting a long job over machines: shard `i` of `N` does every N-th unit of work from the
//! i-th, so that shards launched as a Slurm job array or a Kubernetes Indexed Job (with the
//! array index as `i`) share the work evenly and never overlap. The LDS ground truth shards its
//! retrained models; the index shards its chunk files.

use serde::{Deserialize, Serialize};

/// One of `count` shards (0-based `index`), written `i/N` on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// This shard, 0-based.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl Shard {
    /// The whole job in one shard.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// True when unit of work number `position` is this shard's.
    pub fn owns(&self, position: usize) -> bool {
        position % self.count == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// A shard spec that is not `i/N` with `0 ≤ i < N`.
#[derive(Debug, thiserror::Error)]
#[error("a shard is i/N with 0 ≤ i < N (e.g. 0/8), not {0:?}")]
pub struct BadShard(pub String);

impl std::str::FromStr for Shard {
    type Err = BadShard;
    fn from_str(s: &str) -> Result<Self, BadShard> {
        let bad = || BadShard(s.to_owned());
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_the_work_without_overlap() {
        let shards: Vec<Shard> = (0..3).map(|i| format!("{i}/3").parse().unwrap()).collect();
        for position in 0..10 {
            assert_eq!(shards.iter().filter(|s| s.owns(position)).count(), 1);
        }
        assert_eq!(shards[2].to_string(), "2/3");
        for bad in ["3/3", "1", "a/2", "0/0"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
