//! The fuzz campaign: every parser of a file a user hands retrace is fed seeded mutations of
//! real files and must answer each with a value or an error message, never a panic.
//!
//! `RETRACE_FUZZ_INPUTS` sets the inputs per parser (10,000 by default, which CI runs;
//! `scripts/fuzz` runs 1,000,000), `RETRACE_FUZZ_SEED` the campaign's seed (0 by default, so CI
//! replays the same inputs), and `RETRACE_FUZZ_REPORT` a file that receives one JSON line per
//! parser. An input that panics is saved under `target/fuzz-crashes/PARSER/`; once fixed, it
//! belongs in `tests/fixtures/fuzz/PARSER/`, which every run replays first. The slowest input
//! of each run is kept as `target/fuzz-slowest/PARSER` (`PARSER-resealed` when it was
//! re-sealed), to look into.
//!
//! Files that carry a checksum (checkpoint weights, the index manifest and chunks, curvature
//! files) would turn nearly every mutation into a checksum error; for half the inputs the
//! target therefore re-seals the damaged file with a correct checksum, so the parser behind the
//! check sees the damage too.

mod data;
mod model;
mod mutate;
mod stores;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mutate::Mutator;

/// How seeds are mutated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Bytes only.
    Binary,
    /// Half the inputs by bytes, half by JSON structure.
    Json,
    /// Half the inputs by bytes, half by the JSON structure of the safetensors header (the
    /// tensors' names, types, shapes and offsets, and the metadata).
    Safetensors,
}

/// One parser under attack: its name, the real files its inputs start from, and how a seed is
/// mutated.
pub struct Parser {
    /// Name in reports and crash directories.
    pub name: &'static str,
    /// Unmutated inputs, each of which the parser must accept.
    pub seeds: Vec<Vec<u8>>,
    /// Byte or JSON mutations.
    pub shape: Shape,
}

/// What a campaign saw.
struct Tally {
    accepted: usize,
    rejected: usize,
    panics: Vec<(PathBuf, String)>,
    slowest: Duration,
    slowest_input: (Vec<u8>, bool),
}

/// Keeps the panic hook quiet about panics retrace contains and turns into errors
/// ([`retrace::contained`]), as the binary's hook is; every other panic is reported as before.
fn quiet_about_contained_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !retrace::contained::is_contained() {
                previous(info)
            }
        }));
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs `attempt` on every seed (which must be accepted), on the regression corpus, and on
/// `RETRACE_FUZZ_INPUTS` mutations; `attempt(input, reseal)` returns `Err` with a message for
/// input it refuses. Fails when any input panicked or was refused without a message.
pub fn campaign(parser: Parser, mut attempt: impl FnMut(&[u8], bool) -> Result<(), String>) {
    quiet_about_contained_panics();
    let Parser { name, seeds, shape } = parser;
    for (i, seed) in seeds.iter().enumerate() {
        if let Err(e) = attempt(seed, false) {
            panic!("{name}: seed {i} is refused before any mutation: {e}");
        }
    }
    let corpus_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(name);
    let corpus: Vec<Vec<u8>> = std::fs::read_dir(&corpus_dir)
        .map(|entries| entries.filter_map(|e| std::fs::read(e.ok()?.path()).ok()).collect())
        .unwrap_or_default();
    let crash_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/fuzz-crashes")
        .join(name);
    let total = crate::common::env_number("RETRACE_FUZZ_INPUTS", 10_000usize);
    let seed = crate::common::env_number("RETRACE_FUZZ_SEED", 0u64);
    let per_parser = u64::from_str_radix(&retrace::files::sha256(name.as_bytes())[..16], 16).expect("hex digest");
    let mut mutator = Mutator::new(seed ^ per_parser);
    let mut tally = Tally {
        accepted: 0,
        rejected: 0,
        panics: Vec::new(),
        slowest: Duration::ZERO,
        slowest_input: (Vec::new(), false),
    };
    let started = Instant::now();
    let replays = corpus.iter().flat_map(|c| [(c.clone(), false), (c.clone(), true)]);
    let mutations = (0..total).map(|_| {
        let input = match shape {
            Shape::Json if mutator.chance(0.5) => {
                let seed = &seeds[mutator.below(seeds.len())];
                mutator.json(seed).unwrap_or_else(|| mutator.bytes(&seeds))
            }
            Shape::Safetensors if mutator.chance(0.5) => {
                let seed = &seeds[mutator.below(seeds.len())];
                mutator
                    .safetensors_header(seed)
                    .unwrap_or_else(|| mutator.bytes(&seeds))
            }
            _ => mutator.bytes(&seeds),
        };
        (input, mutator.chance(0.5))
    });
    let mut empty_messages = 0;
    for (input, reseal) in replays.chain(mutations) {
        let start = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| attempt(&input, reseal)));
        if start.elapsed() > tally.slowest {
            tally.slowest = start.elapsed();
            tally.slowest_input = (input.clone(), reseal);
        }
        match outcome {
            Ok(Ok(())) => tally.accepted += 1,
            Ok(Err(message)) => {
                tally.rejected += 1;
                if message.trim().is_empty() {
                    empty_messages += 1;
                }
            }
            Err(payload) => {
                let _ = std::fs::create_dir_all(&crash_dir);
                let path = crash_dir.join(format!(
                    "{}{}",
                    &retrace::files::sha256(&input)[..16],
                    if reseal { "-resealed" } else { "" }
                ));
                let _ = std::fs::write(&path, &input);
                tally.panics.push((path, panic_message(payload.as_ref())));
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let slowest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-slowest");
    let _ = std::fs::create_dir_all(&slowest_dir);
    let (slowest, resealed) = &tally.slowest_input;
    let suffix = if *resealed { "-resealed" } else { "" };
    let _ = std::fs::write(slowest_dir.join(format!("{name}{suffix}")), slowest);
    let line = serde_json::json!({
        "parser": name,
        "inputs": total,
        "replayed": corpus.len() * 2,
        "seed": seed,
        "accepted": tally.accepted,
        "rejected": tally.rejected,
        "panics": tally.panics.len(),
        "seconds": seconds,
        "slowest_ms": tally.slowest.as_secs_f64() * 1e3,
    });
    println!("fuzz {line}");
    if let Ok(report) = std::env::var("RETRACE_FUZZ_REPORT") {
        use std::io::Write;
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(report) {
            let _ = writeln!(file, "{line}");
        }
    }
    assert!(
        tally.panics.is_empty(),
        "{name}: {} of {total} inputs panicked:\n{}",
        tally.panics.len(),
        tally
            .panics
            .iter()
            .take(10)
            .map(|(path, message)| format!("  {}: {message}", path.display()))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(empty_messages, 0, "{name}: inputs refused without a message");
}
