//! Native twins of the example plugins, for benchmarks and embedding: the
//! same operators without Wasm, so that `weir bench` compares the two on
//! one pipeline.

use super::*;

/// Like `plugins/split-words`, with the same code (the plugin's splitter,
/// the `weir-split-words` crate, compiled natively): one record per
/// whitespace-separated word, key and value the word.
pub fn split_words() -> NativeTransform {
    NativeTransform::flat_map("split-words", |record, out| {
        weir_split_words::for_each_word(record.value, |word| out.push(Some(word), word, record.timestamp));
        Ok(())
    })
}

/// Like `plugins/lowercase`: lowercases key and value.
pub fn lowercase() -> NativeTransform {
    NativeTransform::map("lowercase", |record, out| {
        let lower = |bytes: &[u8]| match std::str::from_utf8(bytes) {
            Ok(text) => text.to_lowercase().into_bytes(),
            Err(_) => bytes.to_ascii_lowercase(),
        };
        let key = record.key.map(lower);
        out.push(key.as_deref(), &lower(record.value), record.timestamp);
        Ok(())
    })
}

/// Like `plugins/sum`: sums decimal text values.
pub fn sum() -> NativeReducer {
    NativeReducer::new("sum", |values| {
        let mut total = crate::operator::builtin::Number::Int(0);
        for value in values {
            let number = crate::operator::builtin::Number::parse(value)
                .ok_or_else(|| format!("{:?} is not a number", String::from_utf8_lossy(value)))?;
            total = total.checked_add(number).ok_or("sum overflows")?;
        }
        Ok(total.to_string().into_bytes())
    })
}
