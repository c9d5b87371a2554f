//! The parts of the Weir plugin ABI (`wit/types.wit`) that the host (`weir`)
//! and the guest SDK (`weir-guest`) must agree on, written once:
//!
//! - the flag bits of batches, key groups and state updates ([`HAS_KEY`],
//!   [`GROUP_HAS_STATE`], [`GROUP_TIMED_OUT`], [`STATE_KEEP`]);
//! - the layout rules of flat batches and value lists, as checks both sides
//!   run on what they receive ([`check_batch`], [`check_ends`], [`LayoutError`]);
//! - [`copy_short`], the copy both sides append keys and values with;
//! - the plugin kinds and their names ([`Kind`]).
//!
//! The WIT-generated types live in the host's and the SDK's own bindings, so
//! conversions between them and these items stay there.
//!
//! The crate has no dependencies and needs no `std`: it is built for the
//! host's target and for `wasm32-wasip2`.

#![no_std]

mod copy;
mod kind;
mod layout;

pub use copy::copy_short;
pub use kind::Kind;
pub use layout::{LayoutError, check_batch, check_ends};

/// `batch.flags[i]`, bit 0: record `i` has a key.
pub const HAS_KEY: u8 = 1;

/// `key-groups.group-flags[g]`, bit 0: the key of group `g` has state.
pub const GROUP_HAS_STATE: u8 = 1;

/// `key-groups.group-flags[g]`, bit 1: the key of group `g` timed out (this
/// is its last call).
pub const GROUP_TIMED_OUT: u8 = 2;

/// `state-update.state-flags[g]`, bit 0: keep `states[g]` as the key's state
/// (clear: remove the key's state).
pub const STATE_KEEP: u8 = 1;
