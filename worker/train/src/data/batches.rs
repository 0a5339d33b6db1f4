//! Token examples to batches: one example per row or several packed per row, shuffled per
//! epoch from a seed, with a [`DataPosition`] to checkpoint and resume exactly; plus the seeded
//! held-out split and the fixed-order batches held-out loss is computed on.
//!
//! Shuffling uses a SplitMix64 generator written out here rather than `rand`'s `StdRng`, whose
//! stream may change between `rand` versions: a checkpoint must resume onto the same batches
//! after an upgrade.

use super::TokenizedExample;
use flotilla_engine::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Segment id of padding tokens: attention never crosses segments, so padding sees only itself.
pub const PAD_SEGMENT: u32 = u32::MAX;

/// A batch of rows, all tensors flattened row-major (`rows * seq_len`).
///
/// Within a row, example `k` occupies a run of tokens with `segments == k` and positions
/// `0, 1, 2, ...`; attention must stay inside one segment (causal within it). Input `t` is
/// trained to predict `targets[t]` where `loss_mask[t] == 1.0`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub rows: usize,
    pub seq_len: usize,
    /// Token ids; padding is the loader's pad id.
    pub input_ids: Vec<u32>,
    /// The token that follows input `t` in the same example where it is a target, else 0.
    pub targets: Vec<u32>,
    /// 1.0 where `targets[t]` is an assistant token to predict.
    pub loss_mask: Vec<f32>,
    /// Rope position per token; restarts at 0 for each packed example (and for padding).
    pub positions: Vec<u32>,
    /// Example index within the row per token; padding is [`PAD_SEGMENT`].
    pub segments: Vec<u32>,
    /// The number of targets (sum of `loss_mask`): the loss is averaged over these.
    pub target_tokens: usize,
}

/// Where a [`DataLoader`] is: `cursor` indexes the epoch's shuffled order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    pub cursor: usize,
}

/// Examples to batches, endlessly, in a seeded order that is reshuffled every epoch.
///
/// - Padding mode: one example per row, right-padded to the longest example in the batch (so
///   a batch's `seq_len` varies, up to the configured one); short batches cost less on CPU.
/// - Packing mode: examples are laid end to end into rows of exactly `seq_len` tokens, in the
///   shuffled order, starting a new row when the next example does not fit; the rest of a row
///   is padding.
///
/// Every batch has `batch_size` rows: a batch that reaches the end of an epoch continues with
/// the next epoch's order, so the shape is constant for gradient accumulation and for slicing a
/// global batch across workers.
#[derive(Debug, Clone)]
pub struct DataLoader {
    examples: Vec<TokenizedExample>,
    batch_size: usize,
    seq_len: usize,
    packing: bool,
    seed: u64,
    pad_id: u32,
    epoch: u64,
    cursor: usize,
    order: Vec<usize>,
    /// Batches drawn since the start of epoch 0, when known (not after a [`DataLoader::seek`]).
    drawn: Option<u64>,
}

impl DataLoader {
    /// Check the examples fit `seq_len` and start at epoch 0. Pads with id 0 unless
    /// [`DataLoader::with_pad_id`] says otherwise (padding is never a target, so the id only
    /// matters for tidiness).
    pub fn new(
        examples: Vec<TokenizedExample>,
        batch_size: usize,
        seq_len: usize,
        packing: bool,
        seed: u64,
    ) -> Result<Self> {
        if examples.is_empty() {
            return Err(Error::input("no training examples"));
        }
        if batch_size == 0 {
            return Err(Error::input("the batch size must be at least 1"));
        }
        if seq_len < 2 {
            return Err(Error::input(
                "the sequence length must be at least 2 tokens",
            ));
        }
        for (i, e) in examples.iter().enumerate() {
            if e.ids.len() != e.loss_mask.len() {
                return Err(Error::input(format!(
                    "example {i}: {} ids but {} loss-mask entries",
                    e.ids.len(),
                    e.loss_mask.len()
                )));
            }
            if e.ids.len() > seq_len {
                return Err(Error::input(format!(
                    "example {i} has {} tokens, longer than the sequence length {seq_len}",
                    e.ids.len()
                )));
            }
            if e.ids.is_empty() {
                return Err(Error::input(format!("example {i} has no tokens")));
            }
        }
        let order = epoch_order(examples.len(), seed, 0);
        Ok(Self {
            examples,
            batch_size,
            seq_len,
            packing,
            seed,
            pad_id: 0,
            epoch: 0,
            cursor: 0,
            order,
            drawn: Some(0),
        })
    }

    /// Pad with `id` (e.g. the EOS id) instead of 0.
    pub fn with_pad_id(mut self, id: u32) -> Self {
        self.pad_id = id;
        self
    }

    /// The number of examples in one epoch.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Never true: a loader holds at least one example.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Where the next batch starts.
    pub fn position(&self) -> DataPosition {
        DataPosition {
            epoch: self.epoch,
            cursor: self.cursor,
        }
    }

    /// Continue from `pos` (from [`DataLoader::position`] in an earlier run with the same
    /// examples and seed): the next batch is the one the uninterrupted run would have produced.
    /// A cursor past the end of the epoch carries into the following epochs.
    pub fn seek(&mut self, pos: DataPosition) {
        let n = self.examples.len();
        self.epoch = pos.epoch + (pos.cursor / n) as u64;
        self.cursor = pos.cursor % n;
        self.order = epoch_order(n, self.seed, self.epoch);
        self.drawn = (pos.epoch == 0 && pos.cursor == 0).then_some(0);
    }

    /// Batch number `index` (0-based) of the stream that [`DataLoader::next_batch`] draws from
    /// the start: what a distributed run's workers compute, each its own indices. Moving
    /// forward skips rows without building them; moving back starts the stream again.
    pub fn batch_at(&mut self, index: u64) -> Batch {
        let drawn = match self.drawn {
            Some(d) if d <= index => d,
            _ => {
                self.seek(DataPosition {
                    epoch: 0,
                    cursor: 0,
                });
                0
            }
        };
        for _ in drawn..index {
            self.next_rows();
        }
        self.next_batch()
    }

    /// The next example in order, moving on to the next epoch (reshuffled) at the end.
    fn take(&mut self) -> usize {
        let i = self.order[self.cursor];
        self.advance();
        i
    }

    fn advance(&mut self) {
        self.cursor += 1;
        if self.cursor == self.examples.len() {
            self.epoch += 1;
            self.cursor = 0;
            self.order = epoch_order(self.examples.len(), self.seed, self.epoch);
        }
    }

    fn peek(&self) -> usize {
        self.order[self.cursor]
    }

    /// The example indices of the next batch's rows.
    fn next_rows(&mut self) -> Vec<Vec<usize>> {
        self.drawn = self.drawn.map(|d| d + 1);
        let mut rows: Vec<Vec<usize>> = Vec::with_capacity(self.batch_size);
        for _ in 0..self.batch_size {
            let mut row = vec![self.take()];
            if self.packing {
                let mut used = self.examples[row[0]].ids.len();
                while used + self.examples[self.peek()].ids.len() <= self.seq_len {
                    let i = self.take();
                    used += self.examples[i].ids.len();
                    row.push(i);
                }
            }
            rows.push(row);
        }
        rows
    }

    /// The next batch of `batch_size` rows.
    pub fn next_batch(&mut self) -> Batch {
        let rows = self.next_rows();
        let rows: Vec<Vec<&TokenizedExample>> = rows
            .iter()
            .map(|r| r.iter().map(|&i| &self.examples[i]).collect())
            .collect();
        let seq_len = if self.packing {
            self.seq_len
        } else {
            rows.iter().map(|r| r[0].ids.len()).max().unwrap_or(1)
        };
        build_batch(&rows, seq_len, self.pad_id)
    }
}

/// Batches over `examples` in their given order for held-out loss: one example per row,
/// padded to the longest in the batch; the last batch may have fewer rows. An example longer
/// than `seq_len` is cut to `seq_len` (tokenization already rejects those for training).
pub fn eval_batches(
    examples: &[TokenizedExample],
    batch_size: usize,
    seq_len: usize,
) -> Vec<Batch> {
    let batch_size = batch_size.max(1);
    let seq_len = seq_len.max(1);
    examples
        .chunks(batch_size)
        .map(|chunk| {
            let cut: Vec<TokenizedExample> = chunk
                .iter()
                .map(|e| {
                    if e.ids.len() > seq_len {
                        tracing::warn!(
                            tokens = e.ids.len(),
                            seq_len,
                            "held-out example cut to the sequence length"
                        );
                    }
                    let n = e.ids.len().min(seq_len);
                    TokenizedExample {
                        ids: e.ids[..n].to_vec(),
                        loss_mask: e.loss_mask[..n].to_vec(),
                    }
                })
                .collect();
            let rows: Vec<Vec<&TokenizedExample>> = cut.iter().map(|e| vec![e]).collect();
            let longest = cut.iter().map(|e| e.ids.len()).max().unwrap_or(1).max(1);
            build_batch(&rows, longest, 0)
        })
        .collect()
}

/// Lay out rows of examples into a batch of `seq_len` columns (each row's examples must fit).
fn build_batch(rows: &[Vec<&TokenizedExample>], seq_len: usize, pad_id: u32) -> Batch {
    let n = rows.len() * seq_len;
    let mut b = Batch {
        rows: rows.len(),
        seq_len,
        input_ids: Vec::with_capacity(n),
        targets: Vec::with_capacity(n),
        loss_mask: Vec::with_capacity(n),
        positions: Vec::with_capacity(n),
        segments: Vec::with_capacity(n),
        target_tokens: 0,
    };
    for row in rows {
        let mut used = 0;
        for (segment, e) in row.iter().enumerate() {
            let len = e.ids.len();
            for t in 0..len {
                let target = t + 1 < len && e.loss_mask[t + 1];
                b.input_ids.push(e.ids[t]);
                b.targets.push(if target { e.ids[t + 1] } else { 0 });
                b.loss_mask.push(if target { 1.0 } else { 0.0 });
                b.positions.push(t as u32);
                b.segments.push(segment as u32);
                b.target_tokens += target as usize;
            }
            used += len;
        }
        for t in 0..seq_len - used {
            b.input_ids.push(pad_id);
            b.targets.push(0);
            b.loss_mask.push(0.0);
            b.positions.push(t as u32);
            b.segments.push(PAD_SEGMENT);
        }
    }
    b
}

/// Split `items` into (train, held out), seeded: `round(len * fraction)` items are held out,
/// at least one and at most `len - 1` when there are two or more items and `fraction > 0`.
/// Both halves keep the items' original order.
pub fn split_holdout<T>(items: Vec<T>, fraction: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    let n = items.len();
    if n < 2 || fraction.is_nan() || fraction <= 0.0 {
        return (items, Vec::new());
    }
    let k = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
    let mut held = vec![false; n];
    for &i in &permutation(n, &mut SplitMix64::new(seed))[..k] {
        held[i] = true;
    }
    let (mut train, mut heldout) = (Vec::new(), Vec::new());
    for (item, h) in items.into_iter().zip(held) {
        if h {
            heldout.push(item);
        } else {
            train.push(item);
        }
    }
    (train, heldout)
}

/// SplitMix64 (Steele, Lea, Flood 2014): small, fast, and fixed forever.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A Fisher-Yates shuffle of `0..n`.
fn permutation(n: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// The order of epoch `epoch`: a function of (seed, epoch) only.
fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut mix = SplitMix64::new(seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let stream = mix.next_u64();
    permutation(n, &mut SplitMix64::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An example of `len` tokens whose ids encode (tag, index) and whose second half is target.
    fn example(tag: u32, len: usize) -> TokenizedExample {
        TokenizedExample {
            ids: (0..len as u32).map(|t| tag * 1000 + t).collect(),
            loss_mask: (0..len).map(|t| t >= len / 2).collect(),
        }
    }

    fn examples(n: u32) -> Vec<TokenizedExample> {
        (0..n)
            .map(|i| example(i + 1, 3 + (i as usize * 7) % 9))
            .collect()
    }

    #[test]
    fn two_workers_taking_turns_on_one_loader_draw_the_stream() {
        // Two in-process workers share one loader and ask for the indices of a round in
        // either order.
        let mut a = DataLoader::new(examples(32), 1, 64, false, 7).unwrap();
        let stream: Vec<Batch> = (0..8).map(|_| a.next_batch()).collect();
        let mut b = DataLoader::new(examples(32), 1, 64, false, 7).unwrap();
        for i in [0u64, 1, 3, 2, 5, 4, 7, 6] {
            assert_eq!(b.batch_at(i), stream[i as usize], "i={i}");
        }
    }

    #[test]
    fn padded_batches_shift_targets_and_mask_padding() {
        let a = TokenizedExample {
            ids: vec![10, 11, 12, 13],
            loss_mask: vec![false, false, true, true],
        };
        let b = TokenizedExample {
            ids: vec![20, 21],
            loss_mask: vec![false, true],
        };
        let batch = &eval_batches(&[a, b], 2, 16)[0];
        assert_eq!((batch.rows, batch.seq_len), (2, 4));
        assert_eq!(batch.input_ids, vec![10, 11, 12, 13, 20, 21, 0, 0]);
        assert_eq!(batch.targets, vec![0, 12, 13, 0, 21, 0, 0, 0]);
        assert_eq!(batch.loss_mask, vec![0., 1., 1., 0., 1., 0., 0., 0.]);
        assert_eq!(batch.positions, vec![0, 1, 2, 3, 0, 1, 0, 1]);
        assert_eq!(
            batch.segments,
            vec![0, 0, 0, 0, 0, 0, PAD_SEGMENT, PAD_SEGMENT]
        );
        assert_eq!(batch.target_tokens, 3);
    }

    #[test]
    fn packing_restarts_positions_and_segments_per_example() {
        let ex = vec![example(1, 4), example(2, 3), example(3, 5)];
        let mut dl = DataLoader::new(ex.clone(), 1, 8, true, 0).unwrap();
        let total: usize = ex.iter().map(|e| e.ids.len()).sum();
        let mut seen = 0;
        // An epoch's tokens arrive packed, every example whole, none split across rows (the
        // last row may go on with the next epoch's examples).
        while seen < total {
            let b = dl.next_batch();
            assert_eq!((b.rows, b.seq_len), (1, 8));
            let mut t = 0;
            let mut segment = 0;
            while t < 8 && b.segments[t] != PAD_SEGMENT {
                let tag = b.input_ids[t] / 1000;
                let e = &ex[tag as usize - 1];
                for k in 0..e.ids.len() {
                    assert_eq!(b.input_ids[t + k], e.ids[k]);
                    assert_eq!(b.positions[t + k], k as u32);
                    assert_eq!(b.segments[t + k], segment);
                    let target = k + 1 < e.ids.len() && e.loss_mask[k + 1];
                    assert_eq!(b.loss_mask[t + k], if target { 1.0 } else { 0.0 });
                    assert_eq!(b.targets[t + k], if target { e.ids[k + 1] } else { 0 });
                }
                t += e.ids.len();
                seen += e.ids.len();
                segment += 1;
            }
            assert!(segment >= 1);
            assert!(b.segments[t..].iter().all(|s| *s == PAD_SEGMENT));
            assert_eq!(b.target_tokens, b.loss_mask.iter().sum::<f32>() as usize);
        }
        assert!(seen >= total);
        assert_eq!(dl.position().epoch, 1);
    }

    #[test]
    fn shuffling_is_seeded_and_changes_per_epoch() {
        let ids = |seed: u64| {
            let mut dl = DataLoader::new(examples(10), 5, 16, false, seed).unwrap();
            (0..6)
                .map(|_| dl.next_batch().input_ids)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(3), ids(3));
        assert_ne!(ids(3), ids(4));
        let mut dl = DataLoader::new(examples(10), 10, 16, false, 3).unwrap();
        let firsts = |b: &Batch| {
            let mut v: Vec<u32> = (0..b.rows).map(|r| b.input_ids[r * b.seq_len]).collect();
            let order = v.clone();
            v.sort();
            (order, v)
        };
        let (e0, all0) = firsts(&dl.next_batch());
        let (e1, all1) = firsts(&dl.next_batch());
        assert_eq!(all0, all1, "each epoch holds every example once");
        assert_ne!(e0, e1, "a new order each epoch");
    }

    #[test]
    fn seek_resumes_onto_the_same_batches() {
        for packing in [false, true] {
            let mut a = DataLoader::new(examples(7), 3, 12, packing, 9).unwrap();
            let mut saved = None;
            let mut expected = Vec::new();
            for step in 0..10 {
                if step == 4 {
                    saved = Some(a.position());
                }
                let b = a.next_batch();
                if step >= 4 {
                    expected.push(b);
                }
            }
            let pos = saved.unwrap();
            let json = serde_json::to_string(&pos).unwrap();
            let pos: DataPosition = serde_json::from_str(&json).unwrap();
            let mut b = DataLoader::new(examples(7), 3, 12, packing, 9).unwrap();
            b.seek(pos);
            let resumed: Vec<Batch> = (0..6).map(|_| b.next_batch()).collect();
            assert_eq!(resumed, expected, "packing={packing}");
        }
    }

    #[test]
    fn batch_at_is_the_indexed_batch_of_the_stream_in_any_order() {
        for packing in [false, true] {
            let mut a = DataLoader::new(examples(7), 3, 12, packing, 5).unwrap();
            let stream: Vec<Batch> = (0..9).map(|_| a.next_batch()).collect();
            let mut b = DataLoader::new(examples(7), 3, 12, packing, 5).unwrap();
            for i in [4u64, 5, 8, 1, 0, 7] {
                assert_eq!(b.batch_at(i), stream[i as usize], "packing={packing} i={i}");
            }
            // After a seek the count is unknown: the stream starts again.
            b.seek(DataPosition {
                epoch: 1,
                cursor: 2,
            });
            assert_eq!(b.batch_at(3), stream[3]);
        }
    }

    #[test]
    fn batches_span_epochs_with_a_constant_row_count() {
        let mut dl = DataLoader::new(examples(5), 3, 16, false, 1).unwrap();
        for _ in 0..4 {
            assert_eq!(dl.next_batch().rows, 3);
        }
        assert_eq!(
            dl.position(),
            DataPosition {
                epoch: 2,
                cursor: 2
            }
        );
        let mut other = DataLoader::new(examples(5), 3, 16, false, 1).unwrap();
        other.seek(DataPosition {
            epoch: 0,
            cursor: 12,
        });
        assert_eq!(other.position(), dl.position());
        assert_eq!(other.next_batch(), dl.next_batch());
    }

    #[test]
    fn the_loader_rejects_what_cannot_be_batched() {
        let e = DataLoader::new(vec![example(1, 9)], 1, 8, true, 0).unwrap_err();
        assert!(e
            .to_string()
            .contains("example 0 has 9 tokens, longer than the sequence length 8"));
        assert!(DataLoader::new(Vec::new(), 1, 8, false, 0).is_err());
        assert!(DataLoader::new(examples(2), 0, 8, false, 0).is_err());
    }

    #[test]
    fn holdout_split_is_seeded_disjoint_and_never_empty() {
        let items: Vec<u32> = (0..20).collect();
        let (train, held) = split_holdout(items.clone(), 0.25, 0);
        assert_eq!((train.len(), held.len()), (15, 5));
        assert!(held.iter().all(|h| !train.contains(h)));
        assert_eq!(
            split_holdout(items.clone(), 0.25, 0),
            (train.clone(), held.clone())
        );
        assert_ne!(split_holdout(items.clone(), 0.25, 1).1, held);
        assert!(held.windows(2).all(|w| w[0] < w[1]), "original order kept");
        assert_eq!(split_holdout(vec![1, 2], 0.01, 0).1.len(), 1);
        assert_eq!(split_holdout(vec![1, 2], 0.99, 0).0.len(), 1);
        assert_eq!(split_holdout(vec![1], 0.5, 0), (vec![1], vec![]));
        assert_eq!(split_holdout(items, 0.0, 0).1.len(), 0);
    }
}
