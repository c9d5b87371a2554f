//! The keys of `[[source]]` and `[[sink]]` tables, declared by each kind.
//!
//! A source or sink kind lists the keys it accepts ([`Key`]: a name and the
//! type of its value) once, next to its parser. A table is read against a
//! [`Schema`]: the table's own keys (`name`, `type`, ...) and the union of
//! every registered kind's keys, so a key no kind knows is a syntax error
//! that points at it (as with serde's `deny_unknown_fields`), and a key of
//! another kind is refused by [`Settings::only`], which lists the kind's keys.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use toml::Spanned;

use super::SpecError;
use super::values::{alternatives, only_keys};

/// The type of a key's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// A string.
    Text,
    /// An integer.
    Integer,
    /// `true` or `false`.
    Bool,
    /// Any TOML value (a list, an inline table, ...): the kind's parser
    /// checks its shape.
    Any,
}

/// A key a table accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// Its name in the pipeline file.
    pub name: &'static str,
    /// The type of its value.
    pub ty: ValueType,
}

impl Key {
    /// A key whose value is a string.
    pub const fn text(name: &'static str) -> Self {
        Self {
            name,
            ty: ValueType::Text,
        }
    }

    /// A key whose value is an integer.
    pub const fn integer(name: &'static str) -> Self {
        Self {
            name,
            ty: ValueType::Integer,
        }
    }

    /// A key whose value is `true` or `false`.
    pub const fn boolean(name: &'static str) -> Self {
        Self {
            name,
            ty: ValueType::Bool,
        }
    }

    /// A key whose value may be any TOML value (a string or a list, an
    /// inline table): its kind's parser checks the shape.
    pub const fn any(name: &'static str) -> Self {
        Self {
            name,
            ty: ValueType::Any,
        }
    }
}

/// What a source or sink reaches besides the files its pipeline names: a
/// server lets a tenant's pipeline reach only what its policy allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Only files (resolved through [`super::Paths`]) or nothing at all.
    Files,
    /// The kind does not say (the default of [`super::SourceConfig::reach`]
    /// and [`super::SinkConfig::reach`]): a server refuses it, so that a new
    /// kind reaches nothing of a tenant's until it declares what it reaches.
    Undeclared,
    /// These network addresses (`host:port`), to listen on or connect to.
    Network(Vec<String>),
    /// The `weir` process's own standard input or output (named here).
    Process(&'static str),
}

/// What a kind's parser needs besides its keys.
#[derive(Debug, Clone, Copy)]
pub struct KindContext<'a> {
    /// Offset of the table in the file: errors about a missing key point there.
    pub offset: usize,
    /// How paths are resolved: against the pipeline file's directory, or
    /// inside a tenant's root. A kind resolves each path key through
    /// [`KindContext::dir`].
    pub paths: &'a super::Paths,
    /// What its ids in shared external systems start with ([`super::Scope::ids_prefix`]).
    pub ids_prefix: Option<&'a str>,
    /// The pipeline's `[plugins]` (for a sink written as a plugin).
    pub plugins: &'a std::collections::BTreeMap<String, std::path::PathBuf>,
    /// The pipeline's `[limits]` (for a sink written as a plugin).
    pub limits: &'a crate::runtime::Limits,
}

/// What a pipeline declares that kinds' parsers may need: its
/// `[plugins]` and `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct KindDefaults<'a> {
    /// The pipeline's `[plugins]`.
    pub plugins: &'a std::collections::BTreeMap<String, std::path::PathBuf>,
    /// The pipeline's `[limits]`.
    pub limits: &'a crate::runtime::Limits,
}

impl KindContext<'_> {
    /// The directory the value of `key` (`written`) names, to be opened
    /// through cap-std ([`super::DirPath::open`]); the error points at the
    /// table.
    pub fn dir(&self, written: &str, key: &str) -> Result<super::DirPath, SpecError> {
        self.paths
            .resolve_dir(written, key)
            .map_err(|message| (self.offset, message))
    }
}

/// A registered kind of source or sink (`K` is what its parser produces):
/// its `type` name, its keys and its parser. Each side lists its kinds in
/// one table (`crate::source::TYPES`, `crate::sink::TYPES`).
pub struct KindEntry<K> {
    pub(super) name: &'static str,
    pub(super) keys: &'static [Key],
    pub(super) parse: fn(&Settings, &KindContext<'_>) -> Result<K, SpecError>,
}

impl<K> KindEntry<K> {
    /// Parses `settings` as the `type = "{kind}"` of a `{side}` table:
    /// refuses an unknown kind (the error points at `kind_at`) and keys of
    /// other kinds (`schema` holds every kind's), then runs the kind's parser.
    pub(super) fn parse_table(
        entries: &[Self],
        side: &str,
        kind: &str,
        kind_at: usize,
        settings: &Settings,
        schema: &Schema,
        cx: &KindContext<'_>,
    ) -> Result<K, SpecError> {
        let Some(entry) = entries.iter().find(|entry| entry.name == kind) else {
            let names: Vec<&str> = entries.iter().map(|entry| entry.name).collect();
            return Err((
                kind_at,
                format!("unknown {side} type `{kind}` (expected {})", alternatives(&names)),
            ));
        };
        settings.only(schema, entry.keys, &format!("a `{kind}` {side}"))?;
        (entry.parse)(settings, cx)
    }
}

/// A value read from a table, with where it is.
#[derive(Debug)]
enum Value {
    Text(Spanned<String>),
    Integer(Spanned<i64>),
    Bool(Spanned<bool>),
    Any(Spanned<toml::Value>),
}

impl Value {
    fn start(&self) -> usize {
        match self {
            Self::Text(v) => v.span().start,
            Self::Integer(v) => v.span().start,
            Self::Bool(v) => v.span().start,
            Self::Any(v) => v.span().start,
        }
    }
}

/// Every key one kind of table may hold.
#[derive(Debug)]
pub(crate) struct Schema {
    /// What serde calls the table in errors (`struct SourceTable`).
    table: &'static str,
    /// The table's own keys, then each kind's, without repeats.
    keys: Vec<Key>,
    /// The names of `keys`, for serde's unknown-field error.
    names: Vec<&'static str>,
    /// How many of `keys` are the table's own.
    own: usize,
    /// Own keys that must be present, in the order their absence is reported.
    required: &'static [&'static str],
}

impl Schema {
    /// The schema of `table` with its `own` keys (of which `required` must be
    /// present) and the keys of every kind in `kinds`.
    ///
    /// # Panics
    ///
    /// When two kinds give the same key different types: the table could
    /// not tell which to read.
    pub(crate) fn new<'k>(
        table: &'static str,
        own: &[Key],
        required: &'static [&'static str],
        kinds: impl IntoIterator<Item = &'k [Key]>,
    ) -> Self {
        let mut keys = own.to_vec();
        for key in kinds.into_iter().flatten() {
            match keys.iter().find(|known| known.name == key.name) {
                Some(known) => assert_eq!(
                    known.ty, key.ty,
                    "{table}: two kinds give `{}` different types",
                    key.name
                ),
                None => keys.push(*key),
            }
        }
        Self {
            table,
            names: keys.iter().map(|key| key.name).collect(),
            own: own.len(),
            keys,
            required,
        }
    }

    /// Reads a table of this schema.
    pub(crate) fn read<'de, D: Deserializer<'de>>(
        &'static self,
        deserializer: D,
    ) -> Result<Settings, D::Error> {
        deserializer.deserialize_map(TableVisitor(self))
    }
}

/// The values of one table, in file order.
#[derive(Debug, Default)]
pub struct Settings {
    values: Vec<(&'static str, Value)>,
}

impl Settings {
    fn get(&self, key: &str) -> Option<&Value> {
        self.values
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| value)
    }

    /// The string value of `key`, if set.
    pub fn text(&self, key: &str) -> Option<&Spanned<String>> {
        match self.get(key)? {
            Value::Text(value) => Some(value),
            other => panic!("`{key}` is declared as {other:?}, not text"),
        }
    }

    /// The integer value of `key`, if set.
    pub fn integer(&self, key: &str) -> Option<&Spanned<i64>> {
        match self.get(key)? {
            Value::Integer(value) => Some(value),
            other => panic!("`{key}` is declared as {other:?}, not an integer"),
        }
    }

    /// The boolean value of `key`, if set.
    pub fn boolean(&self, key: &str) -> Option<&Spanned<bool>> {
        match self.get(key)? {
            Value::Bool(value) => Some(value),
            other => panic!("`{key}` is declared as {other:?}, not a boolean"),
        }
    }

    /// The value of `key` (declared with [`Key::any`]), if set.
    pub fn any(&self, key: &str) -> Option<&Spanned<toml::Value>> {
        match self.get(key)? {
            Value::Any(value) => Some(value),
            other => panic!("`{key}` is declared as {other:?}, not any value"),
        }
    }

    /// Removes and returns the string value of one of the table's own keys.
    pub(crate) fn take_text(&mut self, key: &str) -> Option<Spanned<String>> {
        let index = self.values.iter().position(|(name, _)| *name == key)?;
        match self.values.remove(index).1 {
            Value::Text(value) => Some(value),
            other => panic!("`{key}` is declared as {other:?}, not text"),
        }
    }

    /// Removes and returns the integer value of one of the table's own keys.
    pub(crate) fn take_integer(&mut self, key: &str) -> Option<Spanned<i64>> {
        let index = self.values.iter().position(|(name, _)| *name == key)?;
        match self.values.remove(index).1 {
            Value::Integer(value) => Some(value),
            other => panic!("`{key}` is declared as {other:?}, not an integer"),
        }
    }

    /// Removes and returns the boolean value of one of the table's own keys.
    pub(crate) fn take_boolean(&mut self, key: &str) -> Option<Spanned<bool>> {
        let index = self.values.iter().position(|(name, _)| *name == key)?;
        match self.values.remove(index).1 {
            Value::Bool(value) => Some(value),
            other => panic!("`{key}` is declared as {other:?}, not a boolean"),
        }
    }

    /// Fails on the first key of another kind (in `schema` order) that is
    /// not one of `keys`; the error, about `context`, lists `keys`.
    pub(crate) fn only(&self, schema: &Schema, keys: &[Key], context: &str) -> Result<(), SpecError> {
        let present: Vec<(&str, Option<usize>)> = schema.keys[schema.own..]
            .iter()
            .map(|key| (key.name, self.get(key.name).map(Value::start)))
            .collect();
        let allowed: Vec<&str> = keys.iter().map(|key| key.name).collect();
        only_keys(&present, &allowed, context)
    }
}

/// Reads a table's keys and values against a schema.
struct TableVisitor(&'static Schema);

impl<'de> Visitor<'de> for TableVisitor {
    type Value = Settings;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "struct {}", self.0.table)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Settings, A::Error> {
        let mut values = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed(self.0))? {
            let value = match key.ty {
                ValueType::Text => Value::Text(map.next_value()?),
                ValueType::Integer => Value::Integer(map.next_value()?),
                ValueType::Bool => Value::Bool(map.next_value()?),
                ValueType::Any => Value::Any(map.next_value()?),
            };
            values.push((key.name, value));
        }
        if let Some(missing) = self
            .0
            .required
            .iter()
            .copied()
            .find(|name| !values.iter().any(|(key, _)| key == name))
        {
            return Err(de::Error::missing_field(missing));
        }
        Ok(Settings { values })
    }
}

/// Reads one key; a key outside the schema is an error at the key.
struct KeySeed(&'static Schema);

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field identifier")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Key, E> {
        self.0
            .keys
            .iter()
            .find(|key| key.name == name)
            .copied()
            .ok_or_else(|| {
                let schema: &'static Schema = self.0;
                E::unknown_field(name, &schema.names)
            })
    }
}
