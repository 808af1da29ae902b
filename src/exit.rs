//! Exit codes of every command (sysexits where one fits).

/// Success.
pub const OK: u8 = 0;
/// The operation failed.
pub const FAILED: u8 = 1;
/// Usage error (clap's own).
pub const USAGE: u8 = 2;
/// The daemon is not reachable.
pub const UNAVAILABLE: u8 = 69;
/// Bad or missing configuration.
pub const CONFIG: u8 = 78;
