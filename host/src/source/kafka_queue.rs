//! Batched reads of one Kafka partition's queue of fetched messages.
//!
//! `rdkafka`'s safe API takes a partition queue's messages one call at a
//! time: each call locks the queue, reads the clock for its deadline, wraps
//! the message in an event and frees it again. For small records that is
//! most of the Kafka source's own CPU time. [`BatchedQueue`] takes up to
//! [`MessageBatch::CAPACITY`] messages with one call of librdkafka's
//! `rd_kafka_consume_batch_queue`, on a handle to the same queue that
//! `BaseConsumer::split_partition_queue` split off (librdkafka then keeps
//! the partition's messages out of the consumer's main queue). The
//! messages are read in place ([`RawMessage`]) and freed when the next
//! batch is taken or the queue is dropped.
//!
//! Messages taken out of the queue no longer count against librdkafka's
//! prefetch bound (`queued.max.messages.kbytes`), so the Kafka source takes
//! at most what fits in the chunk it is filling: a partition holds at most
//! that beyond its prefetch.
//!
//! This is the only `unsafe` code of the Kafka source; every pointer it
//! touches comes from librdkafka and is released exactly once, before the
//! consumer can be destroyed.

use std::ffi::CString;
use std::ptr::NonNull;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;

/// One partition's queue, read in batches.
pub(super) struct BatchedQueue<C: ConsumerContext + 'static> {
    /// librdkafka's handle to the partition's queue (a reference of its own).
    raw: NonNull<rdsys::rd_kafka_queue_t>,
    /// The split-off queue. It holds an `Arc` of the consumer, which keeps
    /// the client alive for `raw` and the messages taken: librdkafka's
    /// destroy waits for every reference to go, so both are released in
    /// `drop` before this field goes.
    _split: PartitionQueue<C>,
    /// The messages of the last [`BatchedQueue::refill`].
    messages: MessageBatch,
    /// How many of them [`BatchedQueue::next`] returned.
    read: usize,
}

impl<C: ConsumerContext + 'static> BatchedQueue<C> {
    /// Reads `split` (the queue `consumer.split_partition_queue(topic,
    /// partition)` returned) in batches; `None` when librdkafka has no
    /// queue for the partition.
    pub(super) fn new(
        consumer: &BaseConsumer<C>,
        split: PartitionQueue<C>,
        topic: &str,
        partition: i32,
    ) -> Option<Self> {
        let topic = CString::new(topic).ok()?;
        // SAFETY: the client pointer is valid while `consumer` lives, and
        // the call returns a new reference to the queue (or null), which
        // this value owns.
        let raw = unsafe {
            rdsys::rd_kafka_queue_get_partition(consumer.client().native_ptr(), topic.as_ptr(), partition)
        };
        Some(Self {
            raw: NonNull::new(raw)?,
            _split: split,
            messages: MessageBatch::default(),
            read: 0,
        })
    }

    /// True while messages of the last refill are left to read.
    pub(super) fn pending(&self) -> bool {
        self.read < self.messages.len
    }

    /// Frees the messages of the last refill and takes up to `max` waiting
    /// ones (at most [`MessageBatch::CAPACITY`]), without waiting. Returns
    /// how many it took.
    pub(super) fn refill(&mut self, max: usize) -> usize {
        let batch = &mut self.messages;
        batch.release();
        self.read = 0;
        let wanted = max.min(MessageBatch::CAPACITY);
        if wanted == 0 {
            return 0;
        }
        // SAFETY: `batch.messages` has room for `wanted` pointers; the
        // queue handle is valid; librdkafka writes at most `wanted` message
        // pointers, each owned by the caller until destroyed.
        let taken = unsafe {
            rdsys::rd_kafka_consume_batch_queue(self.raw.as_ptr(), 0, batch.messages.as_mut_ptr(), wanted)
        };
        batch.len = usize::try_from(taken).unwrap_or(0).min(wanted);
        batch.len
    }

    /// The next message of the last refill, in offset order.
    pub(super) fn next(&mut self) -> Option<RawMessage<'_>> {
        if !self.pending() {
            return None;
        }
        self.read += 1;
        Some(self.messages.get(self.read - 1))
    }
}

impl<C: ConsumerContext + 'static> Drop for BatchedQueue<C> {
    fn drop(&mut self) {
        // Messages and the queue reference hold the client: both go before
        // the split queue's `Arc` of the consumer, which may be the last.
        self.messages.release();
        // SAFETY: the reference `new` took, released once.
        unsafe { rdsys::rd_kafka_queue_destroy(self.raw.as_ptr()) };
    }
}

/// Messages taken by one [`BatchedQueue::refill`], owned until the next one.
struct MessageBatch {
    messages: Box<[*mut rdsys::rd_kafka_message_t]>,
    len: usize,
}

impl Default for MessageBatch {
    fn default() -> Self {
        Self {
            messages: vec![std::ptr::null_mut(); Self::CAPACITY].into_boxed_slice(),
            len: 0,
        }
    }
}

impl MessageBatch {
    /// Messages one call takes at most: enough to make the call's cost
    /// vanish per message, few enough to keep a chunk's records together.
    pub(super) const CAPACITY: usize = 1024;

    /// The message at `index` (below what the last refill returned).
    fn get(&self, index: usize) -> RawMessage<'_> {
        assert!(index < self.len, "message {index} of {}", self.len);
        // SAFETY: the first `len` pointers were written by librdkafka and
        // are not destroyed before `release`, which needs `&mut self`.
        RawMessage(unsafe { &*self.messages[index] })
    }

    /// Frees the messages held.
    fn release(&mut self) {
        for message in &mut self.messages[..self.len] {
            // SAFETY: each pointer is a message librdkafka handed over,
            // destroyed once: `len` is reset below.
            unsafe { rdsys::rd_kafka_message_destroy(*message) };
            *message = std::ptr::null_mut();
        }
        self.len = 0;
    }
}

impl Drop for MessageBatch {
    fn drop(&mut self) {
        self.release();
    }
}

/// One message of a [`MessageBatch`], read in place.
#[derive(Clone, Copy)]
pub(super) struct RawMessage<'a>(&'a rdsys::rd_kafka_message_t);

impl<'a> RawMessage<'a> {
    /// The error this message carries instead of a record (an end of
    /// partition, a consume error), as `rdkafka` reports it.
    pub(super) fn error(&self) -> Option<KafkaError> {
        match self.0.err {
            rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => None,
            rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
                Some(KafkaError::PartitionEOF(self.0.partition))
            }
            code => Some(KafkaError::MessageConsumption(code.into())),
        }
    }

    /// The message's offset.
    pub(super) fn offset(&self) -> i64 {
        self.0.offset
    }

    /// The message's key, if it has one.
    pub(super) fn key(&self) -> Option<&'a [u8]> {
        // SAFETY: librdkafka's key pointer and length describe the key's
        // bytes, valid while the message is.
        unsafe { bytes(self.0.key, self.0.key_len) }
    }

    /// The message's value (empty for a tombstone).
    pub(super) fn payload(&self) -> &'a [u8] {
        // SAFETY: as for the key.
        unsafe { bytes(self.0.payload, self.0.len) }.unwrap_or_default()
    }

    /// The message's timestamp in milliseconds, when it has one.
    pub(super) fn timestamp(&self) -> Option<i64> {
        let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        let message: *const rdsys::rd_kafka_message_t = self.0;
        // SAFETY: reads the message's timestamp fields only.
        let time = unsafe { rdsys::rd_kafka_message_timestamp(message, &mut kind) };
        let available = kind != rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        (available && time != -1).then_some(time)
    }
}

/// The bytes at `pointer`, `len` long (`None` for a null pointer).
///
/// # Safety
/// A non-null `pointer` must point to `len` readable bytes that live for `'a`.
unsafe fn bytes<'a>(pointer: *mut std::ffi::c_void, len: usize) -> Option<&'a [u8]> {
    if pointer.is_null() {
        return None;
    }
    // SAFETY: the caller's promise.
    Some(unsafe { std::slice::from_raw_parts(pointer.cast::<u8>(), len) })
}
