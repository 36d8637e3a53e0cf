//! The messages of pprof's `profile.proto` (package `perftools.profiles`,
//! <https://github.com/google/pprof/blob/main/proto/profile.proto>),
//! derived by hand for prost: field numbers and types as in the proto, so
//! no protoc is needed at build time. Fields 1 to 14 of `Profile`, the
//! ones every reader knows.
//!
//! Shared with the integration tests (`tests/pprof.rs` includes this file
//! to decode what kstackprof wrote).

#![allow(dead_code)]

/// A profile: samples of locations, with a string table.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    /// What each `Sample::value` is, e.g. `[samples/count, cpu/nanoseconds]`.
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    /// The samples.
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    /// Address ranges to the files mapped there.
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    /// Program locations (an address and its inlined lines).
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    /// Functions referenced by lines.
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    /// Every string; `string_table[0]` is `""`.
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    /// Regexp (string index) of frames to drop.
    #[prost(int64, tag = "7")]
    pub drop_frames: i64,
    /// Regexp (string index) of frames to keep.
    #[prost(int64, tag = "8")]
    pub keep_frames: i64,
    /// Start of collection, nanoseconds since the epoch.
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    /// Length of collection.
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    /// What the period counts, e.g. `cpu/nanoseconds`.
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    /// Events between samples.
    #[prost(int64, tag = "12")]
    pub period: i64,
    /// Free-form comments (string indices).
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    /// The preferred sample type (string index).
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

/// A type and a unit, as string indices.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    /// e.g. `cpu`.
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    /// e.g. `nanoseconds`.
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

/// Values at one stack, leaf first.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Location ids, the leaf at index 0.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    /// One value per `Profile::sample_type`.
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    /// pid, tid, names.
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

/// A key with a string or a number.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    /// String index.
    #[prost(int64, tag = "1")]
    pub key: i64,
    /// String index (or 0).
    #[prost(int64, tag = "2")]
    pub str: i64,
    /// A number (when `str` is 0).
    #[prost(int64, tag = "3")]
    pub num: i64,
    /// Unit of `num` (string index).
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

/// A file mapped at an address range.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    /// Non-zero.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    /// File offset of `memory_start`.
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    /// String index.
    #[prost(int64, tag = "5")]
    pub filename: i64,
    /// String index: the build id in hex.
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

/// An address and the lines there: inlined callees first, the function
/// they were inlined into last.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    /// Non-zero.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// 0 when unknown.
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

/// A function and a line in it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

/// A function.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    /// Non-zero.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// String index: human-readable name.
    #[prost(int64, tag = "2")]
    pub name: i64,
    /// String index: the name as the system knows it.
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    /// String index: source file.
    #[prost(int64, tag = "4")]
    pub filename: i64,
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}
