//! What the Kafka source and sink share: the `brokers` and `properties` keys,
//! the client configuration built from them, and a client context that
//! sends librdkafka's own log lines and errors to Weir's log.
//!
//! `properties` passes librdkafka client properties through (for TLS, SASL,
//! tuning). The few that Weir must own are refused with the reason, and the
//! others are checked by librdkafka when the pipeline file is read, so a
//! misspelt property is an error that points at the table, not a failure
//! at run time.

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::TopicPartitionList;
use toml::Spanned;

use crate::config::SpecError;

/// The broker list and the client properties of one Kafka source or sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    /// Client properties passed through, sorted by name.
    pub properties: Vec<(String, String)>,
}

/// The client properties a tenant's pipeline may set (a name ending in
/// `.` allows every property it starts): tuning, compression, and
/// credentials given inline. Nothing that names a file, a library or a
/// command.
pub const TENANT_PROPERTIES: &[&str] = &[
    "acks",
    "batch.",
    "client.id",
    "compression.",
    "fetch.",
    "linger.ms",
    "max.in.flight.requests.per.connection",
    "message.max.bytes",
    "message.timeout.ms",
    "queue.buffering.",
    "queued.",
    "request.timeout.ms",
    "retries",
    "retry.backoff.ms",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.password",
    "sasl.username",
    "security.protocol",
    "session.timeout.ms",
    "socket.keepalive.enable",
    "socket.timeout.ms",
];

fn tenant_may_set(name: &str) -> bool {
    TENANT_PROPERTIES
        .iter()
        .any(|allowed| name == *allowed || (allowed.ends_with('.') && name.starts_with(allowed)))
}

impl ClientSettings {
    /// The brokers it connects to (`bootstrap.servers`, comma-separated).
    pub fn reach(&self) -> crate::config::Reach {
        crate::config::Reach::Network(
            self.brokers
                .split(',')
                .map(|broker| broker.trim().to_owned())
                .filter(|broker| !broker.is_empty())
                .collect(),
        )
    }

    /// Reads `brokers` (required, at `offset` when missing) and `properties`
    /// (a table of scalar values); refuses the properties in `owned` (name,
    /// why Weir sets it) and any property librdkafka does not know.
    /// In a `confined` scope (a tenant's pipeline in a server) only the
    /// properties of [`TENANT_PROPERTIES`] may be set: others name files,
    /// libraries or commands of the server's machine.
    pub(crate) fn parse(
        brokers: Option<&Spanned<String>>,
        properties: Option<&Spanned<toml::Value>>,
        owned: &[(&str, &str)],
        offset: usize,
        what: &str,
        confined: bool,
    ) -> Result<Self, SpecError> {
        let brokers = crate::config::required(brokers, "brokers", offset, what)?;
        if brokers.trim().is_empty() {
            return Err((
                offset,
                format!("`brokers` of {what} is empty (write e.g. \"localhost:9092\")"),
            ));
        }
        let mut pairs = Vec::new();
        if let Some(value) = properties {
            let at = value.span().start;
            let toml::Value::Table(table) = value.get_ref() else {
                return Err((
                    at,
                    "`properties` must be a table of client properties, e.g. properties = { \"security.protocol\" = \"ssl\" }"
                        .to_owned(),
                ));
            };
            for (name, value) in table {
                if let Some((_, why)) = owned.iter().find(|(owned, _)| *owned == name) {
                    return Err((at, format!("property `{name}` cannot be set here: {why}")));
                }
                if confined && !tenant_may_set(name) {
                    return Err((
                        at,
                        format!(
                            "property `{name}` cannot be set in a tenant's pipeline (it may name files, libraries or commands of the server); allowed: {}",
                            TENANT_PROPERTIES.join(", ")
                        ),
                    ));
                }
                let text = match value {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    _ => {
                        return Err((
                            at,
                            format!("property `{name}` must be a string, number or boolean"),
                        ));
                    }
                };
                pairs.push((name.clone(), text));
            }
        }
        let settings = Self {
            brokers: brokers.trim().to_owned(),
            properties: pairs,
        };
        // librdkafka checks every name and value when it builds its
        // configuration, without connecting anywhere.
        settings.config().create_native_config().map_err(|e| {
            (
                offset,
                format!("invalid Kafka client properties of {what}: {}", describe(&e)),
            )
        })?;
        Ok(settings)
    }

    /// A client configuration: the brokers, then the properties.
    pub fn config(&self) -> ClientConfig {
        self.config_with(&[])
    }

    /// [`ClientSettings::config`] with Weir's `defaults` for properties the
    /// user did not set (the user's properties are set after them).
    pub fn config_with(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (name, value) in defaults {
            config.set(*name, *value);
        }
        // librdkafka's `debug` property asks for its debug lines: let them
        // through to Weir's log (shown with WEIR_LOG=debug).
        let debug = self.properties.iter().any(|(name, _)| name == "debug");
        config.set_log_level(if debug {
            RDKafkaLogLevel::Debug
        } else {
            RDKafkaLogLevel::Warning
        });
        for (name, value) in &self.properties {
            config.set(name, value);
        }
        config
    }
}

/// Producer properties a sink's own consumers (of its marker and source
/// groups) leave out: librdkafka warns about each one a consumer is given.
const PRODUCER_ONLY: &[&str] = &[
    "acks",
    "batch.num.messages",
    "batch.size",
    "compression.codec",
    "compression.type",
    "delivery.timeout.ms",
    "linger.ms",
    "message.timeout.ms",
    "partitioner",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.messages",
    "queue.buffering.max.ms",
    "request.required.acks",
    "retries",
    "sticky.partitioning.linger.ms",
];

impl ClientSettings {
    /// [`ClientSettings::config`] for a consumer of a sink's settings:
    /// without the producer's own properties.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut config = self.config();
        for name in PRODUCER_ONLY {
            config.remove(name);
        }
        config
    }
}

/// A Kafka error as one line.
pub fn describe(error: &KafkaError) -> String {
    match error {
        KafkaError::ClientConfig(_, message, name, value) => {
            format!("{message} (`{name}` = {value:?})")
        }
        other => other.to_string(),
    }
}

/// The metadata of entry `index` of `list` as text, with bytes that are not
/// UTF-8 replaced; `None` when the list has no such entry.
///
/// rdkafka's `TopicPartitionListElem::metadata` panics on metadata that is
/// not UTF-8, and any client that may commit offsets to a group can write
/// such metadata: a committed offset read back must not take the process
/// down.
pub fn entry_metadata(list: &TopicPartitionList, index: usize) -> Option<String> {
    if index >= list.count() {
        return None;
    }
    // SAFETY: `list.ptr()` is the live librdkafka list that `list` owns
    // and keeps alive for this borrow; `index` is below its count, so
    // `elems.add(index)` is one of its entries; an entry's `metadata`
    // points at `metadata_size` bytes librdkafka owns (or is null with
    // size 0), read here and copied before the borrow ends.
    let bytes = unsafe {
        let entry = &*(*list.ptr()).elems.add(index);
        if entry.metadata.is_null() || entry.metadata_size == 0 {
            &[][..]
        } else {
            std::slice::from_raw_parts(entry.metadata.cast::<u8>(), entry.metadata_size)
        }
    };
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// Sends librdkafka's log lines and client errors to Weir's log, each with
/// the source or sink it belongs to.
#[derive(Debug, Clone)]
pub struct LogContext {
    /// `source `name`` or `sink `name``.
    pub owner: String,
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let owner = &self.owner;
        // librdkafka retries what it reports here (a broker down, a
        // connection refused): a warning, not an error of the pipeline.
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => tracing::warn!("{owner}: kafka client {facility}: {message}"),
            _ => tracing::debug!("{owner}: kafka client {facility}: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode as Code;
        match error.rdkafka_error_code() {
            // The end of a partition is news, not a problem; brokers down
            // are already in the client's log lines.
            Some(Code::PartitionEOF | Code::AllBrokersDown | Code::BrokerTransportFailure) => {
                tracing::debug!("{}: kafka: {reason}", self.owner);
            }
            _ => tracing::warn!("{}: kafka: {reason} ({error})", self.owner),
        }
    }
}

impl rdkafka::consumer::ConsumerContext for LogContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_metadata_that_is_not_utf8_reads_as_replaced_text() {
        let mut list = TopicPartitionList::new();
        list.add_partition("marker", 0).set_metadata("ok");
        list.add_partition("marker", 1).set_metadata("gen=7");
        // What another client may commit: bytes that are not UTF-8.
        // SAFETY: entry 1 exists, and its metadata is the 5 bytes
        // `set_metadata` just allocated; they are overwritten in place.
        unsafe {
            let entry = &*(*list.ptr()).elems.add(1);
            *entry.metadata.cast::<u8>() = 0xff;
        }
        assert_eq!(entry_metadata(&list, 0).as_deref(), Some("ok"));
        assert_eq!(entry_metadata(&list, 1).as_deref(), Some("\u{fffd}en=7"));
        assert_eq!(entry_metadata(&list, 2), None);
        list.add_partition("marker", 2);
        assert_eq!(entry_metadata(&list, 2).as_deref(), Some(""));
    }
}
