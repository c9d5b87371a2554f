//! Incremental state in checkpoints: keyed state written as what changed
//! since the previous checkpoint, merged back (for recovery and compaction)
//! without holding it in memory.
//!
//! An operator that supports it ([`crate::operator::Operator::incremental`])
//! keeps, per partition, a map from keys to values (opaque bytes). Each
//! checkpoint writes one **part** for it: a file with one **section** per
//! partition, either the partition's *changes* since the previous part
//! (puts and removes) or the partition *complete* (every entry, replacing
//! what the parts before said). A checkpoint's manifest lists the **chain**
//! of parts its state is made of, oldest first: the chain starts with a part
//! whose sections are all complete (a full snapshot), followed by parts of
//! changes. Every section lists its keys in strictly increasing byte order,
//! so a chain is read back by a k-way merge ([`Merge`]) that holds one entry
//! per part, whatever the size of the state; compaction writes that merge as
//! a new full part ([`compact`]).
//!
//! The format of a part (integers little-endian):
//!
//! ```text
//! part     = "WEIRINC1" partitions:u64 section{partitions}
//! section  = mode:u8 (0 changes, 1 complete) record* 0:u8
//! record   = 1:u8 key value      a put
//!          | 2:u8 key            a remove (only in a changes section)
//! key      = len:u32 bytes
//! value    = len:u32 bytes
//! ```

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// The first bytes of a part.
pub const MAGIC: &[u8; 8] = b"WEIRINC1";

const END: u8 = 0;
const PUT: u8 = 1;
const REMOVE: u8 = 2;

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// What a written part holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartSummary {
    /// Sections (one per partition).
    pub partitions: usize,
    /// Of those, complete ones.
    pub complete: usize,
    /// Put records.
    pub puts: u64,
    /// Remove records.
    pub removes: u64,
}

impl PartSummary {
    /// True when every section is complete: the part is a full snapshot and
    /// needs no part before it.
    pub fn is_full(&self) -> bool {
        self.complete == self.partitions
    }
}

/// Writes a part, section by section, checking that keys increase.
#[derive(Debug)]
pub struct PartWriter<W: Write> {
    out: W,
    summary: PartSummary,
    /// Sections begun.
    sections: usize,
    complete: bool,
    last_key: Option<Vec<u8>>,
}

impl<W: Write> PartWriter<W> {
    /// Starts a part of `partitions` sections on `out`.
    pub fn new(mut out: W, partitions: usize) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        out.write_all(&(partitions as u64).to_le_bytes())?;
        Ok(Self {
            out,
            summary: PartSummary {
                partitions,
                ..PartSummary::default()
            },
            sections: 0,
            complete: false,
            last_key: None,
        })
    }

    /// Ends the section being written, if any, and begins the next
    /// partition's: `complete` when it lists every entry of the partition,
    /// otherwise only what changed.
    pub fn begin(&mut self, complete: bool) -> io::Result<()> {
        if self.sections == self.summary.partitions {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a part of {} partitions has no more sections",
                    self.summary.partitions
                ),
            ));
        }
        self.end_section()?;
        self.out.write_all(&[u8::from(complete)])?;
        self.sections += 1;
        self.complete = complete;
        self.summary.complete += usize::from(complete);
        self.last_key = None;
        Ok(())
    }

    fn end_section(&mut self) -> io::Result<()> {
        if self.sections > 0 {
            self.out.write_all(&[END])?;
        }
        Ok(())
    }

    fn key(&mut self, tag: u8, key: &[u8]) -> io::Result<()> {
        if self.sections == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a record before any section",
            ));
        }
        if self.last_key.as_deref().is_some_and(|last| last >= key) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the keys of a section must be written in increasing order",
            ));
        }
        match &mut self.last_key {
            Some(last) => {
                last.clear();
                last.extend_from_slice(key);
            }
            None => self.last_key = Some(key.to_vec()),
        }
        self.out.write_all(&[tag])?;
        write_len(&mut self.out, key.len())?;
        self.out.write_all(key)
    }

    /// Writes `key` with `value` into the current section.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.key(PUT, key)?;
        write_len(&mut self.out, value.len())?;
        self.out.write_all(value)?;
        self.summary.puts += 1;
        Ok(())
    }

    /// Writes that `key` is gone into the current (changes) section.
    pub fn remove(&mut self, key: &[u8]) -> io::Result<()> {
        if self.complete {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a complete section holds no removes",
            ));
        }
        self.key(REMOVE, key)?;
        self.summary.removes += 1;
        Ok(())
    }

    /// Ends the part (every section must have been begun); returns the
    /// output and what the part holds.
    pub fn finish(mut self) -> io::Result<(W, PartSummary)> {
        if self.sections != self.summary.partitions {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a part of {} partitions ended after {} sections",
                    self.summary.partitions, self.sections
                ),
            ));
        }
        self.end_section()?;
        self.out.flush()?;
        Ok((self.out, self.summary))
    }
}

fn write_len(out: &mut impl Write, len: usize) -> io::Result<()> {
    let len = u32::try_from(len).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a key or value of {len} bytes is over 4 GiB"),
        )
    })?;
    out.write_all(&len.to_le_bytes())
}

/// One record of a section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: Vec<u8>,
    /// Its value; `None` for a remove.
    pub value: Option<Vec<u8>>,
}

/// Reads a part back, section by section.
#[derive(Debug)]
pub struct PartReader<R: Read> {
    input: R,
    partitions: usize,
    /// Sections begun.
    sections: usize,
    /// True while a begun section has records left.
    open: bool,
    /// The last key read in the current section.
    last_key: Option<Vec<u8>>,
}

impl<R: Read> PartReader<R> {
    /// Reads the header of the part on `input`.
    pub fn new(mut input: R) -> io::Result<Self> {
        let mut header = [0u8; 16];
        input
            .read_exact(&mut header)
            .map_err(|e| invalid(format!("not a state part (no header: {e})")))?;
        if &header[..8] != MAGIC {
            return Err(invalid("not a state part (wrong magic bytes)"));
        }
        let partitions = u64::from_le_bytes(header[8..].try_into().expect("8 bytes"));
        let partitions = usize::try_from(partitions)
            .ok()
            .filter(|&p| p <= 1 << 20)
            .ok_or_else(|| invalid(format!("a part of {partitions} partitions")))?;
        Ok(Self {
            input,
            partitions,
            sections: 0,
            open: false,
            last_key: None,
        })
    }

    /// The number of sections (partitions).
    pub fn partitions(&self) -> usize {
        self.partitions
    }

    fn byte(&mut self) -> io::Result<u8> {
        let mut byte = [0u8];
        self.input.read_exact(&mut byte)?;
        Ok(byte[0])
    }

    fn bytes(&mut self) -> io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        self.input.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        let mut bytes = Vec::new();
        // `take` so that a corrupt length fails at the end of the input
        // instead of allocating it.
        let read = (&mut self.input).take(len as u64).read_to_end(&mut bytes)?;
        if read != len {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        Ok(bytes)
    }

    /// Skips what is left of the current section, then begins the next one;
    /// returns whether it is complete.
    pub fn begin(&mut self) -> io::Result<bool> {
        while self.next_change()?.is_some() {}
        if self.sections == self.partitions {
            return Err(invalid("read past the last section"));
        }
        let complete = match self.byte()? {
            0 => false,
            1 => true,
            mode => return Err(invalid(format!("unknown section mode {mode}"))),
        };
        self.sections += 1;
        self.open = true;
        self.last_key = None;
        Ok(complete)
    }

    /// The next record of the current section; `None` at its end.
    pub fn next_change(&mut self) -> io::Result<Option<Change>> {
        if !self.open {
            return Ok(None);
        }
        let change = match self.byte()? {
            END => {
                self.open = false;
                return Ok(None);
            }
            PUT => {
                let key = self.bytes()?;
                let value = self.bytes()?;
                Change {
                    key,
                    value: Some(value),
                }
            }
            REMOVE => Change {
                key: self.bytes()?,
                value: None,
            },
            tag => return Err(invalid(format!("unknown record tag {tag}"))),
        };
        match &mut self.last_key {
            Some(last) if *last >= change.key => return Err(invalid("a section's keys are out of order")),
            Some(last) => {
                last.clear();
                last.extend_from_slice(&change.key);
            }
            None => self.last_key = Some(change.key.clone()),
        }
        Ok(Some(change))
    }

    /// Checks that every section was read and nothing follows; returns the input.
    pub fn finish(mut self) -> io::Result<R> {
        while self.sections < self.partitions {
            self.begin()?;
        }
        while self.next_change()?.is_some() {}
        let mut rest = [0u8];
        if self.input.read(&mut rest)? != 0 {
            return Err(invalid("bytes after the last section"));
        }
        Ok(self.input)
    }
}

/// The merge of a chain of parts (oldest first): partition by partition,
/// the entries of the state they make together, in key order, one entry
/// per part held at a time.
pub struct Merge<R: Read> {
    parts: Vec<PartReader<R>>,
    /// The next partition to begin.
    next_partition: usize,
    /// Parts taking part in the current partition's merge: from the newest
    /// one whose section is complete.
    from: usize,
    /// The next record of each part in the current partition.
    heads: Vec<Option<Change>>,
}

impl<R: Read> std::fmt::Debug for Merge<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Merge")
            .field("parts", &self.parts.len())
            .field("next_partition", &self.next_partition)
            .finish()
    }
}

impl<R: Read> Merge<R> {
    /// Merges `parts`, oldest first; they must have the same partitions.
    pub fn new(parts: Vec<PartReader<R>>) -> io::Result<Self> {
        if let Some(first) = parts.first()
            && let Some(other) = parts.iter().find(|p| p.partitions != first.partitions)
        {
            return Err(invalid(format!(
                "parts of {} and {} partitions in one chain",
                first.partitions, other.partitions
            )));
        }
        Ok(Self {
            heads: (0..parts.len()).map(|_| None).collect(),
            parts,
            next_partition: 0,
            from: 0,
        })
    }

    /// The number of partitions (0 for no parts).
    pub fn partitions(&self) -> usize {
        self.parts.first().map_or(0, PartReader::partitions)
    }

    /// Begins the next partition; `None` after the last.
    pub fn next_partition(&mut self) -> io::Result<Option<usize>> {
        if self.next_partition >= self.partitions() {
            return Ok(None);
        }
        let mut from = 0;
        for (index, part) in self.parts.iter_mut().enumerate() {
            if part.begin()? {
                from = index;
            }
        }
        self.from = from;
        for index in 0..self.parts.len() {
            self.heads[index] = if index >= from {
                self.parts[index].next_change()?
            } else {
                None
            };
        }
        self.next_partition += 1;
        Ok(Some(self.next_partition - 1))
    }

    /// The next entry (key, value) of the current partition, in key order;
    /// `None` at its end.
    pub fn next_entry(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        loop {
            // The smallest key among the heads; of equal keys the newest
            // part's record wins, the older ones are dropped.
            let mut winner: Option<usize> = None;
            for index in self.from..self.heads.len() {
                let Some(head) = &self.heads[index] else { continue };
                winner = match winner {
                    Some(best) if self.heads[best].as_ref().expect("a head").key < head.key => Some(best),
                    _ => Some(index),
                };
            }
            let Some(winner) = winner else {
                return Ok(None);
            };
            let change = self.heads[winner].take().expect("the winner has a head");
            for index in self.from..self.heads.len() {
                if self.heads[index]
                    .as_ref()
                    .is_some_and(|head| head.key == change.key)
                {
                    self.heads[index] = None;
                }
                if self.heads[index].is_none() {
                    self.heads[index] = self.parts[index].next_change()?;
                }
            }
            if let Some(value) = change.value {
                return Ok(Some((change.key, value)));
            }
        }
    }

    /// Checks that every part was read to its end; returns their inputs.
    pub fn finish(self) -> io::Result<Vec<R>> {
        self.parts.into_iter().map(PartReader::finish).collect()
    }
}

/// Writes the merge of `parts` (oldest first) as one full part on `out`.
pub fn compact<R: Read, W: Write>(parts: Vec<PartReader<R>>, out: W) -> io::Result<(W, Vec<R>, PartSummary)> {
    let mut merge = Merge::new(parts)?;
    let mut writer = PartWriter::new(out, merge.partitions())?;
    while merge.next_partition()?.is_some() {
        writer.begin(true)?;
        while let Some((key, value)) = merge.next_entry()? {
            writer.put(&key, &value)?;
        }
    }
    let inputs = merge.finish()?;
    let (out, summary) = writer.finish()?;
    Ok((out, inputs, summary))
}

/// A reader that counts and hashes (SHA-256) what passes through it.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    /// Hashes what is read from `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Bytes read and their hex SHA-256.
    pub fn finish(self) -> (u64, String) {
        (self.bytes, hex(&self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A writer that counts and hashes (SHA-256) what passes through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Hashes what is written to `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The inner writer, the bytes written and their hex SHA-256.
    pub fn finish(self) -> (W, u64, String) {
        (self.inner, self.bytes, hex(&self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads `input` to its end; returns its size and hex SHA-256.
pub fn hash_all(input: impl Read) -> io::Result<(u64, String)> {
    let mut hashing = HashingReader::new(io::BufReader::with_capacity(1 << 16, input));
    io::copy(&mut hashing, &mut io::sink())?;
    Ok(hashing.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    type State = Vec<BTreeMap<Vec<u8>, Vec<u8>>>;

    /// A section: complete or not, and its records (a value, or a remove).
    type Section<'a> = (bool, Vec<(&'a str, Option<&'a str>)>);

    /// Writes a part of `sections`.
    fn part(sections: &[Section<'_>]) -> Vec<u8> {
        let mut writer = PartWriter::new(Vec::new(), sections.len()).unwrap();
        for (complete, records) in sections {
            writer.begin(*complete).unwrap();
            for (key, value) in records {
                match value {
                    Some(value) => writer.put(key.as_bytes(), value.as_bytes()).unwrap(),
                    None => writer.remove(key.as_bytes()).unwrap(),
                }
            }
        }
        writer.finish().unwrap().0
    }

    fn merged(parts: &[Vec<u8>]) -> State {
        let readers = parts.iter().map(|p| PartReader::new(&p[..]).unwrap()).collect();
        let mut merge = Merge::new(readers).unwrap();
        let mut state = State::new();
        while let Some(partition) = merge.next_partition().unwrap() {
            assert_eq!(partition, state.len());
            let mut entries = BTreeMap::new();
            let mut last: Option<Vec<u8>> = None;
            while let Some((key, value)) = merge.next_entry().unwrap() {
                assert!(last.as_ref().is_none_or(|l| *l < key), "keys in order");
                last = Some(key.clone());
                entries.insert(key, value);
            }
            state.push(entries);
        }
        merge.finish().unwrap();
        state
    }

    fn state(partitions: &[&[(&str, &str)]]) -> State {
        partitions
            .iter()
            .map(|entries| {
                entries
                    .iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_chain_merges_to_the_newest_value_of_every_key() {
        let full = part(&[
            (true, vec![("a", Some("1")), ("b", Some("2")), ("c", Some("3"))]),
            (true, vec![("x", Some("9"))]),
        ]);
        let first = part(&[
            (false, vec![("b", None), ("d", Some("4"))]),
            (false, vec![("w", Some("8")), ("x", Some("10"))]),
        ]);
        // The second partition is complete again: what came before it no
        // longer counts there.
        let second = part(&[
            (false, vec![("a", Some("11")), ("b", Some("12")), ("d", None)]),
            (true, vec![("y", Some("7"))]),
        ]);
        assert_eq!(
            merged(&[full.clone(), first.clone(), second.clone()]),
            state(&[&[("a", "11"), ("b", "12"), ("c", "3")], &[("y", "7")]])
        );
        assert_eq!(
            merged(&[full.clone(), first.clone()]),
            state(&[&[("a", "1"), ("c", "3"), ("d", "4")], &[("w", "8"), ("x", "10")]])
        );
        // Compaction writes the same state as one full part.
        let (compacted, _, summary) = compact(
            [&full, &first, &second]
                .iter()
                .map(|p| PartReader::new(&p[..]).unwrap())
                .collect(),
            Vec::new(),
        )
        .unwrap();
        assert!(summary.is_full());
        assert_eq!(summary.puts, 4);
        assert_eq!(merged(&[compacted]), merged(&[full, first, second]));
    }

    #[test]
    fn writers_refuse_unordered_keys_and_readers_refuse_damage() {
        let mut writer = PartWriter::new(Vec::new(), 1).unwrap();
        writer.begin(true).unwrap();
        writer.put(b"b", b"1").unwrap();
        assert!(writer.put(b"a", b"1").is_err());
        assert!(writer.put(b"b", b"1").is_err());
        assert!(writer.remove(b"c").is_err(), "no removes in a complete section");
        let mut writer = PartWriter::new(Vec::new(), 2).unwrap();
        writer.begin(false).unwrap();
        assert!(writer.finish().is_err(), "a section is missing");

        let bytes = part(&[(true, vec![("a", Some("1")), ("b", Some("2"))])]);
        for cut in 0..bytes.len() {
            let result = PartReader::new(&bytes[..cut]).and_then(|reader| {
                let mut merge = Merge::new(vec![reader])?;
                while merge.next_partition()?.is_some() {
                    while merge.next_entry()?.is_some() {}
                }
                merge.finish().map(drop)
            });
            assert!(result.is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let mut reader = PartReader::new(&longer[..]).unwrap();
        reader.begin().unwrap();
        assert!(reader.finish().is_err(), "trailing bytes");
        let two = part(&[(true, vec![]), (true, vec![])]);
        let readers = vec![
            PartReader::new(&bytes[..]).unwrap(),
            PartReader::new(&two[..]).unwrap(),
        ];
        assert!(Merge::new(readers).is_err(), "partitions differ");
    }

    #[test]
    fn hashes_match_on_both_sides() {
        let bytes = part(&[(true, vec![("a", Some("1"))])]);
        let mut writer = HashingWriter::new(Vec::new());
        writer.write_all(&bytes).unwrap();
        let (out, written, sha) = writer.finish();
        assert_eq!(out, bytes);
        assert_eq!((written, sha.clone()), hash_all(&bytes[..]).unwrap());
        assert_eq!(sha, crate::runtime::content_hash(&bytes));
    }
}
