//! Counts that must be at least 1 (batch sizes, slots, attempts): a `NonZeroU32`, so a 0 is
//! refused while the file is read, with the message and key vacate has always given.

use std::num::NonZeroU32;

use serde::{Deserialize, Deserializer};

/// For `#[serde(deserialize_with = "...")]` on a `NonZeroU32` field.
pub(super) fn at_least_one<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<NonZeroU32, D::Error> {
    NonZeroU32::new(u32::deserialize(deserializer)?)
        .ok_or_else(|| serde::de::Error::custom("must be at least 1"))
}

/// A count known at compile time, for defaults.
pub(super) const fn count(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => panic!("a count must be at least 1"),
    }
}
