//! Benchmark text, generated from a seed (no download).
//!
//! Two corpora:
//!
//! - **`zipf`** (the default, reported first): text that looks like text to
//!   a word count. A vocabulary of [`ZIPF_WORDS`] distinct pronounceable
//!   pseudo-words made of syllables, word `r` (by rank, from 0) drawn with
//!   probability proportional to `1 / (r + 1)^`[`ZIPF_EXPONENT`]. Frequent
//!   words are short (the lengths of the most frequent English words, then
//!   a length that grows with the logarithm of the rank, with noise), so a
//!   drawn word has about 4.7 letters on average while the vocabulary has a
//!   long tail up to 24 letters, some over 15 bytes (the host keeps keys of
//!   up to 15 bytes packed; longer ones take its other path). 8 to 12 words
//!   a line, uniformly.
//! - **`words64`**: the `generator` source's text (64 English words, 8 a
//!   line): every hash table stays hot in cache, the figure earlier
//!   benchmarks reported.
//!
//! Line `i` of a corpus and seed is always the same (every line is drawn
//! from its own seed), so files can be written in parallel, and the number
//! of words is counted while generating: a word count must add up to it.
//! Words are drawn with an alias table (one 64-bit random number and one
//! table entry per word), fast enough to write 10 M lines in a few seconds.

use std::io::Write;
use std::path::Path;

use weir::source::generator;

/// Distinct words of the `zipf` vocabulary.
pub const ZIPF_WORDS: usize = 20_000;

/// The exponent `s` of the `zipf` corpus's rank-frequency law.
pub const ZIPF_EXPONENT: f64 = 1.05;

/// Lengths of the most frequent English words, in order (the, of, and, to,
/// a, in, is, that, for, it, as, was, with, be, by, on, not, he, I, this,
/// are, or, his, from, at, which, but, have, an, they, you, were): the
/// lengths of the `zipf` vocabulary's first words.
const TOP_LENGTHS: [usize; 32] = [
    3, 2, 3, 2, 1, 2, 2, 4, 3, 2, 2, 3, 4, 2, 2, 2, 3, 2, 1, 4, 3, 2, 3, 4, 2, 5, 3, 4, 2, 4, 3, 4,
];

/// Longest word of the `zipf` vocabulary.
const MAX_WORD: usize = 24;

const ONSETS: [&str; 46] = [
    "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "y", "z", "bl",
    "br", "ch", "cl", "cr", "dr", "fl", "fr", "gl", "gr", "pl", "pr", "qu", "sc", "sh", "sk", "sl", "sm",
    "sn", "sp", "st", "str", "sw", "th", "tr", "wh", "wr",
];
const VOWELS: [&str; 17] = [
    "a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ea", "ee", "ie", "oa", "oo", "ou", "y",
];
const CODAS: [&str; 20] = [
    "", "", "", "n", "r", "s", "t", "l", "m", "d", "ck", "ng", "nd", "nt", "rd", "rn", "rs", "st", "ld", "th",
];

/// Which text a benchmark runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorpusKind {
    /// Zipf-distributed pseudo-words, 8–12 a line.
    Zipf,
    /// The generator source's 64-word text, 8 words a line.
    Words64,
}

impl CorpusKind {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Zipf => "zipf",
            Self::Words64 => "words64",
        }
    }

    /// The kind named `name` on the command line.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "zipf" => Some(Self::Zipf),
            "words64" => Some(Self::Words64),
            _ => None,
        }
    }
}

/// What a run of [`Corpus::write_files`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CorpusStats {
    /// Lines.
    pub lines: u64,
    /// Words (whitespace-separated).
    pub words: u64,
    /// Bytes, newlines included.
    pub bytes: u64,
}

/// A generator of benchmark lines.
#[derive(Debug, Clone)]
pub struct Corpus {
    seed: u64,
    vocabulary: Option<Vocabulary>,
}

impl Corpus {
    /// The corpus `kind` for `seed` (the `zipf` vocabulary is built here,
    /// in a few milliseconds).
    pub fn new(kind: CorpusKind, seed: u64) -> Self {
        let vocabulary = match kind {
            CorpusKind::Zipf => Some(Vocabulary::zipf(ZIPF_WORDS, ZIPF_EXPONENT, seed)),
            CorpusKind::Words64 => None,
        };
        Self { seed, vocabulary }
    }

    /// A one-line description for reports.
    pub fn describe(&self) -> String {
        match &self.vocabulary {
            Some(vocabulary) => format!(
                "zipf: {} pseudo-words, s = {ZIPF_EXPONENT}, {:.2} letters per drawn word, 8-12 words a line",
                vocabulary.len(),
                vocabulary.mean_drawn_length()
            ),
            None => "words64: the generator's 64 words, 8 a line (cache-hot)".to_owned(),
        }
    }

    /// Writes line `index` into `out` (cleared first, no newline); returns
    /// its number of words.
    pub fn line(&self, index: u64, out: &mut Vec<u8>) -> u64 {
        let Some(vocabulary) = &self.vocabulary else {
            const WORDS: usize = 8;
            generator::line(self.seed, index, WORDS, out);
            return WORDS as u64;
        };
        out.clear();
        let mut state = mix(self.seed ^ mix(index));
        let words = 8 + (state % 5);
        for word in 0..words {
            state = mix(state);
            if word > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(vocabulary.word(vocabulary.sample(state)));
        }
        words
    }

    /// Appends lines `from..to`, each followed by a newline, to `out`;
    /// returns their number of words.
    pub fn append_lines(&self, from: u64, to: u64, out: &mut Vec<u8>) -> u64 {
        let mut line = Vec::with_capacity(256);
        let mut words = 0;
        for index in from..to {
            words += self.line(index, &mut line);
            out.extend_from_slice(&line);
            out.push(b'\n');
        }
        words
    }

    /// Writes `lines` lines into files of `per_file` lines under `dir`,
    /// named `part-00000.txt`, `part-00001.txt`, …, on up to `threads`
    /// threads; returns what it wrote.
    pub fn write_files(
        &self,
        dir: &Path,
        lines: u64,
        per_file: u64,
        threads: usize,
    ) -> std::io::Result<CorpusStats> {
        std::fs::create_dir_all(dir)?;
        let per_file = per_file.max(1);
        let files = lines.div_ceil(per_file);
        let threads = threads.clamp(1, files.max(1) as usize) as u64;
        let write_file = |file: u64| -> std::io::Result<CorpusStats> {
            let path = dir.join(format!("part-{file:05}.txt"));
            let from = file * per_file;
            let to = (from + per_file).min(lines);
            let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
            let mut text = Vec::with_capacity(1 << 20);
            let mut stats = CorpusStats::default();
            let mut at = from;
            while at < to {
                let end = (at + 8_192).min(to);
                text.clear();
                stats.words += self.append_lines(at, end, &mut text);
                stats.bytes += text.len() as u64;
                out.write_all(&text)?;
                at = end;
            }
            out.flush()?;
            stats.lines = to - from;
            Ok(stats)
        };
        let results = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|thread| {
                    scope.spawn(move || -> std::io::Result<CorpusStats> {
                        let mut total = CorpusStats::default();
                        for file in (thread..files).step_by(threads as usize) {
                            let stats = write_file(file)?;
                            total.lines += stats.lines;
                            total.words += stats.words;
                            total.bytes += stats.bytes;
                        }
                        Ok(total)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|worker| worker.join().expect("a corpus writer panicked"))
                .collect::<Vec<_>>()
        });
        let mut total = CorpusStats::default();
        for stats in results {
            let stats = stats?;
            total.lines += stats.lines;
            total.words += stats.words;
            total.bytes += stats.bytes;
        }
        Ok(total)
    }
}

/// Distinct words drawn by rank from a discrete distribution.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    /// The words, one after the other.
    text: Vec<u8>,
    /// Word `r` is `text[ends[r - 1]..ends[r]]` (from 0 for the first).
    ends: Vec<u32>,
    /// Probability of each word.
    probabilities: Vec<f64>,
    /// The alias table: entry `i` is (threshold, alias).
    alias: Vec<(u32, u32)>,
}

impl Vocabulary {
    /// `size` distinct pseudo-words, the one of rank `r` (from 0) drawn with
    /// probability proportional to `1 / (r + 1)^exponent`.
    pub fn zipf(size: usize, exponent: f64, seed: u64) -> Self {
        let size = size.max(1);
        let mut rng = mix(seed ^ 0x5EED_0F57_AB1E);
        let mut next = move || {
            rng = mix(rng);
            rng
        };
        let mut seen = hashbrown::HashSet::with_capacity(size);
        let mut text = Vec::new();
        let mut ends = Vec::with_capacity(size);
        let mut word = Vec::with_capacity(MAX_WORD + 8);
        for rank in 0..size {
            let mut length = match TOP_LENGTHS.get(rank) {
                Some(&length) => length,
                None => {
                    // Log-normal around a mean growing with log(rank).
                    let mean = 2.1 + 0.6 * ((rank + 1) as f64).ln();
                    let noise = (0.3 * normal(&mut next)).exp();
                    ((mean * noise).round() as usize).clamp(2, MAX_WORD)
                }
            };
            let mut tries = 0u32;
            loop {
                pseudo_word(&mut next, length, &mut word);
                if seen.insert(word.clone()) {
                    break;
                }
                tries += 1;
                if tries.is_multiple_of(32) {
                    // Short lengths run out of words: one letter longer.
                    length += 1;
                }
            }
            text.extend_from_slice(&word);
            ends.push(text.len() as u32);
        }
        let weights: Vec<f64> = (1..=size).map(|r| (r as f64).powf(-exponent)).collect();
        let total: f64 = weights.iter().sum();
        let probabilities: Vec<f64> = weights.iter().map(|w| w / total).collect();
        let alias = alias_table(&probabilities);
        Self {
            text,
            ends,
            probabilities,
            alias,
        }
    }

    /// Number of words.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// The word of rank `rank`.
    pub fn word(&self, rank: usize) -> &[u8] {
        let start = if rank == 0 {
            0
        } else {
            self.ends[rank - 1] as usize
        };
        &self.text[start..self.ends[rank] as usize]
    }

    /// The probability of drawing the word of rank `rank`.
    pub fn probability(&self, rank: usize) -> f64 {
        self.probabilities[rank]
    }

    /// The expected length of a drawn word, in letters.
    pub fn mean_drawn_length(&self) -> f64 {
        (0..self.len())
            .map(|rank| self.probability(rank) * self.word(rank).len() as f64)
            .sum()
    }

    /// The rank drawn by the uniformly random `x`: its low 32 bits pick an
    /// entry of the alias table, its high 32 bits the entry's word or its alias.
    #[inline]
    pub fn sample(&self, x: u64) -> usize {
        let entry = (((x & 0xffff_ffff) * self.alias.len() as u64) >> 32) as usize;
        let (threshold, alias) = self.alias[entry];
        if ((x >> 32) as u32) < threshold {
            entry
        } else {
            alias as usize
        }
    }
}

/// Vose's alias table for `probabilities` (which add up to 1): entry `i`
/// keeps `i` with probability `threshold / 2^32`, else gives its alias.
fn alias_table(probabilities: &[f64]) -> Vec<(u32, u32)> {
    let n = probabilities.len();
    let mut scaled: Vec<f64> = probabilities.iter().map(|p| p * n as f64).collect();
    let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| scaled[i] < 1.0);
    // Entries left at the end keep themselves.
    let mut table: Vec<(u32, u32)> = (0..n).map(|i| (u32::MAX, i as u32)).collect();
    while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
        small.pop();
        table[s] = (
            ((scaled[s] * 4_294_967_296.0) as u64).min(u32::MAX as u64) as u32,
            l as u32,
        );
        scaled[l] -= 1.0 - scaled[s];
        if scaled[l] < 1.0 {
            large.pop();
            small.push(l);
        }
    }
    table
}

/// A pronounceable pseudo-word of exactly `length` letters: syllables of an
/// optional onset, a vowel and an optional coda, cut to length.
fn pseudo_word(next: &mut impl FnMut() -> u64, length: usize, out: &mut Vec<u8>) {
    let pick = |x: u64, options: &[&'static str]| options[(x % options.len() as u64) as usize];
    out.clear();
    let mut first = true;
    while out.len() < length {
        let x = next();
        let onset = pick(x >> 8, &ONSETS);
        // A word starts with a vowel one time in five; an onset that would
        // take all that is left is left out (no word of consonants only).
        if !(first && x.is_multiple_of(5)) && onset.len() < length - out.len() {
            out.extend_from_slice(onset.as_bytes());
        }
        out.extend_from_slice(pick(x >> 24, &VOWELS).as_bytes());
        out.extend_from_slice(pick(x >> 40, &CODAS).as_bytes());
        first = false;
    }
    out.truncate(length);
}

/// A standard normal draw (Box–Muller).
fn normal(next: &mut impl FnMut() -> u64) -> f64 {
    let uniform = |x: u64| ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let (u, v) = (uniform(next()), uniform(next()));
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// splitmix64's finaliser: a small, good, stable mixing function.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zipf() -> Corpus {
        Corpus::new(CorpusKind::Zipf, 7)
    }

    #[test]
    fn lines_are_deterministic_and_depend_on_the_seed() {
        let (a, b, other) = (zipf(), zipf(), Corpus::new(CorpusKind::Zipf, 8));
        let (mut x, mut y, mut z) = (Vec::new(), Vec::new(), Vec::new());
        let mut differs = 0;
        for index in [0, 1, 2, 1_000, 9_999_999] {
            assert_eq!(a.line(index, &mut x), b.line(index, &mut y));
            assert_eq!(x, y, "line {index}");
            other.line(index, &mut z);
            differs += usize::from(x != z);
        }
        assert!(differs >= 4, "another seed gives other lines");
        assert_eq!(
            a.vocabulary.as_ref().unwrap().text,
            b.vocabulary.as_ref().unwrap().text
        );
    }

    #[test]
    fn the_vocabulary_is_distinct_words_with_english_like_lengths() {
        let corpus = zipf();
        let vocabulary = corpus.vocabulary.as_ref().unwrap();
        assert_eq!(vocabulary.len(), ZIPF_WORDS);
        let mut words = hashbrown::HashSet::new();
        for rank in 0..vocabulary.len() {
            let word = vocabulary.word(rank);
            assert!(
                !word.is_empty() && word.iter().all(u8::is_ascii_lowercase),
                "{word:?}"
            );
            assert!(words.insert(word), "{:?} twice", String::from_utf8_lossy(word));
        }
        let mean = vocabulary.mean_drawn_length();
        assert!((4.4..=5.1).contains(&mean), "mean drawn length {mean}");
        let longest = (0..vocabulary.len())
            .map(|r| vocabulary.word(r).len())
            .max()
            .unwrap();
        assert!(longest >= 18, "longest word {longest}");
        let over_16 = (0..vocabulary.len())
            .filter(|&r| vocabulary.word(r).len() > 16)
            .count();
        assert!(over_16 >= 20, "{over_16} words over 16 bytes");
        // Frequent words are short.
        assert!(vocabulary.word(0).len() <= 3);
    }

    #[test]
    fn the_alias_table_draws_each_word_with_its_probability() {
        // A small distribution: every draw of the low bits through the table.
        let probabilities = [0.5, 0.25, 0.125, 0.125];
        let table = alias_table(&probabilities);
        let mut mass = [0f64; 4];
        for (entry, &(threshold, alias)) in table.iter().enumerate() {
            let keep = threshold as f64 / 4_294_967_296.0;
            mass[entry] += keep / 4.0;
            mass[alias as usize] += (1.0 - keep) / 4.0;
        }
        for (got, want) in mass.iter().zip(probabilities) {
            assert!((got - want).abs() < 1e-6, "{mass:?}");
        }
    }

    #[test]
    fn a_large_sample_is_zipf_like_and_covers_the_vocabulary() {
        let corpus = zipf();
        let vocabulary = corpus.vocabulary.as_ref().unwrap();
        let index: hashbrown::HashMap<&[u8], usize> =
            (0..vocabulary.len()).map(|r| (vocabulary.word(r), r)).collect();
        let mut counts = vec![0u64; vocabulary.len()];
        let mut per_line = [0u64; 13];
        let mut line = Vec::new();
        let mut words = 0;
        for i in 0..200_000 {
            let n = corpus.line(i, &mut line);
            per_line[n as usize] += 1;
            let mut seen = 0;
            for word in line.split(|&b| b == b' ') {
                counts[index[word]] += 1;
                seen += 1;
            }
            assert_eq!(seen, n, "line {i} has as many words as it says");
            words += n;
        }
        assert_eq!(per_line[..8].iter().sum::<u64>(), 0);
        for (n, &lines) in per_line.iter().enumerate().skip(8) {
            assert!((35_000..45_000).contains(&lines), "{lines} lines of {n} words");
        }
        // The most frequent word's share: 1 / H(20,000, 1.05) ≈ 0.119.
        let top = counts[0] as f64 / words as f64;
        assert!((top - vocabulary.probability(0)).abs() < 0.003, "top share {top}");
        assert!((0.10..0.14).contains(&top), "top share {top}");
        // Rank 10 against rank 100: (101 / 11)^1.05 ≈ 10.3.
        let ratio = counts[10] as f64 / counts[100] as f64;
        assert!((8.5..12.5).contains(&ratio), "rank 10 / rank 100 = {ratio}");
        let distinct = counts.iter().filter(|&&c| c > 0).count();
        assert!(distinct >= 10_000, "{distinct} distinct words in {words}");
    }

    #[test]
    fn written_files_hold_the_lines_and_the_counted_words() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = zipf();
        let stats = corpus.write_files(dir.path(), 2_500, 1_000, 2).unwrap();
        let mut text = Vec::new();
        for file in 0..3 {
            text.extend(std::fs::read(dir.path().join(format!("part-{file:05}.txt"))).unwrap());
        }
        assert!(!dir.path().join("part-00003.txt").exists());
        let mut expected = Vec::new();
        let words = corpus.append_lines(0, 2_500, &mut expected);
        assert_eq!(text, expected);
        assert_eq!(
            stats,
            CorpusStats {
                lines: 2_500,
                words,
                bytes: text.len() as u64
            }
        );
        let split = text
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .count();
        assert_eq!(split as u64, words);

        let words64 = Corpus::new(CorpusKind::Words64, 0);
        let stats = words64.write_files(&dir.path().join("w"), 10, 4, 2).unwrap();
        assert_eq!((stats.lines, stats.words), (10, 80));
    }
}
