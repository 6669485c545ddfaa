//! A/B OS slots (being written).
#![forbid(unsafe_code)]
