//! The cluster's topics: how many partitions the input topic has, and the
//! repartition topics, created by the first member that needs them.
//!
//! Every member must agree on the repartition topics' partition count (a
//! key's state lives in the task of its partition): a topic that exists
//! with another count is an error, never silently used.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use super::ClusterError;
use super::plan::ClusterPlan;
use crate::kafka::describe;

/// How long one request to the brokers may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The partition counts: the input topic's and the repartition topics'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionCounts {
    /// Of the input topic.
    pub input: usize,
    /// Of every repartition topic.
    pub repartition: usize,
}

/// Reads the input topic's partition count and makes sure every
/// repartition topic exists with the cluster's count.
pub fn prepare_topics(plan: &ClusterPlan) -> Result<PartitionCounts, ClusterError> {
    let input_topic = plan.segments()[0].lead_topic().to_owned();
    let input = partition_count(plan, &input_topic)?.ok_or_else(|| ClusterError::Kafka {
        message: format!("the input topic `{input_topic}` does not exist"),
    })?;
    let repartition = plan.cluster().partitions.unwrap_or(input);
    let topics = plan.repartition_topics();
    if topics.is_empty() {
        return Ok(PartitionCounts { input, repartition });
    }
    let admin: AdminClient<DefaultClientContext> =
        plan.kafka()
            .client
            .config()
            .create()
            .map_err(|e| ClusterError::Kafka {
                message: format!("cannot create a Kafka admin client: {}", describe(&e)),
            })?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        // -1: the brokers' default replication factor.
        .map(|topic| NewTopic::new(topic, repartition as i32, TopicReplication::Fixed(-1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    let results = block_on(admin.create_topics(&new, &options)).map_err(|e| ClusterError::Kafka {
        message: format!("cannot create the repartition topics: {}", describe(&e)),
    })?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!("created repartition topic `{topic}` ({repartition} partitions)"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(ClusterError::Kafka {
                    message: format!("cannot create the repartition topic `{topic}`: {code}"),
                });
            }
        }
    }
    for topic in topics {
        // A topic just created may take a moment to show in the metadata.
        let mut found = None;
        for _ in 0..50 {
            found = partition_count(plan, topic)?;
            if found.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        match found {
            Some(count) if count == repartition => {}
            Some(count) => {
                return Err(ClusterError::Kafka {
                    message: format!(
                        "the repartition topic `{topic}` has {count} partitions, the cluster wants {repartition}: \
                         a key's state lives in the task of its partition, so the count cannot change under it \
                         (set [cluster] partitions = {count}, or delete the topic and the checkpoints)"
                    ),
                });
            }
            None => {
                return Err(ClusterError::Kafka {
                    message: format!(
                        "the repartition topic `{topic}` does not appear in the brokers' metadata"
                    ),
                });
            }
        }
    }
    Ok(PartitionCounts { input, repartition })
}

/// The partition count of `topic`; `None` when it does not exist.
fn partition_count(plan: &ClusterPlan, topic: &str) -> Result<Option<usize>, ClusterError> {
    let consumer: BaseConsumer = plan
        .kafka()
        .client
        .config()
        .create()
        .map_err(|e| ClusterError::Kafka {
            message: format!("cannot create a Kafka client: {}", describe(&e)),
        })?;
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|e| ClusterError::Kafka {
            message: format!(
                "cannot reach the Kafka brokers {}: {}",
                plan.kafka().client.brokers,
                describe(&e)
            ),
        })?;
    let Some(entry) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    if entry.error().is_some() || entry.partitions().is_empty() {
        return Ok(None);
    }
    Ok(Some(entry.partitions().len()))
}

/// Runs an admin request to completion on a small runtime of its own.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime starts")
        .block_on(future)
}
