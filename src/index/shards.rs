//! An index built over several machines: each `retrace index --shard i/N` writes its chunks
//! into `DIR/shard-i-of-N/`, and `retrace index merge` checks that every shard is complete and
//! of the same index, moves the chunks into `DIR` and writes the manifest a one-machine build
//! would have written — byte for byte the same index (and stamps it verified: every chunk was
//! hashed on the way).

use std::path::{Path, PathBuf};

use super::summary::summary_path;
use super::{IndexError, Manifest, chunk_path, io, read_manifest, stamp_verified, write_manifest};
use crate::files::sha256;
use crate::shard::Shard;

/// The directory shard `shard` of the index in `dir` is built in.
pub fn shard_dir(dir: &Path, shard: Shard) -> PathBuf {
    dir.join(format!("shard-{}-of-{}", shard.index, shard.count))
}

/// The shards found in `dir`, by their directory names.
fn find_shards(dir: &Path) -> Result<Vec<(Shard, PathBuf)>, IndexError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some((i, n)) = name.strip_prefix("shard-").and_then(|r| r.split_once("-of-")) else {
            continue;
        };
        if let Ok(shard) = format!("{i}/{n}").parse::<Shard>() {
            found.push((shard, path));
        }
    }
    found.sort_by_key(|(s, _)| (s.count, s.index));
    Ok(found)
}

/// What a merge did.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeOutcome {
    /// The shards joined.
    pub shards: usize,
    /// Chunk files moved into the index.
    pub chunks: usize,
    /// The merged manifest.
    pub manifest: Manifest,
}

/// Joins the shards in `dir` into the index there, verifying every chunk's checksum, then
/// removes the shard directories. Refused, with nothing changed, when a shard is missing,
/// unfinished, damaged, or of another index. Safe to run again after an interruption: chunks
/// already moved are found in place and checked.
pub fn merge_shards(dir: &Path) -> Result<MergeOutcome, IndexError> {
    let found = find_shards(dir)?;
    let Some(&(first, _)) = found.first() else {
        return Err(IndexError::Invalid(format!(
            "{} holds no shard directories (shard-i-of-N) to merge: run `retrace index --shard i/N` first",
            dir.display()
        )));
    };
    let count = first.count;
    if let Some((other, _)) = found.iter().find(|(s, _)| s.count != count) {
        return Err(IndexError::Invalid(format!(
            "{} holds shards of {count} and of {} machines: remove the ones of the other split",
            dir.display(),
            other.count
        )));
    }
    let missing: Vec<String> = (0..count)
        .filter(|i| !found.iter().any(|(s, _)| s.index == *i))
        .map(|i| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        return Err(IndexError::Invalid(format!(
            "shards {} of the index in {} have not run: run them, then merge",
            missing.join(", "),
            dir.display()
        )));
    }
    let manifests: Vec<Manifest> = found
        .iter()
        .map(|(_, path)| read_manifest(path))
        .collect::<Result<_, _>>()?;
    let reference = &manifests[0];
    for ((shard, path), m) in found.iter().zip(&manifests) {
        let mut differences = m.key.differences(&reference.key);
        if (m.examples, m.chunk_size, m.dim) != (reference.examples, reference.chunk_size, reference.dim)
            || m.checkpoints
                .iter()
                .map(|c| c.step)
                .ne(reference.checkpoints.iter().map(|c| c.step))
        {
            differences.push("sizes or checkpoints".into());
        }
        if m.shard != Some(*shard) {
            differences.push(format!("its manifest is not shard {shard}'s"));
        }
        if !differences.is_empty() {
            return Err(IndexError::Foreign {
                dir: path.clone(),
                differences,
            });
        }
        if !m.is_built() {
            return Err(IndexError::Invalid(format!(
                "shard {shard} in {} is unfinished: run it again to finish it, then merge",
                path.display()
            )));
        }
    }
    let mut merged = reference.clone();
    merged.shard = None;
    let mut moves = Vec::new();
    let mut chunks = 0;
    for (ci, checkpoint) in merged.checkpoints.iter_mut().enumerate() {
        checkpoint.summaries.resize(checkpoint.chunks.len(), None);
        for k in 0..checkpoint.chunks.len() {
            let owner = reference.owner(ci, k, count);
            let theirs = &manifests[owner].checkpoints[ci];
            let files = [
                (
                    chunk_path as fn(&Path, usize, usize) -> PathBuf,
                    theirs.chunks[k].clone(),
                ),
                (summary_path, theirs.summaries.get(k).cloned().flatten()),
            ];
            for (slot, (path_of, sha)) in [&mut checkpoint.chunks[k], &mut checkpoint.summaries[k]]
                .into_iter()
                .zip(files)
            {
                *slot = sha.clone();
                let Some(sha) = sha else {
                    // A shard built before summaries existed: the first open makes them.
                    continue;
                };
                let from = path_of(&found[owner].1, checkpoint.step, k);
                let to = path_of(dir, checkpoint.step, k);
                let source = if from.is_file() { &from } else { &to };
                let bytes = std::fs::read(source).map_err(io(source))?;
                if sha != sha256(&bytes) {
                    return Err(IndexError::Invalid(format!(
                        "{}: checksum mismatch: the shard's file is damaged; delete {} and run shard {owner}/{count} again",
                        source.display(),
                        found[owner].1.display()
                    )));
                }
                moves.push((from, to));
            }
            chunks += 1;
        }
    }
    for (from, to) in &moves {
        if from.is_file() {
            std::fs::rename(from, to).map_err(io(from))?;
        }
    }
    write_manifest(dir, &merged)?;
    // Every chunk was hashed above: the first open need not hash them again.
    stamp_verified(dir, &merged)?;
    for (_, path) in &found {
        std::fs::remove_dir_all(path).map_err(io(path))?;
    }
    Ok(MergeOutcome {
        shards: count,
        chunks,
        manifest: merged,
    })
}
