//! A seeded mutator for the fuzz campaign: byte-level damage (bit flips, interesting values, huge
//! lengths, truncations, deletions, duplications, splices between seeds, wrong magic) and, for
//! JSON files, structure-aware damage (a number made huge, negative, fractional or zero, a string
//! emptied or garbled, a list shortened, emptied or lengthened, a field removed or retyped).

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde_json::Value;

/// Integers that break size arithmetic: zero, one, all ones, the sign bits, and powers of two.
const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    0x7f,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x8000_0000,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// The random source and the operators of one campaign.
pub struct Mutator {
    rng: ChaCha8Rng,
}

impl Mutator {
    /// A mutator whose choices are a function of `seed` alone.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A random number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n.max(1))
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    /// One to four stacked byte-level mutations of a seed chosen from `seeds`.
    pub fn bytes(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
        let mut out = seeds[self.below(seeds.len())].clone();
        for _ in 0..1 + self.below(4) {
            self.damage(&mut out, seeds);
        }
        out
    }

    /// One byte-level mutation of `data` in place.
    fn damage(&mut self, data: &mut Vec<u8>, seeds: &[Vec<u8>]) {
        let len = data.len();
        match self.below(10) {
            0 | 1 if len > 0 => {
                for _ in 0..1 + self.below(8) {
                    let at = self.below(len);
                    data[at] ^= 1 << self.below(8);
                }
            }
            2 if len > 0 => {
                let at = self.below(len);
                data[at] = [0, 0xff, 0x7f, 0x80, self.rng.random()][self.below(5)];
            }
            3 if len > 0 => {
                // A huge (or zero) length or count, in either byte order.
                let value = INTERESTING[self.below(INTERESTING.len())];
                let width = [2, 4, 8][self.below(3)];
                let bytes = if self.chance(0.5) {
                    value.to_be_bytes()[8 - width..].to_vec()
                } else {
                    value.to_le_bytes()[..width].to_vec()
                };
                let at = self.below(len);
                for (k, b) in bytes.into_iter().enumerate() {
                    if let Some(slot) = data.get_mut(at + k) {
                        *slot = b;
                    }
                }
            }
            4 => {
                let keep = self.below(len + 1);
                data.truncate(keep);
            }
            5 if len > 0 => {
                let from = self.below(len);
                let to = (from + 1 + self.below(64.min(len - from))).min(len);
                data.drain(from..to);
            }
            6 if len > 0 => {
                let from = self.below(len);
                let to = (from + 1 + self.below(256.min(len - from))).min(len);
                let piece = data[from..to].to_vec();
                let at = self.below(len + 1);
                data.splice(at..at, piece);
            }
            7 => {
                // A splice: the head of this input, the tail of another seed.
                let other = &seeds[self.below(seeds.len())];
                let cut = self.below(len + 1);
                let from = self.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            8 if len > 0 => {
                // Wrong magic: the first bytes replaced.
                for b in data.iter_mut().take(1 + self.below(8)) {
                    *b = self.rng.random();
                }
            }
            _ => {
                let at = self.below(len + 1);
                let extra: Vec<u8> = (0..1 + self.below(16)).map(|_| self.rng.random()).collect();
                data.splice(at..at, extra);
            }
        }
    }

    /// A JSON seed with one to three structure-aware mutations, serialised; `None` when the
    /// seed is not JSON.
    pub fn json(&mut self, seed: &[u8]) -> Option<Vec<u8>> {
        let mut value: Value = serde_json::from_slice(seed).ok()?;
        for _ in 0..1 + self.below(3) {
            let nodes = count_nodes(&value);
            let target = self.below(nodes);
            let mut seen = 0;
            self.mutate_node(&mut value, target, &mut seen);
        }
        serde_json::to_vec(&value).ok()
    }

    /// A safetensors file whose JSON header has one to three structure-aware mutations (its
    /// length prefix rewritten to match), the tensor bytes unchanged; `None` when the seed has
    /// no readable header.
    pub fn safetensors_header(&mut self, seed: &[u8]) -> Option<Vec<u8>> {
        let length = u64::from_le_bytes(seed.get(..8)?.try_into().ok()?) as usize;
        let header = seed.get(8..8usize.checked_add(length)?)?;
        let damaged = self.json(header)?;
        let mut out = (damaged.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&damaged);
        out.extend_from_slice(&seed[8 + length..]);
        Some(out)
    }

    /// Mutates the `target`-th node (pre-order) of `value`.
    fn mutate_node(&mut self, value: &mut Value, target: usize, seen: &mut usize) -> bool {
        if *seen == target {
            *value = self.replacement(value);
            return true;
        }
        *seen += 1;
        match value {
            Value::Array(items) => {
                for item in items.iter_mut() {
                    if self.mutate_node(item, target, seen) {
                        return true;
                    }
                }
            }
            Value::Object(fields) => {
                let keys: Vec<String> = fields.keys().cloned().collect();
                for key in keys {
                    let done = self.mutate_node(fields.get_mut(&key).expect("key just listed"), target, seen);
                    if done {
                        return true;
                    }
                }
            }
            _ => {}
        }
        false
    }

    /// What replaces a node: a damaged version of it or another type altogether.
    fn replacement(&mut self, value: &Value) -> Value {
        let numbers = [
            serde_json::json!(0),
            serde_json::json!(-1),
            serde_json::json!(1),
            serde_json::json!(u64::MAX),
            serde_json::json!(i64::MIN),
            serde_json::json!(1e308),
            serde_json::json!(-1e-300),
            serde_json::json!(0.5),
            serde_json::json!(4_294_967_296u64),
        ];
        let strings = ["", "0", "zz", "../../x", "é", "ffffffffffff"];
        match value {
            Value::Number(_) if self.chance(0.8) => numbers[self.below(numbers.len())].clone(),
            Value::String(s) if self.chance(0.8) => match self.below(4) {
                0 => Value::String(strings[self.below(strings.len())].to_owned()),
                1 => Value::String(s.chars().take(self.below(s.len() + 1)).collect()),
                2 => Value::String(format!("{s}{s}")),
                _ => {
                    let mut bytes = s.clone().into_bytes();
                    if !bytes.is_empty() {
                        let at = self.below(bytes.len());
                        bytes[at] = b"0aZ-.:/?"[self.below(8)];
                    }
                    Value::String(String::from_utf8_lossy(&bytes).into_owned())
                }
            },
            Value::Array(items) if self.chance(0.8) => {
                let mut items = items.clone();
                match self.below(3) {
                    0 => items.truncate(self.below(items.len() + 1)),
                    1 if !items.is_empty() => {
                        let copy = items[self.below(items.len())].clone();
                        items.push(copy);
                    }
                    _ => items.clear(),
                }
                Value::Array(items)
            }
            Value::Object(fields) if self.chance(0.8) && !fields.is_empty() => {
                let mut fields = fields.clone();
                let key = fields.keys().nth(self.below(fields.len())).cloned().expect("not empty");
                fields.remove(&key);
                Value::Object(fields)
            }
            Value::Bool(b) if self.chance(0.5) => Value::Bool(!b),
            _ => match self.below(5) {
                0 => Value::Null,
                1 => Value::Bool(true),
                2 => numbers[self.below(numbers.len())].clone(),
                3 => Value::String(strings[self.below(strings.len())].to_owned()),
                _ => Value::Array(Vec::new()),
            },
        }
    }
}

/// Number of nodes of a JSON value, itself included.
fn count_nodes(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        Value::Object(fields) => fields.values().map(count_nodes).sum(),
        _ => 0,
    }
}
