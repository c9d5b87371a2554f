//! Templates of names a sink derives per record: a Redis key, an
//! Elasticsearch index or document id. `wc:{key}`, `{pipeline}-{date}`.
//!
//! Placeholders: `{key}` and `{value}` (the record's bytes), `{pipeline}`,
//! `{sink}`, `{batch}` (the batch id), `{date}` (the batch's UTC date,
//! `YYYY.MM.DD`) and `{window}` (the start of the record's window, in
//! milliseconds, for a window stage's output). Each sink says which it
//! takes.

/// A placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The record's key.
    Key,
    /// The record's value.
    Value,
    /// The pipeline's name.
    Pipeline,
    /// The sink's name.
    Sink,
    /// The batch id.
    Batch,
    /// The batch's UTC date.
    Date,
    /// The start of the record's window.
    Window,
}

const NAMES: [(&str, Field); 7] = [
    ("key", Field::Key),
    ("value", Field::Value),
    ("pipeline", Field::Pipeline),
    ("sink", Field::Sink),
    ("batch", Field::Batch),
    ("date", Field::Date),
    ("window", Field::Window),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

/// What a template is filled in with.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// The sink's name.
    pub sink: &'a str,
    /// The batch id.
    pub batch: u64,
    /// The batch's time, in milliseconds since the Unix epoch.
    pub batch_time_ms: i64,
    /// The record's key (empty without one).
    pub key: &'a [u8],
    /// The record's value.
    pub value: &'a [u8],
    /// The start of the record's window, if it has one.
    pub window_start: Option<i64>,
}

impl Template {
    /// Parses `text`, whose placeholders must be among `allowed`; an
    /// unknown one, one not allowed, or an unclosed `{` is an error.
    pub fn parse(text: &str, allowed: &[Field]) -> Result<Self, String> {
        let expected = || {
            allowed
                .iter()
                .filter_map(|field| NAMES.iter().find(|(_, f)| f == field))
                .map(|(name, _)| format!("{{{name}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in template {text:?}"))?;
            let name = &rest[open + 1..open + close];
            let field = NAMES
                .iter()
                .find(|(known, _)| *known == name)
                .map(|(_, field)| *field)
                .filter(|field| allowed.contains(field))
                .ok_or_else(|| {
                    format!(
                        "unknown placeholder `{{{name}}}` in template {text:?} (expected {})",
                        expected()
                    )
                })?;
            pieces.push(Piece::Field(field));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Self(pieces))
    }

    /// Whether it uses `field`.
    pub fn uses(&self, field: Field) -> bool {
        self.0.contains(&Piece::Field(field))
    }

    /// The template filled in with `values`, into `out`.
    pub fn render(&self, out: &mut Vec<u8>, values: &Values<'_>) {
        out.clear();
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.extend_from_slice(text.as_bytes()),
                Piece::Field(Field::Key) => out.extend_from_slice(values.key),
                Piece::Field(Field::Value) => out.extend_from_slice(values.value),
                Piece::Field(Field::Pipeline) => out.extend_from_slice(values.pipeline.as_bytes()),
                Piece::Field(Field::Sink) => out.extend_from_slice(values.sink.as_bytes()),
                Piece::Field(Field::Batch) => out.extend_from_slice(values.batch.to_string().as_bytes()),
                Piece::Field(Field::Date) => {
                    let (year, month, day, ..) = crate::calendar::utc(values.batch_time_ms);
                    out.extend_from_slice(format!("{year:04}.{month:02}.{day:02}").as_bytes());
                }
                Piece::Field(Field::Window) => {
                    if let Some(start) = values.window_start {
                        out.extend_from_slice(start.to_string().as_bytes());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Field; 7] = [
        Field::Key,
        Field::Value,
        Field::Pipeline,
        Field::Sink,
        Field::Batch,
        Field::Date,
        Field::Window,
    ];

    #[test]
    fn templates_fill_in_the_record() {
        let template =
            Template::parse("{pipeline}:{sink}:{key}={value}@{batch}/{date}/{window}", &ALL).unwrap();
        let mut out = Vec::new();
        let values = Values {
            pipeline: "wc",
            sink: "out",
            batch: 7,
            batch_time_ms: 1_795_000_000_000,
            key: b"word",
            value: b"3",
            window_start: Some(1000),
        };
        template.render(&mut out, &values);
        assert_eq!(out, b"wc:out:word=3@7/2026.11.18/1000");
        assert!(template.uses(Field::Window));
        assert!(!Template::parse("plain", &ALL).unwrap().uses(Field::Key));
    }

    #[test]
    fn bad_templates_say_why() {
        let only_key = [Field::Key, Field::Pipeline];
        assert_eq!(
            Template::parse("x:{date}", &only_key).unwrap_err(),
            "unknown placeholder `{date}` in template \"x:{date}\" (expected {key}, {pipeline})"
        );
        assert!(
            Template::parse("x:{key", &only_key)
                .unwrap_err()
                .contains("unclosed")
        );
    }
}
